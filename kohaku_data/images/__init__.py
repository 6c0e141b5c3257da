"""The lossless image stage: decode → normalise (sRGB, 8 bit) → bucket → one LANCZOS resize →
lossless WebP/PNG, every write verified by decoding it again.

Public API: `process_image`, `ImageResult`, `bucket_resolutions`, `choose_bucket` (see `stage.py`),
`run_images` (see `batch.py`).
"""

from kohaku_data.images.buckets import bucket_resolutions, choose_bucket
from kohaku_data.images.stage import REJECT_REASONS, ImageResult, process_image

__all__ = ["REJECT_REASONS", "ImageResult", "bucket_resolutions", "choose_bucket", "process_image"]
