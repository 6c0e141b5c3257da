"""The folder/tar runner: every hard case ends as a row, outputs identical for any worker count."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_images_helpers import bomb_png, decode, encode
from kohaku_data.cli import app
from kohaku_data.config import ImageConfig
from kohaku_data.images.batch import RECORD_SCHEMA, RECORDS, run_images

DEMO = ImageConfig(bucket="demo-256")


def picture(seed: int, size=(400, 300)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((base + rng.integers(0, 30, base.shape)).clip(0, 255).astype(np.uint8))


def make_source(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "1.jpg").write_bytes(encode(picture(1), "JPEG", quality=90))
    (src / "sub" / "2.png").write_bytes(encode(picture(2).convert("RGBA"), "PNG"))
    (src / "3.webp").write_bytes(encode(picture(3), "WEBP", quality=80))
    (src / "4.png").write_bytes(b"")
    (src / "5.png").write_bytes(bomb_png())
    (src / "6.jpg").write_bytes(encode(picture(6), "JPEG")[:2000])
    (src / "7.gif").write_bytes(np.random.default_rng(7).bytes(3000))
    (src / "8.png").write_bytes(encode(picture(8, (90, 90)), "PNG"))
    (src / "free name.png").write_bytes(encode(picture(9), "PNG"))
    (src / "notes.txt").write_text("not an image")
    with tarfile.open(src / "data-0000.tar", "w") as tar:
        for key in (10, 11):
            data = encode(picture(key), "PNG")
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return src


def test_batch_finishes_with_a_row_per_input(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    summary = run_images(src, tmp_path / "out", DEMO, workers=1)
    rec = pl.read_parquet(tmp_path / "out" / RECORDS)
    assert rec.schema == pl.Schema(RECORD_SCHEMA)
    assert rec.height == summary.total == 12
    by = dict(zip(rec["source"], rec["reason"], strict=True))
    assert by["4.png"] == "empty_file" and by["5.png"] == "decompression_bomb"
    assert by["6.jpg"] == "truncated" and by["7.gif"] == "unidentified" and by["8.png"] == "too_small"
    assert by["notes.txt"] == "unsupported_extension"
    ok = rec.filter(pl.col("status") == "ok")
    assert sorted(ok["output"]) == ["1.webp", "10.webp", "11.webp", "2.webp", "3.webp", "free name.webp"]
    assert summary.ok == 6 and summary.rejected["too_small"] == 1
    for row in ok.iter_rows(named=True):
        back = decode((tmp_path / "out" / row["output"]).read_bytes())
        assert back.size == (row["width"], row["height"])
        assert row["bucket"] == f"{row['width']}x{row['height']}" and len(row["crop_box"]) == 4
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_output_identical_for_any_worker_count(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    run_images(src, tmp_path / "w1", DEMO, workers=1)
    run_images(src, tmp_path / "w2", DEMO, workers=2)
    a, b = pl.read_parquet(tmp_path / "w1" / RECORDS), pl.read_parquet(tmp_path / "w2" / RECORDS)
    assert a.equals(b)
    for name in a["output"].drop_nulls():
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_cli_images(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    result = CliRunner().invoke(app, ["images", str(src), str(tmp_path / "out"), "--preset", "demo-256",
                                      "--codec", "png", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "6 ok" in result.output and "too_small: 1" in result.output
    assert (tmp_path / "out" / "1.png").is_file()
    bad = CliRunner().invoke(app, ["images", str(src), str(tmp_path / "o2"), "--preset", "nope"])
    assert bad.exit_code == 1 and "unknown bucket preset" in bad.output


@pytest.mark.parametrize("missing", ["does-not-exist"])
def test_missing_source_is_a_clear_error(tmp_path: Path, missing: str) -> None:
    result = CliRunner().invoke(app, ["images", str(tmp_path / missing), str(tmp_path / "out")])
    assert result.exit_code == 1 and "does not exist" in result.output
