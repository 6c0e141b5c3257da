"""Any decoded mode → 8-bit sRGB "RGB" or "RGBA", with correct rounding.

Rules (documented behaviour):
- High bit depth: "I;16*" and "I" (16-bit PNG/TIFF grey) become 8 bit by round(v / 257), values
  clipped to 0..65535; "F" is taken as 0..1 when its maximum is <= 1, else as 0..255. Pillow's own
  `convert("L")` clips instead, collapsing 16-bit data to a few grey levels.
  16-bit RGB(A) PNG/TIFF are reduced to 8 bit by Pillow's decoder itself (high byte: floor(v/256),
  at most one level below round(v/257)); that is a known, bounded difference.
- "1" → grey; "P"/"PA" → RGBA when the palette has transparency, else RGB (before any resize).
- Alpha is split off, the colour part goes through its embedded ICC profile to sRGB
  (perceptual intent; profiles that name themselves sRGB, broken ones, and ones whose colour
  space does not match the pixels are ignored, as browsers do), then alpha is put back.
- CMYK: Pillow already un-inverts Adobe CMYK JPEGs; a CMYK profile is applied when present.
- alpha = "composite": composited onto `background`; alpha = "keep": an alpha channel that is
  all 255 is dropped (stored RGB; nothing is lost).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms

from kohaku_data.images.errors import Rejected

_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_DIRECT = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "YCbCr": "RGB", "HSV": "RGB"}
_ICC_SPACE = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}


def normalise(im: Image.Image, *, alpha: str, background: tuple[int, int, int]) -> Image.Image:
    icc = im.info.get("icc_profile")
    base = _base_mode(im)
    if alpha == "keep" and base.mode in ("LA", "RGBA") and _transform(icc, base.mode[:-1]) is None:
        return _keep_alpha(base)
    colour, alpha_band = _split_alpha(base)
    colour = _to_srgb(colour, icc)
    if alpha_band is None:
        return colour
    if alpha == "composite":
        return _composite(colour, alpha_band, background)
    if alpha_band.getextrema() == (255, 255):
        return colour  # fully opaque: RGB holds exactly the same pixels
    colour.putalpha(alpha_band)
    return colour


def _base_mode(im: Image.Image) -> Image.Image:
    """To one of L, LA, RGB, RGBA, CMYK (and LAB, rejected later if it cannot convert)."""
    mode = im.mode
    if mode in _HIGH_DEPTH:
        return _high_depth_to_l(im)
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or im.has_transparency_data else "RGB")
    if mode in _DIRECT:
        return im.convert(_DIRECT[mode])
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK", "LAB"):
        return im
    raise Rejected("unsupported_mode", f"image mode {mode!r} is not supported")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        scale = 255.0 if np.nanmax(a) <= 1.0 else 1.0
        out = np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255)
    else:
        v = np.clip(a.astype(np.int64), 0, 65535)
        out = (v + 128) // 257  # = round(v / 257) for integers
    return Image.fromarray(out.astype(np.uint8), "L")


def _split_alpha(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    if im.mode == "LA":
        return im.getchannel("L"), im.getchannel("A")
    if im.mode == "RGBA":
        return im.convert("RGB"), im.getchannel("A")
    return im, None


def _keep_alpha(im: Image.Image) -> Image.Image:
    """LA/RGBA with no colour profile to apply: the same pixels as split → RGB → putalpha, in at
    most one conversion (an RGBA source is returned as it is, not copied three times)."""
    if im.getchannel("A").getextrema() == (255, 255):
        return im.convert("RGB")  # fully opaque: RGB holds exactly the same pixels
    return im if im.mode == "RGBA" else im.convert("RGBA")


def _transform(icc: bytes | None, mode: str) -> ImageCms.ImageCmsTransform | None:
    return _icc_transform(icc, mode) if icc and mode in _ICC_SPACE else None


def _to_srgb(colour: Image.Image, icc: bytes | None) -> Image.Image:
    transform = _transform(icc, colour.mode)
    if transform is not None:
        return ImageCms.applyTransform(colour, transform)
    if colour.mode == "RGB":
        return colour
    try:
        return colour.convert("RGB")
    except (ValueError, OSError) as exc:
        raise Rejected("unsupported_mode", f"cannot convert {colour.mode} to RGB: {exc}") from None


@functools.lru_cache(maxsize=32)
def _icc_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """Transform from an embedded profile to sRGB, cached per (profile bytes, mode); None = ignore it."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = (profile.profile.xcolor_space or "").strip().upper()
        if space != _ICC_SPACE[mode]:
            return None
        if mode == "RGB" and "srgb" in (profile.profile.profile_description or "").lower():
            return None  # already sRGB: a round trip through lcms could only add rounding
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.buildTransform(profile, srgb, mode, "RGB", ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _composite(colour: Image.Image, alpha_band: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    fg = colour.copy()
    fg.putalpha(alpha_band)
    bg = Image.new("RGBA", fg.size, (*background, 255))
    return Image.alpha_composite(bg, fg).convert("RGB")
