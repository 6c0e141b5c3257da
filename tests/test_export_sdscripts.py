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


# How each CLIP tokenizer ships on the hub (tokenizer_config.json): SDXL's first is OpenAI's,
# its second LAION's bigG, whose pad token is "!" (id 0; sd-scripts sets pad_token_id = 0 anyway).
_CLIP_SPECIALS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                  "model_max_length": 77, "do_lower_case": True}
_CLIP_PAD = {"openai/clip-vit-large-patch14": "<|endoftext|>", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": "!"}


def clip_vocabulary() -> tuple[list[str], list[str]]:
    """CLIP's vocabulary and merges from kdata's bundled `bpe_simple_vocab_16e6.txt.gz`, exactly as
    CLIP's SimpleTokenizer builds them: the byte alphabet (GPT-2's byte → unicode table, in its
    order), the same with `</w>`, one token per merge (lines 1 … 48,894), the two special tokens."""
    import gzip
    import importlib.resources

    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    from kohaku_data.captions.tokens import VOCAB_FILE

    data = importlib.resources.files("kohaku_data.resources").joinpath(VOCAB_FILE).read_bytes()
    merges = gzip.decompress(data).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == len(set(vocab)) == 49408  # CLIP's vocab_size
    return vocab, merges


def clip_tokenizers(folder: Path, model_ids: tuple[str, ...]) -> Path:
    """A `--tokenizer_cache_dir` holding the real CLIP tokenizer files for `model_ids` (SDXL's two
    text encoders share CLIP's BPE), written from the bundled vocabulary as the hub ships them:
    `vocab.json`, `merges.txt` (`#version: 0.2` then the merges) and `tokenizer_config.json`. The
    hub is out of reach here; sd-scripts' own `SdxlTokenizeStrategy` loads them with transformers'
    `CLIPTokenizer`, so the trainer's text path runs unchanged on CLIP's real tokens."""
    import json

    vocab, merges = clip_vocabulary()
    for model_id in model_ids:
        path = folder / model_id.replace("/", "_")
        path.mkdir(parents=True)
        (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        config = {**_CLIP_SPECIALS, "pad_token": _CLIP_PAD.get(model_id, "<|endoftext|>")}
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def sd_scripts_dataset_group(sd, toml_path: Path, tmp_path: Path, *options: str):
    """What `sdxl_train_network.py --dataset_config TOML [OPTIONS]` builds before training, step
    for step (train_network.NetworkTrainer.train): the trainer's own argument parser with no
    dataset option, its tokenize and latents-caching strategies, the blueprint, the dataset group."""
    from library import strategy_sdxl

    trainer = sd.trainer.SdxlNetworkTrainer()
    cache = clip_tokenizers(tmp_path / "tokenizers", (strategy_sdxl.TOKENIZER1_PATH, strategy_sdxl.TOKENIZER2_PATH))
    args = sd.trainer.setup_parser().parse_args(
        ["--dataset_config", str(toml_path), "--tokenizer_cache_dir", str(cache), *options])
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


def bigg_tokens(ours, text: str) -> list[str]:
    """What transformers' `CLIPTokenizer` with LAION bigG's config (SDXL's second tokenizer) makes
    of `text`: its pad token `!` is a special token, so the text is split at every `!` first and
    each `!` is one token (id 0; huggingface/diffusers#4153), the pieces CLIP's BPE. CLIP itself
    (and the first tokenizer, and kdata's counts) merges `!` with what follows it: `live!,` is
    `live</w> !,</w>` there, `live</w> ! ,</w>` here."""
    pieces = text.split("!")
    return [t for i, piece in enumerate(pieces) for t in ([] if i == 0 else ["!"]) + ours.tokens(piece)]


def _kept_in_first_window(strategy, input_ids: list, text: str, caption: str) -> None:
    """sd-scripts' token ids of one example (`input_ids_list`: SDXL's two CLIP tokenizers) for its
    text: the first 75-token window (after BOS) holds the text's tokens (CLIP's, as kdata makes
    them, for the first tokenizer; bigG's `!` split for the second), and so the kept tags first."""
    from kohaku_data.captions.tokens import ClipTokenizer

    ours = ClipTokenizer()
    kept = ", ".join(t.strip() for t in caption.split("|||")[0].split(",") if t.strip())
    expected = (ours.tokens(text), bigg_tokens(ours, text))
    for tokenizer, ids, symbols in zip((strategy.tokenizer1, strategy.tokenizer2), input_ids, expected):
        window = (ids if ids.ndim == 1 else ids[0]).tolist()  # (77,), or (windows, 77) with --max_token_length
        # the kept tags with the comma after them: `atsuki),` is one pre-token, `atsuki)` another
        want = tokenizer(kept + ("," if text != kept else ""), add_special_tokens=False).input_ids
        full = tokenizer(text, add_special_tokens=False).input_ids
        assert full == tokenizer.convert_tokens_to_ids(symbols) and window[0] == tokenizer.bos_token_id
        assert window[1:1 + min(len(full), 75)] == full[:75]
        assert len(want) <= 75 and window[1:1 + len(want)] == want, (kept, text)


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
    tokenize = sd.strategy_base.TokenizeStrategy.get_strategy()
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
            _kept_in_first_window(tokenize, [ids[i] for ids in example["input_ids_list"]], example["captions"][i],
                                  info.caption)
            seen.append(key)
    assert sorted(seen) == sorted(infos)


def test_the_clip_tokenizer_given_to_sd_scripts_tokenizes_as_kdatas_clip_bpe(built, tmp_path):
    """The tokenizer files `clip_tokenizers` writes, loaded by transformers' `CLIPTokenizer` (as
    sd-scripts loads them), give CLIP's published ids and, for every exported caption and a few
    harder ones, the same BPE tokens as kdata's own CLIP tokenizer (captions/tokens.py)."""
    pytest.importorskip("transformers")
    from transformers import CLIPTokenizer

    from kohaku_data.captions.tokens import ClipTokenizer

    model_ids = tuple(_CLIP_PAD)
    folder = clip_tokenizers(tmp_path, model_ids)
    ours = ClipTokenizer()
    export_dataset(built, tmp_path / "k", "kohya")
    captions = [p.read_text() for p in sorted((tmp_path / "k" / "images").glob("*.txt"))]
    assert captions
    hard = ["1girl, hatsune miku (cosplay), :d, ^_^, it's 2girls' day, rating:general, #FF00AA, 10+ others",
            "Pokémon, ÉCOLE, naïve façade, 東方, ★★★, ~~~, a  b\tc, score_9, <lora:x:0.8>, (mask:1.2)",
            "!, !!, !!!, wow!, !?, love live! school idol project, ..."]
    texts = captions + hard
    assert any(t.count("!") for t in captions)  # the sparse build has `love live!`
    openai, bigg = (CLIPTokenizer.from_pretrained(folder / m.replace("/", "_")) for m in model_ids)
    for hf in (openai, bigg):
        assert hf("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
        assert hf.vocab_size == 49408 and hf.model_max_length == 77
    assert bigg.pad_token_id == 0 and openai.pad_token_id == 49407
    for text in texts:
        assert openai.tokenize(text) == ours.tokens(text), text
        assert len(openai(text, add_special_tokens=False).input_ids) == ours.count(text), text
        assert bigg.tokenize(text) == bigg_tokens(ours, text), text
    longer = [t for t in texts if len(bigg.tokenize(t)) > ours.count(t)]
    assert longer and all("!" in t for t in longer)  # e.g. `live!,`: one CLIP token, two for bigG


# -- sd-scripts' latent caching on an export of a dataset with a `kdata latents` set ---------------

# The SDXL VAE's architecture (4 latent channels, 8x down: sd-scripts reads the target size as the
# latent size times 8) with few channels, so a CPU encodes the build in seconds.
TINY_SDXL_VAE = {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4}


@pytest.fixture(scope="module")
def with_latents(built, tmp_path_factory) -> Path:
    """A copy of the build with a latent set made by `kdata latents` with a random-weight
    SDXL-architecture VAE saved locally (a diffusers folder)."""
    import shutil

    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from typer.testing import CliRunner

    from kohaku_data.cli import app
    from kohaku_data.latents import SDXL_VAE_CONFIG

    root = tmp_path_factory.mktemp("latents")
    ds = root / "ds"
    shutil.copytree(built, ds)
    torch.manual_seed(0)
    diffusers.AutoencoderKL(**{**SDXL_VAE_CONFIG, **TINY_SDXL_VAE}).save_pretrained(root / "vae")
    result = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(root / "vae"), "--device", "cpu",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    return ds


def test_sd_scripts_latent_caching_takes_every_exported_cache_with_the_true_original_size(
        trainer_modules, with_latents, tmp_path, monkeypatch):
    """`sdxl_train_network --cache_latents --cache_latents_to_disk` on a kohya export of a dataset
    with latents: sd-scripts' own SDXL caching strategy finds every exported npz where it looks
    and expects it (so it encodes nothing: the VAE given here fails if called), loads kdata's
    latents as float32, the source's size as `original_size` (not the stored file's) and kdata's
    crop; one epoch through the trainer's DataLoader conditions SDXL on exactly those."""
    import numpy as np
    import polars as pl
    import torch
    from multiprocessing import Value

    from kohaku_data.train import KdataDataset

    sd = trainer_modules
    out = tmp_path / "out"
    export_dataset(with_latents, out, "kohya")
    npzs = {p: p.read_bytes() for p in (out / "images").glob("*.npz")}
    monkeypatch.chdir("/")
    group, validation, args = sd_scripts_dataset_group(sd, out / "dataset.toml", tmp_path, "--cache_latents",
                                                       "--cache_latents_to_disk")
    (dataset,) = group.datasets
    strategy = sd.strategy_base.LatentsCachingStrategy.get_strategy()
    assert type(strategy).__name__ == "SdSdxlLatentsCachingStrategy" and strategy.cache_to_disk
    assert group.is_latent_cacheable()

    class NoVae:  # sd-scripts encodes only what it finds no cache for
        device, dtype = torch.device("cpu"), torch.float32

        def encode(self, *args):
            raise AssertionError("sd-scripts encoded an image that has an exported latent cache")

    accelerator = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"),
                                  wait_for_everyone=lambda: None)
    group.new_cache_latents(NoVae(), accelerator)  # as train_network.py does with --cache_latents
    assert {p: p.read_bytes() for p in (out / "images").glob("*.npz")} == npzs  # nothing rewritten, nothing added

    manifest = {row["image"]: row for row in pl.read_parquet(with_latents / "manifest.parquet").iter_rows(named=True)}
    reader = KdataDataset(str(with_latents), payload="latents")
    mean = {reader[i]["key"]: reader[i]["latents"]["mean"].float().numpy() for i in range(len(reader))}
    infos = dataset.image_data
    assert len(infos) == len(manifest) == len(npzs) > 0
    for info in infos.values():
        row = manifest[Path(info.absolute_path).name]
        w, h = row["width"], row["height"]
        assert Path(info.latents_npz) == out / "images" / f"{row['key']}_{w:04d}x{h:04d}_sdxl.npz"
        assert strategy.is_disk_cached_latents_expected(info.bucket_reso, info.latents_npz, False, False)
        latents, original, crop, flipped, alpha = strategy.load_latents_from_disk(info.latents_npz, info.bucket_reso)
        assert original == [row["source_width"], row["source_height"]] != [w, h]
        assert crop == [row["crop_left"], row["crop_top"], row["crop_right"], row["crop_bottom"]]
        assert latents.dtype == np.float32 and latents.shape == (4, h // 8, w // 8)
        assert np.array_equal(latents, mean[row["key"]]) and flipped is None and alpha is None

    dataset.debug_dataset = True
    group.set_current_epoch(1)
    collator = sd.train_util.collator_class(Value("i", 1), Value("i", 0), group)
    loader = torch.utils.data.DataLoader(group, batch_size=1, shuffle=True, collate_fn=collator, num_workers=0)
    seen = []
    for example in loader:
        assert example["images"] is None
        for i, key in enumerate(example["image_keys"]):
            row = manifest[Path(infos[key].absolute_path).name]
            assert np.array_equal(example["latents"][i].numpy(), mean[row["key"]])
            assert example["original_sizes_hw"][i].tolist() == [row["source_height"], row["source_width"]]
            assert example["crop_top_lefts"][i].tolist() == [row["crop_top"], row["crop_left"]]
            assert example["target_sizes_hw"][i].tolist() == [row["height"], row["width"]]
            seen.append(key)
    assert sorted(seen) == sorted(infos)
