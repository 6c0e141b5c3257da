"""Palette and dither: how many colours, and whether they are mixed by dithering.

`colours` counts distinct colours (alpha included) up to COLOUR_CAP; more is reported as
COLOUR_CAP + 1 ("more than"). `dither` is the share of pixels, among those that differ from
a neighbour, that differ from all four: the isolated pixels of error diffusion or an ordered
pattern (a flat drawing's edges give a few percent; a dithered GIF-era picture tens of
percent). Computed on the luma window, so two colours of equal luma count as equal there.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

COLOUR_CAP = 4096


def colour_count(im: Image.Image, box: tuple[int, int, int, int] | None = None) -> int | None:
    """Distinct colours of the whole image (capped), None for modes without 8-bit colours.
    `box`, a part counted first: when it alone holds more than the cap, so does the image (most
    pictures: the whole image is never scanned); else the whole image is counted. Exact either way."""
    if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):
        return None
    if box is not None and box != (0, 0, *im.size) and im.crop(box).getcolors(COLOUR_CAP) is None:
        return COLOUR_CAP + 1
    found = im.getcolors(COLOUR_CAP)
    return COLOUR_CAP + 1 if found is None else len(found)


def dither_share(y: np.ndarray) -> float | None:
    """Isolated-pixel share of the changing pixels of a luma window; None when too small or flat."""
    if min(y.shape) < 8:
        return None
    across = np.abs(np.diff(y[1:-1], axis=1)) >= 0.5  # [r, c]: pixel c+1 vs c, inner rows
    down = np.abs(np.diff(y[:, 1:-1], axis=0)) >= 0.5  # [r, c]: row r+1 vs r, inner columns
    changed = [across[:, :-1], across[:, 1:], down[:-1], down[1:]]  # left, right, up, down neighbour
    any_change = changed[0] | changed[1] | changed[2] | changed[3]
    n = int(any_change.sum())
    if n < 64:
        return None
    isolated = changed[0] & changed[1] & changed[2] & changed[3]
    return round(float(isolated.sum() / n), 4)
