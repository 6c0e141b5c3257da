"""`kdata export` on a real build: byte-identical images, sd-scripts' layouts, 🤗 parquet, subsets, resume."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from kohaku_data.assembly.sample_schema import schema_problems
from kohaku_data.cli import app
from kohaku_data.export import ExportError, export_dataset
from kohaku_data.export.select import in_split
from test_export_support import sparse_build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return sparse_build(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def manifest(built) -> pl.DataFrame:
    return pl.read_parquet(built[1] / "manifest.parquet")


def _member(ds: Path, row: dict) -> bytes:
    with open(ds / row["shard"], "rb") as f:
        f.seek(row["image_offset"])
        return f.read(row["image_size"])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- sd-scripts' bucket and caption rules, re-implemented line for line from library/train_util.py
# (BucketManager.select_bucket with no_upscale, adjust_min_max_bucket_reso_by_steps, and the
# keep_tokens_separator branch of process_caption). tests/test_export_sdscripts.py runs the
# originals when a checkout of sd-scripts is at hand; these run everywhere.
def sd_select_bucket_no_upscale(w: int, h: int, max_area: int, steps: int):
    aspect = w / h
    if w * h > max_area:
        rw = math.sqrt(max_area * aspect)
        rh = max_area / rw
        rnd = lambda x: int(x + 0.5) - int(x + 0.5) % steps  # noqa: E731
        bw = rnd(rw)
        bh_w = rnd(bw / aspect)
        bh = rnd(rh)
        bw_h = rnd(bh * aspect)
        resized = (bw, int(bw / aspect + 0.5)) if abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect) \
            else (int(bh * aspect + 0.5), bh)
    else:
        resized = (w, h)
    return (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps), resized


def sd_keep_split(caption: str, sep: str, keep_sep: str) -> tuple[list[str], list[str]]:
    fixed, flex = caption.split(keep_sep, 1)
    return [t.strip() for t in fixed.split(sep) if t.strip()], [t.strip() for t in flex.split(sep) if t.strip()]


def test_kohya_images_are_the_shard_members_and_every_bucket_is_the_image(built, manifest, tmp_path):
    inputs, ds = built
    res = CliRunner().invoke(app, ["export", str(ds), str(tmp_path / "k"), "--format", "kohya", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "k"
    for row in manifest.iter_rows(named=True):
        image = out / "images" / row["image"]
        data = image.read_bytes()
        assert data == _member(ds, row) and hashlib.sha256(data).hexdigest() == row["sha256"]
        assert (out / "images" / f"{row['key']}.txt").read_text() == row["caption"]
    conf = tomllib.loads((out / "dataset.toml").read_text())
    general, subset = conf["general"], conf["datasets"][0]["subsets"][0]
    assert Path(subset["image_dir"]).is_absolute() and Path(subset["image_dir"]) == out / "images"
    assert (general["enable_bucket"], general["bucket_no_upscale"], general["caption_extension"]) == (True, True, ".txt")
    assert (general["shuffle_caption"], general["keep_tokens_separator"], general["caption_separator"]) == (True, "|||", ",")
    w_res, h_res = general["resolution"]
    assert general["min_bucket_reso"] <= min(w_res, h_res) and max(w_res, h_res) <= general["max_bucket_reso"]
    for name in sorted(os.listdir(subset["image_dir"])):
        if not name.endswith(".webp"):
            continue
        with Image.open(Path(subset["image_dir"]) / name) as im:
            size = im.size
        bucket, resized = sd_select_bucket_no_upscale(*size, w_res * h_res, general["bucket_reso_steps"])
        assert bucket == resized == size, name  # no resize, no crop
        caption = (Path(subset["image_dir"]) / name).with_suffix(".txt").read_text().split("\n")[0].strip()
        fixed, flex = sd_keep_split(caption, general["caption_separator"], general["keep_tokens_separator"])
        assert not any("|||" in t for t in fixed + flex)
        assert ", ".join(fixed + flex) == caption.replace("|||", "")


def test_kohya_toml_follows_the_recipes_bucket_preset(built, manifest, tmp_path):
    from kohaku_data.config import BUCKET_PRESETS

    result = export_dataset(built[1], tmp_path / "k", "kohya")
    general = tomllib.loads(Path(result.files["dataset_config"]).read_text())["general"]
    preset = BUCKET_PRESETS["demo-256"]
    assert general["bucket_reso_steps"] == preset.step
    side = general["resolution"][0]
    assert side % preset.step == 0 and side * side >= preset.max_area > (side - preset.step) ** 2
    assert general["max_bucket_reso"] >= preset.max_side and general["min_bucket_reso"] <= preset.min_side
    assert (manifest["width"] * manifest["height"]).max() <= side * side


def test_kohya_ft_metadata_in_both_forms(built, manifest, tmp_path):
    result = export_dataset(built[1], tmp_path / "ft", "kohya-ft")
    out = tmp_path / "ft"
    conf = tomllib.loads((out / "dataset.toml").read_text())
    subset = conf["datasets"][0]["subsets"][0]
    assert Path(subset["metadata_file"]) == out / "metadata.jsonl" and Path(subset["image_dir"]) == out / "images"
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    old = json.loads((out / "metadata.json").read_text())
    rows = {r["image"]: r for r in manifest.iter_rows(named=True)}
    assert [entry["image_path"] for entry in lines] == manifest["image"].to_list() == list(old)
    for entry in lines:
        path = Path(subset["image_dir"]) / entry["image_path"]
        with Image.open(path) as im:
            assert list(im.size) == entry["image_size"] == old[entry["image_path"]]["image_size"]
        assert entry["caption"] == old[entry["image_path"]]["caption"] == rows[entry["image_path"]]["caption"]
        assert path.read_bytes() == _member(built[1], rows[entry["image_path"]])
    assert result.samples == manifest.height and not list(out.glob("images/*.txt"))


def test_hf_parquet_loads_in_datasets_with_the_image_bytes(built, manifest, tmp_path):
    import datasets

    export_dataset(built[1], tmp_path / "hf", "hf")
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features["image"] == datasets.Image() and len(ds) == manifest.height
    raw = ds.cast_column("image", datasets.Image(decode=False))
    rows = {r["key"]: r for r in manifest.iter_rows(named=True)}
    for sample in raw:
        row = rows[sample["key"]]
        assert sample["image"]["bytes"] == _member(built[1], row)
        assert sample["caption"] == row["caption"] == sample["json"]["caption"]
        assert schema_problems(sample["json"]) == []
    first = ds[0]["image"]
    assert (first.width, first.height) == (rows[ds[0]["key"]]["width"], rows[ds[0]["key"]]["height"])
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "data/train-*.parquet" in card
    for picture in sorted((built[1] / "card").glob("*")):  # the build's card pictures come along
        assert (tmp_path / "hf" / "card" / picture.name).read_bytes() == picture.read_bytes()


def test_query_and_fraction_pick_the_same_subset_every_time(built, manifest, tmp_path):
    inputs, ds = built
    with sqlite3.connect(inputs.db) as conn:  # a general tag on some but not all built posts
        tag = conn.execute(
            "SELECT t.name FROM tag t JOIN posttagrelation r ON r.tag_id = t.id WHERE t.type = 0 "
            "GROUP BY t.id ORDER BY count(*) DESC, t.name LIMIT 1").fetchone()[0]
        tagged = {r[0] for r in conn.execute(
            "SELECT r.post_id FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE t.name = ?", (tag,))}
    conn.close()
    args = ["export", str(ds), str(tmp_path / "q"), "--format", "kohya-ft", "--query", tag, "--db", str(inputs.db),
            "--fraction", "0.7", "--seed", "3", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    keys = manifest["key"].to_numpy()
    expected = [int(k) for k in keys[in_split(keys, 0.7, 3)] if k in tagged]
    got = [int(json.loads(line)["image_path"].split(".")[0])
           for line in (tmp_path / "q" / "metadata.jsonl").read_text().splitlines()]
    assert got == expected and 0 < len(got) < manifest.height
    assert sorted(int(p.stem) for p in (tmp_path / "q" / "images").iterdir()) == expected


def test_fraction_splits_are_nested_and_depend_on_the_seed():
    keys = np.arange(1, 20_001, dtype=np.int64)
    small, big = in_split(keys, 0.1, 7), in_split(keys, 0.3, 7)
    assert (small <= big).all() and abs(small.mean() - 0.1) < 0.01 and abs(big.mean() - 0.3) < 0.015
    assert (in_split(keys, 0.1, 8) != small).any()
    assert (in_split(keys[::-1], 0.1, 7)[::-1] == small).all()  # per key, not per position


def _whole_and_cut(ds, tmp_path):
    """A reference kohya export (its files) and a second one to damage: (reference, out, images)."""
    export_dataset(ds, tmp_path / "whole", "kohya")
    out = tmp_path / "cut"
    export_dataset(ds, out, "kohya")
    return _tree(tmp_path / "whole"), out, sorted((out / "images").glob("*.webp"))


def test_interrupted_export_resumes_to_the_same_bytes(built, tmp_path):
    ds = built[1]
    reference, out, images = _whole_and_cut(ds, tmp_path)
    for path in images[::3]:
        path.unlink()  # as if killed before these were written (writes are atomic: no partial files)
    (out / "dataset.toml").unlink()
    again = export_dataset(ds, out, "kohya")
    assert again.skipped > 0 and again.written == len(images[::3])
    resumed = {k: v.replace(str(out).encode(), str(tmp_path / "whole").encode()) for k, v in _tree(out).items()}
    assert {k: v for k, v in resumed.items() if k != "kdata-export.json"} == \
        {k: v for k, v in reference.items() if k != "kdata-export.json"}  # the toml names its own folder
    assert json.loads((out / "kdata-export.json").read_text())["complete"] is True


def test_resume_rewrites_cut_files_and_never_writes_through_a_link(built, tmp_path):
    """Files are written under their final names: a cut image (shorter), a caption of the right
    length but other bytes, and a wrong file that is a hard link to a file elsewhere are all
    replaced on a rerun, and the file elsewhere is left as it was."""
    ds = built[1]
    reference, out, images = _whole_and_cut(ds, tmp_path)
    images[0].write_bytes(images[0].read_bytes()[:100])  # as if killed mid-copy
    caption = images[1].with_suffix(".txt")
    caption.write_bytes(bytes(len(caption.read_bytes())))  # same size, other bytes
    outside = tmp_path / "outside.webp"
    outside.write_bytes(b"not this image")
    images[2].unlink()
    os.link(outside, images[2])
    again = export_dataset(ds, out, "kohya")
    assert again.written == 3 and again.skipped == 2 * again.samples - 3
    assert outside.read_bytes() == b"not this image" and images[2].stat().st_nlink == 1
    same = lambda tree, root: {k: v.replace(str(root).encode(), b"ROOT") for k, v in tree.items()  # noqa: E731
                               if k != "kdata-export.json"}
    assert same(_tree(out), out) == same(reference, tmp_path / "whole")


def test_a_failed_write_leaves_no_partial_file(built, tmp_path):
    """A real write failure (the file-size limit, in a subprocess): no image is left under its
    final name at another size than its member's, and the rerun completes the export."""
    from test_write_errors import kdata

    ds = built[1]
    failed = kdata("export", str(ds), str(tmp_path / "o"), "--no-progress", cwd=tmp_path, fsize=2_000)
    assert failed.returncode == 1 and "file-size limit" in failed.stderr
    sizes = dict(pl.read_parquet(ds / "manifest.parquet").select("image", "image_size").iter_rows())
    for path in (tmp_path / "o" / "images").glob("*.webp"):
        assert path.stat().st_size == sizes[path.name], path.name
    assert kdata("export", str(ds), str(tmp_path / "o"), "--no-progress", cwd=tmp_path).returncode == 0
    assert len(list((tmp_path / "o" / "images").glob("*.webp"))) == len(sizes)


