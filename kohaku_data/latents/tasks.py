"""One latent task: the samples of one image shard → one latent shard and its part record.

A task reads each stored image by byte range from its image shard (the exact pixels of the
shard member, in its bucket), encodes them with the VAE in batches fixed by the data (bucket by
bucket in key order, `batch_size` at a time: never by worker count, which would change the
bytes), and writes `latents/NAME-latents-000000.tar` (+ member index) then the part record
`latents/.parts/NAME-latents-000000.json` (last: the commit marker that a resumed run reuses).
The tar is written as the build writes its shards (`assembly.packing.write_shard`): straight
into the dataset, on a disk or in a bucket, committed whole and create-only (an earlier run's
tar of other bytes is replaced, a twin task's of the same bytes kept).

Latents are the latent distribution's mean (and std by setting), unscaled, computed in fp32 and
cast to fp16 or bf16. RGBA images are encoded from their RGB channels (PIL's convert("RGB"), as
sd-scripts loads them). On CPU the torch thread count is fixed by the spec, since it changes the
bytes; on CUDA cuDNN runs deterministic algorithms.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from kohaku_data import storage
from kohaku_data.assembly.packing import ShardJob, write_shard
from kohaku_data.assembly.shards import ShardInfo, member_bytes, tar_size
from kohaku_data.errors import KdataError
from kohaku_data.latents.vae import load_vae
from kohaku_data.train.latents import member_name, pack_member

LatentDtype = Literal["fp16", "bf16"]
_TORCH_DTYPES = {"fp16": ("float16", "F16"), "bf16": ("bfloat16", "BF16")}
PARTS = ".parts"


class DeviceMissing(KdataError):
    """A task was asked for a GPU that its worker does not have (never a silent CPU fallback)."""


@dataclass(frozen=True)
class LatentSpec:
    """Everything that decides a latent's bytes (its hash names what a part was made with)."""

    vae_path: str
    vae_sha256: str
    vae_config: str | None  # a config.json for a single .safetensors file (default: SDXL's)
    dtype: LatentDtype = "fp16"
    std: bool = False  # store the distribution's std beside its mean
    device: str = "cpu"  # "cpu" or "cuda" (resolved by the driver: never "auto" here)
    batch_size: int = 4
    threads: int = 1  # torch CPU threads per task: part of the bytes on CPU

    def identity(self) -> dict[str, Any]:
        """What the bytes depend on (the path may move; the hash may not)."""
        return {"vae_sha256": self.vae_sha256, "dtype": self.dtype, "std": self.std, "device": self.device,
                "batch_size": self.batch_size, "threads": self.threads if self.device == "cpu" else None}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SampleRef:
    key: int
    bucket: str  # "WxH": batches never mix buckets
    image_offset: int
    image_size: int
    image_sha256: str
    reuse: tuple[str, int, int, str] | None = None  # (latent shard path, offset, size, sha256) of an earlier run


@dataclass(frozen=True)
class LatentTask:
    index: int
    image_shard: str  # path or URL of the image shard
    latent_dir: str  # path or URL of DATASET/latents (or of a level's set)
    url: str  # the latent shard's file name
    samples: tuple[SampleRef, ...]
    spec: LatentSpec


@dataclass(frozen=True)
class LatentDone:
    index: int
    url: str
    info: ShardInfo
    rows: list[dict[str, Any]]
    device: str  # what the task actually ran on, e.g. "cpu" or "cuda:NVIDIA H100"
    versions: dict[str, str]
    encoded: int
    reused: int


def latent_versions() -> dict[str, str]:
    """The libraries that decide latent bytes besides the VAE and the device."""
    import importlib.metadata

    import torch

    return {"torch": torch.__version__, "diffusers": importlib.metadata.version("diffusers"),
            "safetensors": importlib.metadata.version("safetensors")}


def part_path(latent_dir: str, url: str) -> str:
    return str(storage.join(latent_dir, PARTS, url.removesuffix(".tar") + ".json"))


def run_latent_task(task: LatentTask) -> LatentDone:
    """Encode (or reuse) every sample of the task, write its latent shard, then its part."""
    device = _device(task.spec.device)
    members, encoded = _latent_members(task, device)
    part = part_path(task.latent_dir, task.url)
    storage.remove(part)  # the commit marker goes first: a part never describes another run's tar
    written = write_shard(_shard_job(task, members))
    rows = [{"key": ref.key, "shard": task.url, "member": name, "offset": offset, "size": size,
             "sha256": hashlib.sha256(data).hexdigest(), "image_sha256": ref.image_sha256, "bucket": ref.bucket}
            for ref, data, placement in zip(task.samples, members, written.placements)
            for name, (offset, size) in placement.items()]
    done = LatentDone(task.index, task.url, written.info, rows, _device_name(device), latent_versions(),
                      encoded, len(task.samples) - encoded)
    record = {"spec_sha256": task.spec.sha256(), "info": asdict(written.info), "rows": rows,
              "device": done.device, "versions": done.versions}
    storage.commit_bytes(part, json.dumps(record, sort_keys=True).encode(), durable=False)
    return done


