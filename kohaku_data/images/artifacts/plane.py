"""The luminance plane the pixel measures read: JFIF luma (0.299 R + 0.587 G + 0.114 B, the Y a
JPEG encoder quantised), float32, of a window of at most `side` x `side` pixels whose corner lies
on the 8-pixel grid of the full image (so a JPEG's block grid keeps its phase in the window)."""

from __future__ import annotations

import numpy as np
from PIL import Image

LUMA = (0.299, 0.587, 0.114)
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_GREY_MODES = {"L", "LA", "1"}


def window(size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """A centred box of at most side x side, left/top on multiples of 8."""
    w, h = size
    cw, ch = min(w, side), min(h, side)
    left, top = (w - cw) // 2 // 8 * 8, (h - ch) // 2 // 8 * 8
    return left, top, left + cw, top + ch


def luma(im: Image.Image, side: int) -> np.ndarray | None:
    """float32 luma of the centred window; None for modes with no meaningful 8-bit luma (16-bit,
    float, I)."""
    box = window(im.size, side)
    if im.mode in _GREY_MODES:
        part = im.crop(box)
        return np.asarray(part.getchannel(0) if part.mode == "LA" else part.convert("L"), dtype=np.float32)
    if im.mode not in _COLOUR_MODES:
        return None
    part = im.crop(box)
    rgb = np.asarray(part if part.mode in ("RGB", "RGBA", "RGBX") else part.convert("RGB"))
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
