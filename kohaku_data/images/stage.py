"""`process_image`: bytes in → one verified lossless output or a clear rejection. Never raises on
bad input; no file I/O (it runs in any worker process); the result pickles.

Rejection reasons (`ImageResult.reason`):
  empty_file          the input has 0 bytes
  unidentified        not a format Pillow (or the AVIF plugin) can read
  truncated           the pixel data ends early (truncated images are never accepted)
  decompression_bomb  more than config.max_pixels pixels, or more than Pillow's
                      Image.MAX_IMAGE_PIXELS (its DecompressionBombWarning is an error here), so
                      the effective limit is the smaller of the two (default ~89.5 MP)
  animated_skipped    more than one frame and config.animated = "skip"
  decode_error        any other failure while reading the file
  exif_error          the EXIF orientation cannot be read (the upright image is unknown)
  unsupported_mode    a pixel mode that cannot become RGB/RGBA
  too_small           would need upscaling to reach its bucket (config.too_small = "reject"),
                      or smaller than one `step` per side with too_small = "native"
  encode_error        the encoder failed
  verify_mismatch     the stored bytes do not decode to exactly the intended pixels
  internal_error      an unexpected exception in the stage itself (a bug: please report)
The batch runner adds: read_error, duplicate_output, unsafe_member.

too_small = "native": the image is not resampled; it is centre-cropped to multiples of the
bucket step and stored at that size (its `bucket` is that size, which may not be in the list).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from kohaku_data.config import ImageConfig
from kohaku_data.images import resize
from kohaku_data.images.artifacts import measure_artifacts
from kohaku_data.images.buckets import bucket_resolutions, choose_bucket
from kohaku_data.images.decode import decode
from kohaku_data.images.encode import encode, verify
from kohaku_data.images.errors import Rejected
from kohaku_data.images.normalise import normalise

__all__ = ["REJECT_REASONS", "ImageResult", "bucket_resolutions", "choose_bucket", "process_image", "process_levels"]

REJECT_REASONS = (
    "empty_file", "unidentified", "truncated", "decompression_bomb", "animated_skipped", "decode_error",
    "exif_error", "unsupported_mode", "too_small", "encode_error", "verify_mismatch", "internal_error",
)


@dataclass(frozen=True)
class ImageResult:
    status: Literal["ok", "rejected"]
    reason: str | None = None
    detail: str | None = None
    source_format: str | None = None
    source_mode: str | None = None
    source_size: tuple[int, int] | None = None  # after EXIF orientation
    bucket: tuple[int, int] | None = None  # (width, height)
    crop_box: tuple[int, int, int, int] | None = None  # scaled image's pixels (l, t, r, b)
    width: int | None = None
    height: int | None = None
    output_format: Literal["webp", "png"] | None = None
    mode: str | None = None  # RGB or RGBA stored
    data: bytes | None = None
    sha256: str | None = None
    # source artifact measures (kohaku_data/images/artifacts.FIELDS), None before decoding
    artifacts: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def process_image(data: bytes, config: ImageConfig, *, name: str = "") -> ImageResult:
    """Decode, normalise, bucket, resize once, encode losslessly, verify. `name` only labels details."""
    source: dict = {}
    try:
        return _process(data, config, source)
    except Rejected as rej:
        return ImageResult("rejected", rej.reason, _label(name, rej.detail), **source)
    except MemoryError:
        return ImageResult("rejected", "decode_error", _label(name, "out of memory"), **source)
    except Exception as exc:  # the contract is "never raises": a bug becomes a visible rejection
        return ImageResult("rejected", "internal_error", _label(name, f"{type(exc).__name__}: {exc}"), **source)


def process_levels(data: bytes, configs: list[ImageConfig], *, name: str = "") -> list[ImageResult]:
    """`process_image` for several image configs that differ only in their bucket (a resolution
    ladder: `ImageConfig.level_configs`), from ONE decode and normalise: each result is exactly
    what `process_image(data, config)` gives for its config (one LANCZOS pass from the
    normalised original, encoded, verified). A failure before the resize rejects every level."""
    if len(configs) == 1:
        return [process_image(data, configs[0], name=name)]
    source: dict = {}
    try:
        im = _decoded(data, configs[0], source)
    except Rejected as rej:
        return [ImageResult("rejected", rej.reason, _label(name, rej.detail), **source)] * len(configs)
    except MemoryError:
        return [ImageResult("rejected", "decode_error", _label(name, "out of memory"), **source)] * len(configs)
    except Exception as exc:
        return [ImageResult("rejected", "internal_error", _label(name, f"{type(exc).__name__}: {exc}"),
                            **source)] * len(configs)
    results = []
    for config in configs:
        try:
            results.append(_finish(im, config, source))
        except Rejected as rej:
            results.append(ImageResult("rejected", rej.reason, _label(name, rej.detail), **source))
        except MemoryError:
            results.append(ImageResult("rejected", "decode_error", _label(name, "out of memory"), **source))
        except Exception as exc:
            results.append(ImageResult("rejected", "internal_error", _label(name, f"{type(exc).__name__}: {exc}"),
                                       **source))
    return results


def internal_error_trace(data: bytes, config: ImageConfig) -> str:
    """The traceback behind an `internal_error` result, from running the stage again unguarded
    (it is deterministic): what a bug report needs, kept out of the rejects' one-line detail.
    "" when the stage does not fail with an unexpected exception this time."""
    import traceback

    try:
        _process(data, config, {})
    except (Rejected, MemoryError):
        return ""
    except Exception:
        return traceback.format_exc()
    return ""


def _label(name: str, detail: str) -> str:
    return f"{name}: {detail}" if name else detail


def _process(data: bytes, config: ImageConfig, source: dict) -> ImageResult:
    return _finish(_decoded(data, config, source), config, source)


def _decoded(data: bytes, config: ImageConfig, source: dict) -> Image.Image:
    """Decode and normalise (the part every level shares); fills `source`."""
    im = decode(data, max_pixels=config.max_pixels, animated=config.animated)
    source.update(source_format=im.format, source_mode=im.mode, source_size=im.size)
    source.update(artifacts=measure_artifacts(im, data))  # on the original, before any change
    return normalise(im, alpha=config.alpha, background=config.background)


def _finish(im: Image.Image, config: ImageConfig, source: dict) -> ImageResult:
    """Bucket, resize once, encode, verify one level from the normalised original `im`."""
    plan = _plan(im.size, config, source["artifacts"].get("upscale_factor"))
    out = _opaque_as_rgb(resize.apply(im, plan, reducing_gap=config.reducing_gap, linear_light=config.linear_light))
    fmt, stored = encode(out, config.codec_preset())
    verify(stored, out)
    return ImageResult(
        "ok", None, None, **source, bucket=plan.bucket, crop_box=plan.crop_box,
        width=out.width, height=out.height, output_format=fmt, mode=out.mode,
        data=stored, sha256=hashlib.sha256(stored).hexdigest(),
    )


def _opaque_as_rgb(out: Image.Image) -> Image.Image:
    """The crop can cut away every transparent pixel: WebP then stores (and decodes) RGB, so the
    intended image is RGB too (same pixels, nothing lost), as normalise does for opaque sources."""
    if out.mode == "RGBA" and out.getchannel("A").getextrema() == (255, 255):
        return out.convert("RGB")
    return out


def _plan(size: tuple[int, int], config: ImageConfig, upscaled: float | None = None) -> resize.Plan:
    """With `effective_resolution`, a source measured as upscaled x`upscaled` needs its bucket
    from its effective size: too small there is too small (native: stored at that size)."""
    preset = config.bucket_preset()
    bucket = choose_bucket(size, bucket_resolutions(preset))
    plan = resize.plan_cover(size, bucket)
    factor = upscaled if config.effective_resolution and upscaled and upscaled > 1.0 else 1.0
    if plan.scale * factor <= 1.0 or config.upscale:
        return plan
    w, h = size
    if config.too_small == "native":
        return _native(size, preset.step, factor)
    effective = f" (effective {round(w / factor)}x{round(h / factor)}: upscaled x{factor:g})" if factor > 1 else ""
    raise Rejected("too_small", f"{w}x{h}{effective} needs upscaling x{plan.scale * factor:.3f} to bucket "
                                f"{bucket[0]}x{bucket[1]}")


def _native(size: tuple[int, int], step: int, factor: float) -> resize.Plan:
    """Native size, or for an upscaled source its effective size (one LANCZOS reduction), cut
    to multiples of `step`."""
    if factor <= 1.0:
        return resize.plan_native(size, step)
    w, h = size
    target = (round(w / factor) // step * step, round(h / factor) // step * step)
    if min(target) < step:
        raise Rejected("too_small", f"{w}x{h} upscaled x{factor:g}: effective size under one step ({step}) a side")
    return resize.plan_cover(size, target)
