"""sd-scripts' OWN code on a `kdata export`: its config schema, bucket manager and caption handling.

Runs when `KDATA_SD_SCRIPTS` names a checkout of kohya-ss/sd-scripts (it is not on PyPI, so CI
skips this file; test_export.py re-implements the same rules and runs everywhere). Importing
`library.train_util` pulls torch, torchvision, transformers, diffusers, accelerate and cv2, so the
definitions these checks need are taken by name from the checkout's source with `ast` and run
unchanged: `ConfigSanitizer` / `BlueprintGenerator` and the param dataclasses (config_util.py),
`BucketManager`, `BaseDataset.adjust_min_max_bucket_reso_by_steps`, `BaseDataset.process_caption`,
`glob_images`, `load_image`, `trim_and_resize_if_required` and DreamBooth's `read_caption`
(train_util.py). Only `resize_image` is replaced, by a function that fails: sd-scripts must
never need to resize. Needs `voluptuous` (sd-scripts' config validator, in the dev extra).
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import types
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from kohaku_data.export import export_dataset
from test_export_support import sparse_build

SD = os.environ.get("KDATA_SD_SCRIPTS")
pytestmark = pytest.mark.skipif(not SD, reason="set KDATA_SD_SCRIPTS to a kohya-ss/sd-scripts checkout")
_HEAVY = ("torch", "torchvision", "transformers", "diffusers", "accelerate", "cv2", "library", "safetensors",
          "imagesize", "toml", "huggingface_hub")


def load_definitions(path: Path, names: set[str]) -> dict:
    """Run the module's light imports, then the named definitions (top-level, `Class.method`, or
    a function nested anywhere) of `path`, exactly as written there, in a module of their own."""
    tree = ast.parse(path.read_text(), str(path))
    module = types.ModuleType("sd_scripts_" + path.stem)
    sys.modules[module.__name__] = module  # dataclasses look their module up
    namespace = module.__dict__

    def run(nodes: list) -> None:  # dont_inherit: this file's `from __future__` must not leak in
        exec(compile(ast.fix_missing_locations(ast.Module(nodes, [])), str(path), "exec", dont_inherit=True),
             namespace)

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if not getattr(node, "level", 0) and (name or "").split(".")[0] not in _HEAVY:
                run([node])
    namespace["logger"] = logging.getLogger("sd-scripts")
    picked = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            picked += [m for m in node.body if isinstance(m, ast.FunctionDef) and f"{node.name}.{m.name}" in names]
    for node in ast.walk(tree):  # nested helpers, e.g. DreamBoothDataset.__init__'s read_caption
        if isinstance(node, ast.FunctionDef) and node.name in names and node.col_offset > 4:
            picked.append(node)
    missing = {n for n in names if n.split(".")[-1] not in {p.name for p in picked}}
    assert not missing, f"sd-scripts no longer defines {missing}: update this test"
    for node in picked:  # a method's annotations name classes not loaded here (BaseSubset…): unused at run time
        if isinstance(node, ast.FunctionDef):
            node.returns = None
            for arg in node.args.args + node.args.kwonlyargs:
                arg.annotation = None
    run(picked)
    return namespace


def _module_constant(path: Path, name: str) -> dict:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return {name: ast.literal_eval(node.value)}
    raise AssertionError(f"sd-scripts no longer defines {name}: update this test")


@pytest.fixture(scope="module")
def sd():
    pytest.importorskip("voluptuous")
    lib = Path(SD) / "library"
    config = load_definitions(lib / "config_util.py", {
        "BaseSubsetParams", "DreamBoothSubsetParams", "FineTuningSubsetParams", "ControlNetSubsetParams",
        "BaseDatasetParams", "DreamBoothDatasetParams", "FineTuningDatasetParams", "ControlNetDatasetParams",
        "SubsetBlueprint", "DatasetBlueprint", "DatasetGroupBlueprint", "Blueprint", "ConfigSanitizer",
        "BlueprintGenerator"})
    train = load_definitions(lib / "train_util.py", {
        "BucketManager", "BaseDataset.adjust_min_max_bucket_reso_by_steps", "BaseDataset.process_caption",
        "glob_images", "load_image", "trim_and_resize_if_required", "read_caption"})
    train.update(_module_constant(lib / "train_util.py", "IMAGE_EXTENSIONS"))

    def resize_image(*args, **kwargs):
        raise AssertionError(f"sd-scripts resized an exported image: {args[1:5]}")

    train["resize_image"] = resize_image
    return SimpleNamespace(config=config, train=train)


def _blueprint(sd, toml_path: Path):
    user = tomllib.loads(toml_path.read_text())
    sanitizer = sd.config["ConfigSanitizer"](True, True, False, True)
    blueprint = sd.config["BlueprintGenerator"](sanitizer).generate(user, argparse.Namespace())
    (dataset,) = blueprint.dataset_group.datasets
    return dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return sparse_build(tmp_path_factory.mktemp("sd"))[1]


def test_sd_scripts_puts_every_kohya_image_in_a_bucket_of_its_own_size(sd, built, tmp_path, monkeypatch):
    export_dataset(built, tmp_path / "k", "kohya")
    monkeypatch.chdir("/")  # the toml must not depend on the trainer's working directory
    dataset = _blueprint(sd, tmp_path / "k" / "dataset.toml")
    assert dataset.is_dreambooth
    params, (subset,) = dataset.params, [s.params for s in dataset.subsets]
    assert params.enable_bucket and params.bucket_no_upscale
    min_reso, max_reso = sd.train["adjust_min_max_bucket_reso_by_steps"](
        None, params.resolution, params.min_bucket_reso, params.max_bucket_reso, params.bucket_reso_steps)
    manager = sd.train["BucketManager"](params.bucket_no_upscale, params.resolution, min_reso, max_reso,
                                        params.bucket_reso_steps)
    images = sd.train["glob_images"](subset.image_dir, "*")
    assert len(images) == len(list(Path(subset.image_dir).glob("*.webp"))) > 0
    process = sd.train["process_caption"]
    state = SimpleNamespace(current_epoch=1, current_step=0, max_train_steps=100, replacements={})
    for path in images:
        pixels = sd.train["load_image"](path)
        h, w = pixels.shape[:2]
        reso, resized, error = manager.select_bucket(w, h)
        assert reso == resized == (w, h) and error == 0
        out, original, crop = sd.train["trim_and_resize_if_required"](False, pixels, reso, resized)
        assert out is pixels and original == (w, h) and crop == (0, 0, w, h)
        caption = sd.train["read_caption"](path, subset.caption_extension, subset.enable_wildcard)
        assert caption == Path(path).with_suffix(".txt").read_text().strip()
        text = process(state, SimpleNamespace(**vars(subset)), caption)
        kept = [t.strip() for t in caption.split("|||")[0].split(",") if t.strip()]
        assert "|||" not in text and text.split(", ")[:len(kept)] == kept
        assert sorted(text.split(", ")) == sorted(t.strip() for t in caption.replace("|||", ",").split(",") if t.strip())


def test_sd_scripts_reads_the_kohya_ft_config(sd, built, tmp_path):
    export_dataset(built, tmp_path / "ft", "kohya-ft")
    dataset = _blueprint(sd, tmp_path / "ft" / "dataset.toml")
    assert not dataset.is_dreambooth
    (subset,) = [s.params for s in dataset.subsets]
    assert subset.metadata_file.endswith(".jsonl") and Path(subset.metadata_file).is_file()
    assert Path(subset.image_dir).is_dir() and dataset.params.bucket_no_upscale


# -- sd-scripts' real trainer path, imported whole: needs the checkout's requirements (torch,
# torchvision, transformers, diffusers, accelerate, opencv, …) in the running environment. ------

_TRAINER_NEEDS = ("torch", "torchvision", "transformers", "diffusers", "accelerate", "cv2", "safetensors", "toml",
                  "imagesize", "einops")


@pytest.fixture(scope="module")
def trainer_modules():
    """sd-scripts' LoRA trainer for SDXL (`sdxl_train_network`) and the library it uses, imported
    from the checkout as the trainer imports them."""
    for name in _TRAINER_NEEDS:
        pytest.importorskip(name, reason=f"sd-scripts' trainer needs {name}")
    sys.path.insert(0, SD)
    try:
        import sdxl_train_network
        from library import config_util, strategy_base, train_util
    finally:
        sys.path.remove(SD)
    return SimpleNamespace(trainer=sdxl_train_network, config_util=config_util, strategy_base=strategy_base,
                           train_util=train_util)


def char_level_clip_tokenizers(folder: Path, model_ids: tuple[str, ...]) -> Path:
    """A `--tokenizer_cache_dir` holding CLIP tokenizer files for `model_ids` with a
    character-level vocabulary (CLIP's byte alphabet, no merges). The hub is out of reach here
    and the tokens do not matter to these checks: sd-scripts' own `SdxlTokenizeStrategy` loads
    them with transformers' real `CLIPTokenizer`, so the trainer's text path runs unchanged."""
    import json

    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    for model_id in model_ids:
        path = folder / model_id.replace("/", "_")
        path.mkdir(parents=True)
        (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (path / "merges.txt").write_text("#version: 0.2\n")
        (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))  # as CLIP's
    return folder


def sd_scripts_dataset_group(sd, toml_path: Path, tmp_path: Path):
    """What `sdxl_train_network.py --dataset_config TOML` builds before training, step for step
    (train_network.NetworkTrainer.train): the trainer's own argument parser with no dataset
    option, its tokenize and latents-caching strategies, the blueprint, the dataset group."""
    from library import strategy_sdxl

    trainer = sd.trainer.SdxlNetworkTrainer()
    cache = char_level_clip_tokenizers(tmp_path / "tokenizers", (strategy_sdxl.TOKENIZER1_PATH, strategy_sdxl.TOKENIZER2_PATH))
    args = sd.trainer.setup_parser().parse_args(["--dataset_config", str(toml_path), "--tokenizer_cache_dir", str(cache)])
    sd.train_util.verify_training_args(args)
    sd.train_util.prepare_dataset_args(args, True)
    base = sd.strategy_base
    for kind in (base.TokenizeStrategy, base.LatentsCachingStrategy):
        kind._strategy = None  # one strategy per process in sd-scripts; this module builds several
    base.TokenizeStrategy.set_strategy(trainer.get_tokenize_strategy(args))
    base.LatentsCachingStrategy.set_strategy(trainer.get_latents_caching_strategy(args))
    generator = sd.config_util.BlueprintGenerator(sd.config_util.ConfigSanitizer(True, True, args.masked_loss, True))
    blueprint = generator.generate(sd.config_util.load_user_config(str(toml_path)), args)
    group, validation = sd.config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
    group.verify_bucket_reso_steps(32)  # as sdxl_train_network does
    group.set_current_strategies()
    return group, validation, args


def _kept_first(text: str, caption: str) -> None:
    """sd-scripts' text for a `kept ||| rest` caption: no `|||`, the kept tags first and in order,
    every tag once."""
    kept = [t.strip() for t in caption.split("|||")[0].split(",") if t.strip()]
    tags = [t.strip() for t in caption.replace("|||", ",").split(",") if t.strip()]
    assert "|||" not in text and text.split(", ")[:len(kept)] == kept
    assert sorted(text.split(", ")) == sorted(tags)


@pytest.mark.parametrize("fmt", ["kohya", "kohya-ft"])
def test_sd_scripts_trainer_loads_every_image_unresized_with_the_keep_separator(
        trainer_modules, built, tmp_path, monkeypatch, fmt):
    """sd-scripts' real dataset classes, through the trainer's DataLoader and collator for one
    epoch: every image lies in a bucket of its own size, every batch holds each image's exact
    pixels (no resize, no crop: SDXL's original size = crop target, crop 0), and every caption
    comes out with the kept tags first and no literal `|||`."""
    import numpy as np
    import torch
    from multiprocessing import Value
    from PIL import Image

    sd = trainer_modules
    export_dataset(built, tmp_path / "out", fmt)
    monkeypatch.chdir("/")  # the toml must not depend on the trainer's working directory
    group, validation, args = sd_scripts_dataset_group(sd, tmp_path / "out" / "dataset.toml", tmp_path)
    (dataset,) = group.datasets
    assert validation is None and dataset.enable_bucket and dataset.bucket_no_upscale
    infos = dataset.image_data
    assert len(infos) == len(list((tmp_path / "out" / "images").glob("*.webp"))) > 0
    for info in infos.values():
        assert tuple(info.bucket_reso) == tuple(info.resized_size) == tuple(info.image_size), info.absolute_path
    dataset.debug_dataset = True  # only adds each batch's image keys to the example, to check pixels against
    # Epoch 1 is set before the first batch: sd-scripts' collator sets it after, and the reshuffle
    # that follows would change the order mid-epoch (an image twice, another not at all).
    group.set_current_epoch(1)
    collator = sd.train_util.collator_class(Value("i", 1), Value("i", 0), group)
    loader = torch.utils.data.DataLoader(group, batch_size=1, shuffle=True, collate_fn=collator, num_workers=0)
    seen = []
    for example in loader:
        for i, key in enumerate(example["image_keys"]):
            info = infos[key]
            with Image.open(info.absolute_path) as im:
                want = np.asarray(im.convert("RGB"))
            h, w = want.shape[:2]
            pixels = ((example["images"][i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            assert pixels.shape == want.shape and (pixels == want).all(), info.absolute_path
            assert example["original_sizes_hw"][i].tolist() == example["target_sizes_hw"][i].tolist() == [h, w]
            assert example["crop_top_lefts"][i].tolist() == [0, 0]
            _kept_first(example["captions"][i], info.caption)
            seen.append(key)
    assert sorted(seen) == sorted(infos)
