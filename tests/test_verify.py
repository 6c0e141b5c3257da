"""`kdata verify` catches changed bytes, missing members and stray shards."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kohaku_data.assembly.verify import verify_dataset
from kohaku_data.cli import app
from test_build_support import build, make_inputs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    inputs = make_inputs(root, n_posts=16)
    out = root / "ds"
    build(inputs, out)
    return out


@pytest.fixture
def copy(built, tmp_path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    return out


def _first_image(out: Path) -> tuple[Path, str]:
    row = pl.read_parquet(out / "manifest.parquet").row(0, named=True)
    return out / row["shard"], row["image"]


def test_clean_dataset_passes(copy):
    report = verify_dataset(copy)
    assert report.ok, report.problems
    assert report.samples == pl.read_parquet(copy / "manifest.parquet").height > 0
    res = CliRunner().invoke(app, ["verify", str(copy)])
    assert res.exit_code == 0 and "OK" in res.output


def test_flipped_byte_is_caught(copy):
    shard, image = _first_image(copy)
    with tarfile.open(shard) as tar:
        offset = tar.getmember(image).offset_data + 100
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01
    shard.write_bytes(bytes(data))
    report = verify_dataset(copy)
    assert any("sha256 differs from index.json" in p for p in report.problems)
    assert any(f"{image} sha256 differs from the manifest" in p for p in report.problems)
    res = CliRunner().invoke(app, ["verify", str(copy)])
    assert res.exit_code == 1 and "MISMATCH" in res.output


def test_missing_member_is_caught(copy):
    shard, image = _first_image(copy)
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.name != image]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    problems = verify_dataset(copy).problems
    assert any(f"member {image} is missing" in p for p in problems)


def test_missing_shard_and_stray_shard_are_caught(copy):
    shard, _ = _first_image(copy)
    shard.rename(copy / "stray-000000.tar")
    problems = verify_dataset(copy).problems
    assert any(p == f"{shard.name}: missing" for p in problems)
    assert any("stray-000000.tar is in the folder but not in index.json" in p for p in problems)


def test_not_a_dataset_is_a_clean_error(tmp_path):
    res = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert res.exit_code == 1 and "no index.json" in res.output


def _rewrite_member_indexes(out: Path, change) -> int:
    """Apply `change(index)` to every shard's NAME-000000.json (sorted keys, compact, as built);
    returns how many image entries carried webshart fields before."""
    import json

    annotated = 0
    for path in sorted(out.glob("*.json")):
        if path.name in ("index.json", "stats.json"):
            continue
        index = json.loads(path.read_bytes())
        annotated += sum("width" in entry for entry in index["files"].values())
        change(index)
        path.write_bytes(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    return annotated


def _strip_webshart(index: dict) -> None:
    index.pop("includes_image_geometry", None)
    for entry in index["files"].values():
        for key in ("width", "height", "aspect", "caption"):
            entry.pop(key, None)


def test_a_build_from_before_the_webshart_fields_verifies_clean(copy):
    annotated = _rewrite_member_indexes(copy, _strip_webshart)
    assert annotated == pl.read_parquet(copy / "manifest.parquet").height  # there was something to strip
    report = verify_dataset(copy)
    assert report.ok, report.problems
    res = CliRunner().invoke(app, ["verify", str(copy)])
    assert res.exit_code == 0 and "OK" in res.output


def test_a_wrong_webshart_width_is_caught(copy):
    _, image = _first_image(copy)
    width = pl.read_parquet(copy / "manifest.parquet").row(0, named=True)["width"]

    def widen(index: dict) -> None:
        if image in index["files"]:
            index["files"][image]["width"] = width + 8

    _rewrite_member_indexes(copy, widen)
    problems = verify_dataset(copy).problems
    assert problems == [p for p in problems if image in p] and len(problems) == 1, problems
    assert f"width {width + 8} (manifest: {width})" in problems[0]
    res = CliRunner().invoke(app, ["verify", str(copy)])
    assert res.exit_code == 1 and "MISMATCH" in res.output


def test_old_build_with_a_wrong_hfutils_offset_is_still_caught(copy):
    _, image = _first_image(copy)

    def shift(index: dict) -> None:
        _strip_webshart(index)
        if image in index["files"]:
            index["files"][image]["offset"] += 512

    _rewrite_member_indexes(copy, shift)
    problems = verify_dataset(copy).problems
    assert any(f"offset of {image} do not match the tar" in p for p in problems), problems


def test_a_caption_in_the_index_that_differs_from_the_manifest_is_caught(copy):
    _, image = _first_image(copy)

    def recaption(index: dict) -> None:
        if image in index["files"]:
            index["files"][image]["caption"] += " extra"

    _rewrite_member_indexes(copy, recaption)
    problems = verify_dataset(copy).problems
    assert len(problems) == 1 and f"{image} caption" in problems[0], problems
