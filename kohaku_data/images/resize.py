"""One resize from the decoded original: scale to COVER the bucket, centre-crop by the least.

The crop is folded into the resize (`Image.resize(size, box=...)`): the box is the exact source
region that maps onto the bucket, so the result equals "scale, then crop" without a second
resampling and without rounding the scaled size into the pixels. Pillow premultiplies alpha for
RGBA resizes (no dark fringes). `linear_light=True` resizes in linear light (float32, per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from kohaku_data.images.errors import Rejected


@dataclass(frozen=True)
class Plan:
    bucket: tuple[int, int]  # output (width, height)
    scale: float  # source → scaled
    crop_box: tuple[int, int, int, int]  # in the scaled image's pixels
    source_box: tuple[float, float, float, float]  # the same region in source pixels


def plan_cover(size: tuple[int, int], bucket: tuple[int, int]) -> Plan:
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    # The side that decides the scale matches exactly; the other is >= the bucket (never less).
    sw = bw if bw / w >= bh / h else max(bw, round(w * scale))
    sh = bh if bh / h > bw / w else max(bh, round(h * scale))
    left, top = (sw - bw) // 2, (sh - bh) // 2
    crop = (left, top, left + bw, top + bh)
    box = (left / scale, top / scale, min(w, (left + bw) / scale), min(h, (top + bh) / scale))
    return Plan(bucket, scale, crop, box)


def plan_native(size: tuple[int, int], step: int) -> Plan:
    """too_small = "native": no resampling; centre-crop to multiples of `step`."""
    w, h = size
    bw, bh = w // step * step, h // step * step
    if bw == 0 or bh == 0:
        raise Rejected("too_small", f"{w}x{h} is smaller than one step ({step}) per side")
    left, top = (w - bw) // 2, (h - bh) // 2
    crop = (left, top, left + bw, top + bh)
    return Plan((bw, bh), 1.0, crop, tuple(float(v) for v in crop))


def apply(im: Image.Image, plan: Plan, *, reducing_gap: float | None, linear_light: bool) -> Image.Image:
    if plan.scale == 1.0 and all(float(v).is_integer() for v in plan.source_box):
        return im.crop(plan.crop_box)  # nothing to resample: copy the pixels exactly
    if linear_light:
        return _resize_linear(im, plan)
    return im.resize(plan.bucket, Image.Resampling.LANCZOS, box=plan.source_box, reducing_gap=reducing_gap)


# sRGB <-> linear (IEC 61966-2-1), exact curves in float64, applied via float32 arrays.
_SRGB_TO_LINEAR = np.where(
    (v := np.arange(256) / 255.0) <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4
).astype(np.float32)


def _linear_to_srgb_u8(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin.astype(np.float64), 0.0, 1.0)
    s = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return np.clip(np.rint(s * 255.0), 0, 255).astype(np.uint8)


def _resize_f(channel: np.ndarray, plan: Plan) -> np.ndarray:
    out = Image.fromarray(channel, "F").resize(plan.bucket, Image.Resampling.LANCZOS, box=plan.source_box)
    return np.asarray(out)


def _resize_linear(im: Image.Image, plan: Plan) -> Image.Image:
    a = np.asarray(im)
    lin = _SRGB_TO_LINEAR[a[..., :3]]
    if im.mode == "RGBA":  # premultiply in linear light so transparent colour does not bleed
        alpha = a[..., 3].astype(np.float32) / 255.0
        lin *= alpha[..., None]
        alpha_r = _resize_f(alpha, plan)
        rgb = np.stack([_resize_f(np.ascontiguousarray(lin[..., c]), plan) for c in range(3)], axis=-1)
        safe = np.where(alpha_r > 1e-6, alpha_r, 1.0)
        rgb = np.where(alpha_r[..., None] > 1e-6, rgb / safe[..., None], 0.0)
        a8 = np.clip(np.rint(alpha_r.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([_linear_to_srgb_u8(rgb), a8]), "RGBA")
    rgb = np.stack([_resize_f(np.ascontiguousarray(lin[..., c]), plan) for c in range(3)], axis=-1)
    return Image.fromarray(_linear_to_srgb_u8(rgb), "RGB")
