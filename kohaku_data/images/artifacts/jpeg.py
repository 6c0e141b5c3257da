"""A JPEG file's own encoder settings: quality from its quantisation tables, chroma subsampling,
progressive or baseline. All read from what Pillow parsed from the header (no pixel is used).

Quality is on the IJG (libjpeg) scale 1–100: libjpeg scales the two Annex K tables by
`s = 5000 / q` (q < 50) or `200 - 2q`, `(base * s + 50) // 100` clipped to 1..255. Tables that
are exactly such a scaling are "ijg" with that q; any others (Photoshop, camera, mozjpeg
presets) are "custom", and their quality is the IJG q whose tables are nearest in log step
size (a fitted equivalent, not an exact setting).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Annex K tables, natural (row-major) order, as Pillow's `im.quantization` reports them.
IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
IJG_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *(99,) * 32,
)
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # JpegImagePlugin.get_sampling codes


def ijg_tables(base: tuple[int, ...]) -> np.ndarray:
    """(100, 64) int array: row q-1 is `base` scaled to IJG quality q (baseline, clipped 1..255)."""
    q = np.arange(1, 101, dtype=np.int64)[:, None]
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    return np.clip((np.asarray(base, np.int64)[None, :] * scale + 50) // 100, 1, 255)


def table_quality(tables: list[np.ndarray]) -> tuple[int, str]:
    """(quality, "ijg" | "custom") for a list of 64-entry tables (luma first, then chroma)."""
    candidates = (ijg_tables(IJG_LUMA), ijg_tables(IJG_CHROMA))
    used = [(np.asarray(t, np.int64), candidates[min(i, 1)]) for i, t in enumerate(tables[:2])]
    exact = np.ones(100, dtype=bool)
    for table, cand in used:
        exact &= (cand == table[None, :]).all(axis=1)
    if exact.any():
        return int(np.flatnonzero(exact)[-1]) + 1, "ijg"
    cost = sum(np.abs(np.log(cand) - np.log(np.maximum(table, 1))[None, :]).sum(axis=1) for table, cand in used)
    return int(np.argmin(cost)) + 1, "custom"


def jpeg_settings(im: Image.Image) -> dict[str, object]:
    """jpeg_quality, jpeg_tables, jpeg_subsampling, jpeg_progressive of a decoded JPEG; {} otherwise."""
    if im.format != "JPEG":
        return {}
    out: dict[str, object] = {"jpeg_progressive": bool(im.info.get("progressive") or im.info.get("progression"))}
    tables = getattr(im, "quantization", None) or {}
    if tables:
        ordered = [np.asarray(tables[k]) for k in sorted(tables)]
        if all(t.size == 64 for t in ordered):
            out["jpeg_quality"], out["jpeg_tables"] = table_quality(ordered)
    out["jpeg_subsampling"] = _subsampling(im)
    return out


def _subsampling(im: Image.Image) -> str | None:
    from PIL import JpegImagePlugin

    try:
        return SUBSAMPLING.get(JpegImagePlugin.get_sampling(im))
    except Exception:  # a layer list Pillow could not read: unknown, not a failure
        return None
