"""Lossless storage and the verification of every write.

WebP lossless with `exact=True` (RGB under alpha = 0 kept bit-exact); PNG when the preset says so
or a side exceeds WebP's 16383 limit. No lossy output exists in this module.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops

from kohaku_data.config import CodecPreset
from kohaku_data.images.errors import Rejected

WEBP_MAX_SIDE = 16383


def encode(im: Image.Image, codec: CodecPreset) -> tuple[str, bytes]:
    """→ (format, bytes); `im` must be RGB or RGBA."""
    fmt = "webp" if codec.format == "webp" and max(im.size) <= WEBP_MAX_SIDE else "png"
    buf = io.BytesIO()
    try:
        if fmt == "webp":
            im.save(buf, "WEBP", lossless=True, exact=True, quality=codec.quality, method=codec.method)
        else:
            im.save(buf, "PNG", compress_level=codec.png_compress_level)
    except Exception as exc:
        raise Rejected("encode_error", f"{type(exc).__name__}: {exc}") from None
    return fmt, buf.getvalue()


def verify(data: bytes, intended: Image.Image) -> None:
    """Decode the stored bytes; mode, size and every pixel must equal the intended image.

    The comparison runs in Pillow's C code on the images as they are (no numpy/bytes copies):
    `difference` is |a - b| per channel and `getbbox(alpha_only=False)` is None only when every
    channel of every pixel is 0 (Pillow's padding byte of RGB pixels is not a channel).
    """
    try:
        with Image.open(io.BytesIO(data)) as back:
            back.load()
    except Exception as exc:
        raise Rejected("verify_mismatch", f"stored bytes do not decode: {exc}") from None
    if back.mode != intended.mode or back.size != intended.size:
        raise Rejected("verify_mismatch", f"stored {back.mode} {back.size} != intended {intended.mode} {intended.size}")
    if ImageChops.difference(back, intended).getbbox(alpha_only=False) is not None:
        raise Rejected("verify_mismatch", "stored pixels differ from the intended pixels")
