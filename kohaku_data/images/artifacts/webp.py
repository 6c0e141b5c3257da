"""Lossy or lossless WebP, and a lossy file's rough quality, from the RIFF chunks and the VP8
frame header (RFC 6386 9.2-9.6: the boolean-coded header up to the base quantiser index).

libwebp's `-q` maps to the base quantiser index (0 finest .. 127 coarsest) through a content-
dependent curve (its segment strengths follow the image's detail), so the quality is rough:
the index of each segment (mean of the 4) is mapped back through QI_TO_QUALITY, measured with
libwebp (Pillow's encoder, method 4) on the sample generator's drawings.
"""

from __future__ import annotations

import struct

import numpy as np

# (mean base quantiser index, quality): libwebp 1.x through Pillow 13, method 4, on the sample
# generator's drawings (flat and grained, RGB and RGBA: within 0.5 of each other)
QI_TO_QUALITY = ((0.0, 100), (5.1, 95), (10.75, 90), (17.4, 85), (24.0, 80), (31.9, 75), (34.5, 70),
                 (40.25, 60), (46.5, 50), (53.4, 40), (61.75, 30), (71.5, 20), (85.1, 10), (127.0, 0))


def webp_kind(data: bytes) -> tuple[bool | None, bytes | None]:
    """(lossy?, the VP8 chunk payload if lossy) of a WebP file's bytes; (None, None) if the
    chunks cannot be read."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None, None
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if tag == b"VP8 ":
            return True, data[pos + 8:pos + 8 + size]
        if tag == b"VP8L":
            return False, None
        pos += 8 + size + (size & 1)
    return None, None


class _Bools:
    """VP8's boolean entropy decoder (RFC 6386 section 7), only what the frame header needs."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 2
        self.value = (data[0] << 8 | data[1]) if len(data) >= 2 else 0
        self.range, self.bits = 255, 0

    def bool(self, prob: int = 128) -> int:
        split = 1 + (((self.range - 1) * prob) >> 8)
        big = split << 8
        if self.value >= big:
            bit, self.range, self.value = 1, self.range - split, self.value - big
        else:
            bit, self.range = 0, split
        while self.range < 128:
            self.value, self.range, self.bits = self.value << 1, self.range << 1, self.bits + 1
            if self.bits == 8:
                self.bits = 0
                self.value |= self.data[self.pos] if self.pos < len(self.data) else 0
                self.pos += 1
        return bit

    def literal(self, n: int) -> int:
        out = 0
        for _ in range(n):
            out = out << 1 | self.bool()
        return out

    def signed(self, n: int) -> int:
        value = self.literal(n)
        return -value if self.bool() else value

    def optional_signed(self, n: int) -> int | None:
        return self.signed(n) if self.bool() else None


def base_quantiser(vp8: bytes) -> float | None:
    """Mean base quantiser index (0..127) over the frame's segments; None if not a keyframe."""
    if len(vp8) < 12 or vp8[0] & 1 or vp8[3:6] != b"\x9d\x01\x2a":
        return None
    d = _Bools(vp8[10:])
    d.literal(2)  # colour space, clamping
    segment_q: list[int | None] = [None] * 4
    absolute = False
    if d.bool():  # segmentation enabled
        update_map, update_data = d.bool(), d.bool()
        if update_data:
            absolute = bool(d.bool())
            segment_q = [d.optional_signed(7) for _ in range(4)]
            [d.optional_signed(6) for _ in range(4)]  # loop filter levels
        if update_map:
            [d.literal(8) if d.bool() else None for _ in range(3)]
    d.literal(1 + 6 + 3)  # filter type, level, sharpness
    if d.bool() and d.bool():  # loop filter deltas enabled and updated
        [d.optional_signed(6) for _ in range(8)]
    d.literal(2)  # DCT partitions
    base = d.literal(7)
    values = [base if q is None else (q if absolute else base + q) for q in segment_q]
    return float(np.clip(values, 0, 127).mean())


def webp_quality(qi: float) -> int:
    """Rough libwebp quality of a mean base quantiser index (QI_TO_QUALITY, interpolated)."""
    xs, ys = zip(*QI_TO_QUALITY)
    return int(round(float(np.interp(qi, xs, ys))))


def webp_settings(data: bytes) -> dict[str, object]:
    """webp_lossy and webp_quality of a WebP file's bytes; {} for other formats."""
    lossy, vp8 = webp_kind(data)
    if lossy is None:
        return {}
    if not lossy:
        return {"webp_lossy": False}
    qi = base_quantiser(vp8 or b"")
    return {"webp_lossy": True, "webp_quality": None if qi is None else webp_quality(qi)}
