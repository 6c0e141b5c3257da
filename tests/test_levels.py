"""Resolution ladder (`[image] levels`): one member per level, each one LANCZOS resize of the
normalised original (checked against an independent Pillow reference), the main level's bytes
unchanged, the reader's `level=`, exports' `--level`, reuse of staged levels."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from kohaku_data.config import BucketPreset, ImageConfig, Recipe, validate_recipe, RecipeError
from kohaku_data.images.buckets import bucket_resolutions
from test_build_support import build, folder_bytes, make_inputs, small_recipe

TINY = {"name": "tiny", "step": 32, "min_area": 64 * 96, "max_area": 128 * 128, "min_side": 64, "max_side": 256}
LEVELS = ["square-256", TINY]


def ladder_recipe(levels=LEVELS) -> Recipe:
    return small_recipe(image={"bucket": "demo-256", "levels": levels})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("levels-in"))


@pytest.fixture(scope="module")
def plain(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "ds"
    build(inputs, out)
    return out


@pytest.fixture(scope="module")
def ladder(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ladder") / "ds"
    build(inputs, out, ladder_recipe(), workers=2)
    return out


def _member(ds: Path, shard: str, offset: int, size: int) -> bytes:
    with open(ds / shard, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _reference(src: Image.Image, buckets: list[tuple[int, int]]) -> np.ndarray:
    """An independent reference: nearest log aspect bucket, scale to cover, centre crop folded
    into ONE Pillow LANCZOS resize of the normalised (RGB) original."""
    w, h = src.size
    bw, bh = min(buckets, key=lambda b: (abs(math.log(w / h) - math.log(b[0] / b[1])), -b[0] * b[1], -b[0]))
    scale = max(bw / w, bh / h)
    sw = bw if bw / w >= bh / h else max(bw, round(w * scale))
    sh = bh if bh / h > bw / w else max(bh, round(h * scale))
    left, top = (sw - bw) // 2, (sh - bh) // 2
    box = (left / scale, top / scale, min(w, (left + bw) / scale), min(h, (top + bh) / scale))
    return np.asarray(src.convert("RGB").resize((bw, bh), Image.Resampling.LANCZOS, box=box))


def _source(inputs, key: int) -> Image.Image:
    path = next(p for p in inputs.src.rglob(f"{key}.*"))
    return Image.open(path)


def test_every_level_is_one_lanczos_resize_of_the_original(ladder, inputs):
    m = pl.read_parquet(ladder / "manifest.parquet")
    assert m.height > 20
    presets = {"": BucketPreset.model_validate(ImageConfig(bucket="demo-256").bucket_preset().model_dump()),
               "square-256": ImageConfig(bucket="square-256").bucket_preset(), "tiny": BucketPreset(**TINY)}
    for row in m.iter_rows(named=True):
        src = _source(inputs, row["key"])
        for level, preset in presets.items():
            at = f"@{level}" if level else ""
            data = _member(ladder, row["shard"], row[f"image_offset{at}"], row[f"image_size{at}"])
            assert hashlib.sha256(data).hexdigest() == row[f"sha256{at}"]
            got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            want = _reference(src, bucket_resolutions(preset))
            assert got.shape == want.shape, (row["key"], level)
            assert np.array_equal(got, want), (row["key"], level)
            assert row[f"bucket{at}"] == f"{want.shape[1]}x{want.shape[0]}"
    assert m["bucket@tiny"].n_unique() > 1  # the levels really differ from the main bucket
    assert (m["bucket@tiny"] != m["bucket"]).all()


def test_main_level_bytes_unchanged_and_members_named(ladder, plain):
    a, b = pl.read_parquet(plain / "manifest.parquet"), pl.read_parquet(ladder / "manifest.parquet")
    assert a["key"].to_list() == b["key"].to_list()
    assert a["sha256"].to_list() == b["sha256"].to_list()
    assert a["bucket"].to_list() == b["bucket"].to_list()
    assert b["image@tiny"].to_list() == [f"{k}.tiny.webp" for k in b["key"]]
    assert not any("@" in c for c in a.columns)
    # every level member is listed in the shard's member index (hfutils form) at its manifest offset
    import json

    row = b.row(0, named=True)
    index = json.loads((ladder / row["shard"].replace(".tar", ".json")).read_text())
    entry = index["files"][row["image@square-256"]]
    assert (entry["offset"], entry["size"]) == (row["image_offset@square-256"], row["image_size@square-256"])
    assert "width" in index["files"][row["image"]]  # webshart fields still on the main image


def test_byte_identical_for_any_worker_count(inputs, ladder, tmp_path):
    out = tmp_path / "one"
    build(inputs, out, ladder_recipe(), workers=1)
    assert folder_bytes(out) == folder_bytes(ladder)


def test_verify_and_card(ladder):
    from kohaku_data.assembly.verify import verify_dataset

    assert verify_dataset(ladder).ok
    card = (ladder / "README.md").read_text()
    assert "level `tiny`" in card and "level `square-256`" in card
    # a damaged level member is caught
    m = pl.read_parquet(ladder / "manifest.parquet").row(0, named=True)
    path = ladder / m["shard"]
    original = path.read_bytes()
    try:
        data = bytearray(original)
        data[m["image_offset@tiny"] + 100] ^= 0xFF
        path.write_bytes(bytes(data))
        report = verify_dataset(ladder)
        assert not report.ok and any(m["image@tiny"] in p for p in report.problems)
    finally:
        path.write_bytes(original)


def test_reader_level_gives_that_levels_pixels_and_buckets(ladder):
    from kohaku_data.train import KdataDataset
    from kohaku_data.train.dataset import ReaderError
    from kohaku_data.train.sampler import BucketBatchSampler

    m = pl.read_parquet(ladder / "manifest.parquet")
    ds = KdataDataset(str(ladder), decode="numpy", level="tiny")
    main = KdataDataset(str(ladder), decode="numpy")
    for i in (0, 5, len(ds) - 1):
        row = m.row(i, named=True)
        item = ds[i]
        want = np.asarray(Image.open(io.BytesIO(_member(ladder, row["shard"], row["image_offset@tiny"],
                                                        row["image_size@tiny"]))).convert("RGB"))
        assert np.array_equal(item["image"], want)
        assert item["target_size"] == (row["height@tiny"], row["width@tiny"])
        assert item["original_size"] == (row["source_height"], row["source_width"])
        assert item["caption"] == main[i]["caption"]
        assert main[i]["image"].shape[:2] == (row["height"], row["width"])
    assert ds.column("bucket").to_list() == m["bucket@tiny"].to_list()
    sampler = BucketBatchSampler(ds, batch_size=2, seed=0)
    for batch in sampler:
        assert len({m["bucket@tiny"][j] for j in batch}) == 1
    with pytest.raises(ReaderError, match="not a level"):
        KdataDataset(str(ladder), level="nope")


def test_export_level_writes_that_levels_images(ladder, tmp_path):
    from kohaku_data.export import ExportError, export_dataset

    m = pl.read_parquet(ladder / "manifest.parquet")
    out = tmp_path / "kohya"
    export_dataset(ladder, out, "kohya", level="square-256")
    for row in m.head(10).iter_rows(named=True):
        got = (out / "images" / f"{row['key']}.webp").read_bytes()
        assert got == _member(ladder, row["shard"], row["image_offset@square-256"], row["image_size@square-256"])
        assert (out / "images" / f"{row['key']}.txt").read_text() == row["caption"]
    assert "bucket_reso_steps = 32" in (out / "dataset.toml").read_text()  # the level's preset step
    hf = tmp_path / "hf"
    export_dataset(ladder, hf, "hf", level="tiny")
    frame = pl.read_parquet(sorted((hf / "data").glob("*.parquet"))[0])
    first = frame.row(0, named=True)
    row = m.filter(pl.col("key") == first["key"]).row(0, named=True)
    assert first["image"]["bytes"] == _member(ladder, row["shard"], row["image_offset@tiny"], row["image_size@tiny"])
    with pytest.raises(ExportError, match="no such level"):
        export_dataset(ladder, tmp_path / "x", "kohya", level="nope")


def test_a_level_added_later_reuses_the_staged_levels(inputs, tmp_path, monkeypatch):
    from kohaku_data import storage
    from kohaku_data.assembly import tasks as T
    from kohaku_data.assembly.plan import make_plan
    from kohaku_data.db import DanbooruDB
    from kohaku_data.images import stage
    from kohaku_data.sources import open_source

    with DanbooruDB.open(inputs.db, readonly=True) as db:
        plan = make_plan(db, open_source(inputs.src), small_recipe())
    items = plan.slice(0, 6)
    root = storage.join(str(tmp_path), "images")
    one = ladder_recipe(["square-256"]).image
    staging = str(T.staging_dir(root, one, True))
    assert staging == str(T.staging_dir(root, small_recipe().image, True))  # main folder: levels left out
    seen: list[list[str]] = []
    real = stage.process_levels
    monkeypatch.setattr(stage, "process_levels",
                        lambda data, configs, name="": seen.append([c.bucket_preset().name for c in configs])
                        or real(data, configs, name=name))
    first = T.run_image_task(T.ImageTask(0, items, one, True, staging))
    assert first.done == 6 and all(c == ["demo-256", "square-256"] for c in seen)  # one decode, both levels
    kept = {p: p.read_bytes() for p in Path(tmp_path, "images").rglob("*.bin")}
    seen.clear()
    both = ladder_recipe().image
    again = T.run_image_task(T.ImageTask(0, items, both, True, staging))
    assert seen and all(c == ["tiny"] for c in seen)  # only the new level is computed
    assert all(p.read_bytes() == data for p, data in kept.items())  # the staged levels are reused as they are
    assert [[n for n, _ in i.levels] for i in again.items if i.ok][0] == ["square-256", "tiny"]
    seen.clear()
    T.run_image_task(T.ImageTask(0, items, both, True, staging))
    assert seen == [] 


def test_recipe_hash_and_validation():
    assert small_recipe().sha256() == small_recipe(image={"bucket": "demo-256", "levels": []}).sha256()
    assert ladder_recipe().sha256() != small_recipe().sha256()
    with pytest.raises(RecipeError):
        validate_recipe({"image": {"levels": ["square-265"]}})
    with pytest.raises(RecipeError):
        validate_recipe({"image": {"levels": [{**TINY, "name": "a.b"}]}})
    with pytest.raises(RecipeError):
        validate_recipe({"image": {"levels": ["square-256", "square-256"]}})


def test_a_level_added_to_a_finished_dataset_reuses_its_members(inputs, ladder, tmp_path, monkeypatch):
    """Issue 23: a finished build with levels = ["square-256"], rebuilt (--force) with `tiny` added:
    the main bucket and square-256 come from the old shards, only `tiny` is resized and encoded,
    and the result is byte for byte the from-scratch build of both levels (`ladder`)."""
    from kohaku_data.assembly.lock import BuildError
    from kohaku_data.images import stage

    out = tmp_path / "ds"
    first = build(inputs, out, ladder_recipe(["square-256"]))
    assert first.processed > 0 and first.restaged == 0
    assert not (out / ".staging").exists()  # a finished build keeps no staging
    with pytest.raises(BuildError, match=r"other \[image\] levels \(square-256\).*--force"):
        build(inputs, out, ladder_recipe())
    encoded: list[str] = []  # the preset of every image resized, encoded and verified
    tried: list[str] = []  # and of every image that reached the bucket step at all
    real = stage._finish

    def counted(im, config, source):
        tried.append(config.bucket_preset().name)
        result = real(im, config, source)
        encoded.append(config.bucket_preset().name)
        return result

    monkeypatch.setattr(stage, "_finish", counted)
    again = build(inputs, out, ladder_recipe(), force=True)
    m = pl.read_parquet(ladder / "manifest.parquet")
    assert again.restaged == 2 * m.height  # main + square-256 of every sample, read from the old shards
    assert encoded.count("tiny") == m.height and set(encoded) == {"tiny"}  # only the new level is made
    # square-256 of the one too_small post (its main image's rejection hid the level's verdict): the
    # stage runs it again and rejects it before any resize; the main bucket never runs
    assert tried.count("square-256") == 1 and "demo-256" not in tried
    assert folder_bytes(out) == folder_bytes(ladder)
    assert not (out / ".staging").exists()


def test_restaging_runs_the_unknown_items_of_a_big_task(inputs, ladder, tmp_path, monkeypatch):
    """Tasks of many items (as in any build past 256 plan rows): the too_small post's square-256
    verdict is unknown in the old dataset, one item of a task object that is restaged anyway;
    it runs through the stage there, beside the members read from the old shards, and the
    result is still the from-scratch build."""
    from kohaku_data.assembly import pipeline

    monkeypatch.setattr(pipeline, "_TASKS_PER_PLAN", 1)  # one task object holds the whole plan
    out = tmp_path / "ds"
    build(inputs, out, ladder_recipe(["square-256"]))
    again = build(inputs, out, ladder_recipe(), force=True)
    m = pl.read_parquet(ladder / "manifest.parquet")
    assert again.restaged == 2 * m.height
    assert folder_bytes(out) == folder_bytes(ladder)