def test_link_from_hard_links_identical_images(built, tmp_path):
    first = export_dataset(built[1], tmp_path / "a", "kohya")
    second = export_dataset(built[1], tmp_path / "b", "kohya-ft", link_from=tmp_path / "a")
    assert second.linked == first.samples and second.written == 0
    for image in (tmp_path / "b" / "images").iterdir():
        assert image.stat().st_ino == (tmp_path / "a" / "images" / image.name).stat().st_ino
    # A folder that is not a finished export of this build: every file is checked by sha256,
    # so a same-size file with other bytes is copied from the shard, not linked.
    loose = tmp_path / "loose" / "images"
    loose.mkdir(parents=True)
    names = sorted(p.name for p in (tmp_path / "a" / "images").glob("*.webp"))
    for name in names:
        os.link(tmp_path / "a" / "images" / name, loose / name)
    bad = loose / names[0]
    data = bytearray(bad.read_bytes())
    bad.unlink()
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    third = export_dataset(built[1], tmp_path / "c", "kohya-ft", link_from=tmp_path / "loose")
    assert (third.linked, third.written) == (first.samples - 1, 1)
    assert (tmp_path / "c" / "images" / names[0]).read_bytes() == (tmp_path / "a" / "images" / names[0]).read_bytes()


def test_another_export_into_the_same_folder_is_refused_unless_forced(built, tmp_path):
    export_dataset(built[1], tmp_path / "o", "kohya")
    with pytest.raises(ExportError, match="holds another export"):
        export_dataset(built[1], tmp_path / "o", "kohya", fraction=0.5)
    forced = export_dataset(built[1], tmp_path / "o", "kohya", fraction=0.5, force=True)
    assert len(list((tmp_path / "o" / "images").glob("*.webp"))) == forced.samples


def test_bad_input_is_one_sentence(built, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path), str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 1 and "build it with `kdata build` first" in res.output
    res = runner.invoke(app, ["export", str(built[1]), str(tmp_path / "x"), "--format", "nope"])
    assert res.exit_code == 1 and "pick one of kohya, kohya-ft, hf" in res.output
    res = runner.invoke(app, ["export", str(built[1]), str(tmp_path / "x"), "--fraction", "1.5"])
    assert res.exit_code == 1 and "--fraction must lie in (0, 1]" in res.output
    res = runner.invoke(app, ["export", str(built[1]), str(built[1] / "sub")])
    assert res.exit_code == 1 and "outside the dataset" in res.output
    with pytest.raises(ExportError, match="matches no sample"):
        export_dataset(built[1], tmp_path / "x", "kohya", keys=[-1])
