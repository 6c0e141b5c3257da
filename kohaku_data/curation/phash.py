"""Image hashes for duplicates: from bytes through the build's own decode + normalise.

- `md5`: of the file bytes (the same file twice).
- `pixels` (exact policy): sha256 of the normalised image (mode, size, every pixel) — the same
  picture stored in two files (PNG vs lossless WebP, different metadata). Needs a full decode.
- `phash` (near policy): the DCT perceptual hash (the algorithm of imagehash.phash: 32×32 grey
  LANCZOS thumbnail, 2-D DCT-II, the 8×8 lowest frequencies against their median → 64 bits),
  computed from a *reduced* decode: JPEGs are decoded at 1/2…1/8 scale with Pillow's `draft`
  (never below 64 px a side), which is what makes hashing cheap beside the image stage. Alpha is
  composited onto white first, so a transparent PNG and its flattened copy hash alike.

`hash_image` never raises on bad input: an image the stage would refuse gets `error` (its
reason) and no hashes; dedup then leaves it to the image stage to reject.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kohaku_data.images.decode import decode
from kohaku_data.images.errors import Rejected
from kohaku_data.images.normalise import normalise

THUMB = 32  # grey thumbnail side the DCT runs on
LOW = 8  # LOW × LOW lowest frequencies → 64 bits
DRAFT_SIDE = 64  # a reduced JPEG decode keeps at least this many pixels a side
_WHITE = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class ImageHashes:
    md5: str
    pixels: str | None = None  # exact policy
    phash: int | None = None  # near policy: unsigned 64-bit
    colour: bytes | None = None  # near policy: COLOUR_BINS shares × 255 (see colour_signature)
    error: str | None = None  # the decode's reject reason; no hashes then


@functools.lru_cache(maxsize=4)
def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the (unnormalised) DCT-II matrix of size n; scale does not
    matter: bits compare coefficients with their median."""
    k = np.arange(keep)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


def phash_of_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """uint64 phash of each (THUMB, THUMB) grey thumbnail of a (n, THUMB, THUMB) stack."""
    c = _dct_rows(THUMB, LOW)
    low = np.einsum("kx,nxy,ly->nkl", c, thumbs.astype(np.float64), c, optimize=True).reshape(len(thumbs), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    weights = (np.uint64(1) << np.arange(LOW * LOW - 1, -1, -1, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def reduced(im: Image.Image) -> Image.Image:
    """A normalised image box-reduced by an integer factor to >= DRAFT_SIDE px a side (what a
    JPEG draft decode does for JPEGs): the hashes then touch a few thousand pixels, not
    millions, and do not depend on the file's format."""
    factor = min(im.size) // DRAFT_SIDE
    return im.reduce(factor) if factor > 1 else im


def grey_thumb(im: Image.Image) -> np.ndarray:
    """THUMB × THUMB float grey thumbnail of a (reduced) normalised image."""
    return np.asarray(im.convert("L").resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.float64)


COLOUR_LEVELS = 4  # per channel: a 4×4×4 RGB histogram
COLOUR_BINS = COLOUR_LEVELS ** 3


def colour_signature(im: Image.Image) -> bytes:
    """Share of the pixels in each of the 64 RGB cells, × 255 rounded (one byte a cell). Crops and
    watermarks barely move it; another character or background does. L1 distance: `colour_l1`."""
    rgb = np.asarray(im.convert("RGB")).reshape(-1, 3) // (256 // COLOUR_LEVELS)
    cells = (rgb[:, 0].astype(np.int64) * COLOUR_LEVELS + rgb[:, 1]) * COLOUR_LEVELS + rgb[:, 2]
    counts = np.bincount(cells, minlength=COLOUR_BINS)
    return np.round(counts * (255 / max(1, counts.sum()))).astype(np.uint8).tobytes()


def colour_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """L1 distance (0..2) between rows of two (n, COLOUR_BINS) uint8 signature arrays."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(axis=1) / 255.0


def hash_image(data: bytes, *, exact_pixels: bool, perceptual: bool, max_pixels: int) -> tuple[ImageHashes, np.ndarray | None]:
    """(hashes, grey thumbnail or None): the thumbnail is hashed in batches by the caller."""
    md5 = hashlib.md5(data).hexdigest()
    pixels, thumb, colour = None, None, None
    try:
        if exact_pixels:
            im = normalise(decode(data, max_pixels=max_pixels, animated="first"), alpha="keep", background=_WHITE)
            pixels = _pixel_sha(im)
            small = reduced(_flatten(im)) if perceptual else None
        elif perceptual:
            im = decode(data, max_pixels=max_pixels, animated="first", draft=(DRAFT_SIDE, DRAFT_SIDE))
            small = reduced(normalise(im, alpha="composite", background=_WHITE))
        if perceptual:
            thumb, colour = grey_thumb(small), colour_signature(small)
    except Rejected as exc:
        return ImageHashes(md5, error=exc.reason), None
    return ImageHashes(md5, pixels, colour=colour), thumb


def _flatten(im: Image.Image) -> Image.Image:
    if im.mode != "RGBA":
        return im
    flat = Image.new("RGB", im.size, _WHITE)
    flat.paste(im, mask=im.getchannel("A"))
    return flat


def _pixel_sha(im: Image.Image) -> str:
    h = hashlib.sha256(f"{im.mode}:{im.size[0]}x{im.size[1]}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes (element-wise)."""
    return np.bitwise_count(np.bitwise_xor(a, b))