def _shard_job(task: LatentTask, members: list[bytes]) -> ShardJob:
    """The build's shard job for one member a sample: its size is known before a byte is written,
    so the member index's git sha1 is hashed on the way (a tar in a bucket is never read back)."""
    samples = tuple(((member_name(ref.key), data),) for ref, data in zip(task.samples, members))
    size = tar_size(sum(member_bytes(len(data)) for data in members))
    return ShardJob(task.index, str(storage.join(task.latent_dir, task.url)), samples, size)


def _latent_members(task: LatentTask, device: str) -> tuple[list[bytes], int]:
    """Each sample's member bytes, in task order; (members, how many were encoded now)."""
    out: dict[int, bytes] = {}
    for ref in task.samples:
        data = _reused(ref)
        if data is not None:
            out[ref.key] = data
    todo = [ref for ref in task.samples if ref.key not in out]
    for batch in batches(todo, task.spec.batch_size):
        out.update(zip([r.key for r in batch], encode_batch(task, batch, device)))
    return [out[ref.key] for ref in task.samples], len(todo)


def _reused(ref: SampleRef) -> bytes | None:
    """The earlier run's member, if it is still there with its sha256 (else it is encoded again)."""
    if ref.reuse is None:
        return None
    path, offset, size, sha256 = ref.reuse
    try:
        data = storage.read_range(path, offset, size)
    except FileNotFoundError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def batches(refs: list[SampleRef], size: int) -> list[list[SampleRef]]:
    """Bucket by bucket (first appearance, key order within), `size` at a time: fixed by the data."""
    groups: dict[str, list[SampleRef]] = {}
    for ref in refs:
        groups.setdefault(ref.bucket, []).append(ref)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def encode_batch(task: LatentTask, batch: list[SampleRef], device: str) -> list[bytes]:
    """The member bytes of one batch of same-bucket images."""
    import torch

    spec = task.spec
    pixels = torch.from_numpy(pixel_batch([read_image(task.image_shard, r) for r in batch]))
    vae = load_vae(spec.vae_path, spec.vae_sha256, spec.vae_config, device)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(spec.threads)
    try:
        with torch.inference_mode():
            dist = vae.encode(pixels.to(device)).latent_dist
            tensors = {"mean": dist.mean} | ({"std": dist.std} if spec.std else {})
    finally:
        torch.set_num_threads(threads)
    torch_dtype, st_dtype = _TORCH_DTYPES[spec.dtype]
    cast = {n: t.to(getattr(torch, torch_dtype)).cpu().contiguous() for n, t in tensors.items()}
    return [pack_member({n: (st_dtype, tuple(t[i].shape), _raw(t[i])) for n, t in cast.items()})
            for i in range(len(batch))]


def _raw(tensor: Any) -> bytes:
    import torch

    return tensor.view(torch.int16).numpy().tobytes()  # fp16/bf16 bits, little-endian on every torch host


def read_image(shard: str, ref: SampleRef) -> bytes:
    data = storage.read_range(shard, ref.image_offset, ref.image_size)
    if hashlib.sha256(data).hexdigest() != ref.image_sha256:
        raise KdataError(f"sample {ref.key} in {storage.display(shard)} differs from the manifest's sha256: "
                         "run `kdata verify` on the dataset, repair it, then make the latents again.")
    return data


def pixel_batch(images: list[bytes]) -> Any:
    """(B, 3, H, W) float32 in [-1, 1] from stored image bytes (alpha dropped as sd-scripts does)."""
    import numpy as np
    from PIL import Image

    arrays = []
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    stacked = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32)
    return np.ascontiguousarray(stacked / np.float32(127.5) - np.float32(1.0))


def _device(kind: str) -> str:
    import torch

    if kind == "cpu":
        return "cpu"
    if kind == "cuda" and torch.cuda.is_available():
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        return "cuda"
    raise DeviceMissing(f"a latent task asked for device {kind!r}, but this worker has no CUDA GPU: "
                        "run with --device cpu, or on machines with GPUs.")


def _device_name(device: str) -> str:
    import torch

    return "cpu" if device == "cpu" else f"cuda:{torch.cuda.get_device_name()}"
