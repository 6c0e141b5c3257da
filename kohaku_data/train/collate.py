"""Collate one bucket's samples: images stacked, SDXL size conditioning as tensors.

SDXL conditions the UNet on (original_size, crop_top_left, target_size). kdata stores images
already resized to their bucket, so a trainer that reads sizes from the stored file would
condition on the bucket size; here they come from the manifest: the true source size.
`time_ids` is the six numbers in the order SDXL's `add_time_ids` wants them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kohaku_data.train.errors import SamplerError

_SIZES = ("original_size", "crop_top_left", "target_size")
_FIXED = {"image", "key", "padded", *_SIZES}
_EMPTY = np.zeros((0, 0, 3), np.uint8)  # the image of a latents batch (stacked empty, then dropped)


class BucketCollate:
    """`collate_fn` for a DataLoader over `KdataDataset` with `BucketBatchSampler`.

    `dtype=None`: images stay uint8 (B, C, H, W); a float dtype gives values in [-1, 1] (what
    SD/SDXL VAEs take). Other fields come back as lists (captions, tags, the json fields).
    """

    def __init__(self, dtype: Any = None) -> None:
        self.dtype = dtype

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "latents" in samples[0]:  # KdataDataset(payload="latents"): no image in the samples
            return self._latents(samples)
        images = [_chw_array(s["image"]) for s in samples]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise SamplerError(f"one batch holds images of shapes {sorted(shapes)}: batch with "
                               f"BucketBatchSampler so every batch is one bucket.")
        # Stacked and scaled by numpy, then wrapped without a copy: torch's intra-op threads
        # spin against the DataLoader's processes and make a small stack 10-100x slower.
        stacked = np.stack(images)
        if self.dtype is not None and self.dtype != torch.uint8:
            scaled = stacked.astype(np.float32)
            scaled *= 1 / 127.5
            scaled -= 1.0
            image = torch.from_numpy(scaled).to(self.dtype)
        else:
            image = torch.from_numpy(stacked)
        out: dict[str, Any] = {
            "image": image,
            "key": torch.tensor([s["key"] for s in samples], dtype=torch.int64),
            "padded": torch.tensor([bool(s.get("padded", False)) for s in samples], dtype=torch.bool),
        }
        for name in _SIZES:
            out[name] = torch.tensor([list(s[name]) for s in samples], dtype=torch.int64)
        out["time_ids"] = torch.cat([out[name] for name in _SIZES], dim=1)
        for name in samples[0]:
            if name not in _FIXED:
                out[name] = [s.get(name) for s in samples]
        return out

    def _latents(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """`latents` (B, C, h, w) (and `latents_std`) in their stored dtype; the rest as for images."""
        import torch

        shapes = {tuple(s["latents"]["mean"].shape) for s in samples}
        if len(shapes) > 1:
            raise SamplerError(f"one batch holds latents of shapes {sorted(shapes)}: batch with "
                               f"BucketBatchSampler so every batch is one bucket.")
        out = {"latents": torch.stack([s["latents"]["mean"] for s in samples])}
        if "std" in samples[0]["latents"]:
            out["latents_std"] = torch.stack([s["latents"]["std"] for s in samples])
        rest = self([{**{k: v for k, v in s.items() if k != "latents"}, "image": _EMPTY} for s in samples])
        rest.pop("image")
        return {**rest, **out}


def _chw_array(image: Any) -> np.ndarray:
    """A CHW uint8 array from a torch tensor (CHW, no copy), a PIL image or an HWC array."""
    import torch

    if isinstance(image, torch.Tensor):
        return image.numpy()
    if isinstance(image, (bytes, bytearray)):
        raise SamplerError("the dataset gives image bytes: open it with decode='torch' to collate images.")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return array.transpose(2, 0, 1)
