"""Artifacts the source already carries, measured on the decoded original before any resize.

    measures = measure_artifacts(im, data)  # im: as `images.decode` returns it; data: its bytes

One flat dict of FIELDS (every key present, None where a measure does not apply or cannot be
computed: a tiny or flat image, an odd mode). Never raises on an image `decode` accepted; a
measure that fails is None. Cost: one luma window of at most WINDOW x WINDOW pixels, one block
DCT of at most 1024 blocks, two FFTs (bench_artifacts: per-image cost beside the image stage).

- JPEG source: `jpeg_quality` (IJG 1-100, exact for IJG tables, a fitted equivalent for
  `jpeg_tables = "custom"`), `jpeg_subsampling`, `jpeg_progressive` (jpeg.py).
- A source stored losslessly (PNG, lossless WebP, BMP, TIFF, GIF): `jpeg_history` (0..1
  evidence that the pixels were once a JPEG) and `jpeg_history_quality` (history.py).
- WebP: `webp_lossy`, and a lossy one's rough `webp_quality` (webp.py).
- Every source: `upscale_factor` (1.0 = not upscaled), `upscale_kind` ("nearest" | "smooth"),
  `upscale_cliff`, and `effective_width` / `effective_height` = size / factor (upscale.py);
  `colours` and `dither` (palette.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from kohaku_data.images.artifacts.history import jpeg_history
from kohaku_data.images.artifacts.jpeg import jpeg_settings
from kohaku_data.images.artifacts.palette import colour_count, dither_share
from kohaku_data.images.artifacts.plane import luma, window as luma_window
from kohaku_data.images.artifacts.upscale import upscale_factor
from kohaku_data.images.artifacts.webp import webp_settings

WINDOW = 512  # side of the centred luma window the pixel measures read

# name -> (type, meaning): the columns records.parquet and the manifest carry ("int", "float",
# "str", "bool"; every one nullable)
FIELDS: dict[str, tuple[str, str]] = {
    "jpeg_quality": ("int", "JPEG source: IJG quality 1-100 of its quantisation tables"),
    "jpeg_tables": ("str", "JPEG source: 'ijg' (scaled Annex K tables) or 'custom' (quality is the nearest IJG fit)"),
    "jpeg_subsampling": ("str", "JPEG source: '4:4:4', '4:2:2' or '4:2:0'"),
    "jpeg_progressive": ("bool", "JPEG source: progressive"),
    "jpeg_history": ("float", "lossless source: evidence 0..1 that its pixels were once a JPEG"),
    "jpeg_history_quality": ("int", "lossless source: estimated IJG quality of that past JPEG"),
    "webp_lossy": ("bool", "WebP source: VP8 (lossy) rather than VP8L"),
    "webp_quality": ("int", "lossy WebP source: rough libwebp quality 0-100"),
    "upscale_factor": ("float", "estimated enlargement from a smaller original (1.0: none found)"),
    "upscale_kind": ("str", "'nearest' (repeated pixels) or 'smooth' (spectral cut-off); null when not upscaled"),
    "upscale_cliff": ("float", "height of the spectrum's cut-off, in decades (the smooth test's evidence)"),
    "effective_width": ("int", "source width / upscale_factor"),
    "effective_height": ("int", "source height / upscale_factor"),
    "colours": ("int", "distinct colours, up to 4096 (4097 = more)"),
    "dither": ("float", "share of changing pixels that differ from all 4 neighbours"),
}
T = TypeVar("T")
LOSSY_FORMATS = ("JPEG", "MPO", "AVIF")  # no JPEG history test: their own coding noise hides it


def empty_measures() -> dict[str, Any]:
    return dict.fromkeys(FIELDS)


def measure_artifacts(im: Image.Image, data: bytes, *, window: int = WINDOW) -> dict[str, Any]:
    """Every measure of FIELDS for a decoded (EXIF-upright, not normalised) image and its bytes."""
    out = empty_measures()
    out.update(_safe(lambda: jpeg_settings(im), {}))
    if im.format == "WEBP":
        out.update(_safe(lambda: webp_settings(data), {}))
    y = _safe(lambda: luma(im, window), None)
    if y is None:
        out["colours"] = _safe(lambda: colour_count(im), None)
        return out
    if im.format not in LOSSY_FORMATS and not out["webp_lossy"]:
        out["jpeg_history"], out["jpeg_history_quality"] = _safe(lambda: jpeg_history(y), (None, None))
    factor, kind, cliff = _safe(lambda: upscale_factor(y), (None, None, None))
    out.update(upscale_factor=factor, upscale_kind=kind, upscale_cliff=cliff)
    if factor is not None:
        out["effective_width"] = max(1, round(im.width / factor))
        out["effective_height"] = max(1, round(im.height / factor))
    out["colours"] = _safe(lambda: colour_count(im, luma_window(im.size, window)), None)
    out["dither"] = _safe(lambda: dither_share(y), None)
    return out


def _safe(compute: Callable[[], T], default: T) -> T:
    """A measure that fails is unknown (its default: None), never the image's rejection."""
    try:
        return compute()
    except Exception:
        return default


def json_value(name: str, value: Any) -> Any:
    """A measure for the sample `.json`, where nulls are not allowed: unknown ints and floats are
    -1, unknown strings "", booleans 1 / 0 (-1 unknown)."""
    kind = FIELDS[name][0]
    if kind == "str":
        return "" if value is None else str(value)
    if kind == "float":
        return -1.0 if value is None else float(value)
    return -1 if value is None else int(value)


JSON_KINDS = {"int": "int64", "bool": "int64", "float": "float64", "str": "string"}


def polars_schema() -> dict[str, Any]:
    """FIELDS as polars column types (records.parquet and the manifest carry these columns)."""
    import polars as pl

    types = {"int": pl.Int32, "float": pl.Float64, "str": pl.String, "bool": pl.Boolean}
    return {name: types[kind] for name, (kind, _) in FIELDS.items()}
