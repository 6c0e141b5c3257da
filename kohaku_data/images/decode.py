"""Bytes → a fully loaded, upright PIL image, or `Rejected` with a precise reason.

Safety rules: decompression bombs are errors (Pillow's warning is turned into an error inside the
call and the per-call `max_pixels` is checked after reading the header, before decoding pixels);
truncated files are errors (`ImageFile.LOAD_TRUNCATED_IMAGES` is never set).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from kohaku_data.images.errors import Rejected


def ensure_avif() -> None:
    """Pillow >= 11.3 decodes AVIF itself; only older builds need pillow-avif-plugin."""
    if features.check("avif"):
        return
    try:
        import pillow_avif  # noqa: F401  (registers the AVIF plugin on import)
    except ImportError:
        pass  # AVIF inputs will then be rejected as "unidentified"


def decode(data: bytes, *, max_pixels: int, animated: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open, check size and frames, load pixels, apply EXIF orientation. `draft` (w, h): a
    JPEG may be decoded at a reduced scale (1/2..1/8) no smaller than that — for hashes, which
    need no exact pixels; other formats decode in full."""
    if not data:
        raise Rejected("empty_file", "the file has 0 bytes")
    ensure_avif()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = _open(data, max_pixels)
        _check_frames(im, animated)
        if draft is not None and im.format == "JPEG":
            im.draft(im.mode, draft)
        _load(im)
    _upright(im)
    return im


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise Rejected("unidentified", "not an image format Pillow can read") from None
    except Exception as exc:  # corrupt headers raise many types (SyntaxError, struct.error, ...)
        raise Rejected("decode_error", f"{type(exc).__name__}: {exc}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise Rejected("decode_error", f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise Rejected("decompression_bomb", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    return im


def _check_frames(im: Image.Image, animated: str) -> None:
    try:
        frames = getattr(im, "n_frames", 1)
    except Exception as exc:  # counting GIF frames reads the whole file
        raise Rejected("truncated" if _is_truncation(exc) else "decode_error", str(exc)) from None
    if frames > 1 and animated == "skip":
        raise Rejected("animated_skipped", f"{frames} frames (config.animated = 'skip')")
    if frames > 1:
        im.seek(0)


def _load(im: Image.Image) -> None:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES, "the stage never accepts truncated images"
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("decompression_bomb", str(exc)) from None
    except Exception as exc:
        reason = "truncated" if _is_truncation(exc) else "decode_error"
        raise Rejected(reason, f"{type(exc).__name__}: {exc}") from None


def _is_truncation(exc: Exception) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (OSError, EOFError, SyntaxError)) and (
        "truncated" in text or "end of file" in text or "eof" in text or isinstance(exc, EOFError)
        or "premature" in text or "buffer is not large enough" in text
    )


def _upright(im: Image.Image) -> None:
    """EXIF orientation, in place (no copy of a 40 MP image when nothing needs turning)."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as exc:  # unreadable EXIF: the right orientation is unknown, do not guess
        raise Rejected("exif_error", f"cannot apply EXIF orientation: {type(exc).__name__}: {exc}") from None
