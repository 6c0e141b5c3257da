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
