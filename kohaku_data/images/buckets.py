"""Aspect-ratio buckets (NovelAI / kohya sd-scripts `make_bucket_resolutions` style).

For every width w = min_side, min_side + step, ... <= max_side the bucket height is the largest
multiple of `step` with w*h <= max_area and h <= max_side; a bucket is kept when h >= min_side,
w*h >= min_area and the long/short ratio <= max_aspect. Both orientations and the largest square
are included. An image goes to the bucket whose log aspect ratio is nearest its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kohaku_data.config import BucketPreset


def bucket_resolutions(preset: BucketPreset) -> list[tuple[int, int]]:
    """Sorted (width, height) buckets of a preset."""
    step = preset.step
    resos: set[tuple[int, int]] = set()
    square = min(math.isqrt(preset.max_area) // step * step, preset.max_side // step * step)
    if _valid(square, square, preset):
        resos.add((square, square))
    first = -(-preset.min_side // step) * step
    for w in range(first, preset.max_side + 1, step):
        h = min(preset.max_side, preset.max_area // w) // step * step
        if _valid(w, h, preset):
            resos.update({(w, h), (h, w)})
    return sorted(resos)


def _valid(w: int, h: int, p: BucketPreset) -> bool:
    return (
        h >= p.min_side and w >= p.min_side and max(w, h) <= p.max_side
        and p.min_area <= w * h <= p.max_area and max(w, h) / min(w, h) <= p.max_aspect
    )


def choose_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Bucket of nearest aspect ratio (|log(w/h) - log(bw/bh)|); ties → larger area, then wider."""
    if not buckets:
        raise ValueError("no buckets to choose from")
    w, h = size
    ratio = math.log(w / h)
    return min(buckets, key=lambda b: (abs(ratio - math.log(b[0] / b[1])), -b[0] * b[1], -b[0]))
