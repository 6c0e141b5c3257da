"""Latent members (`kdata latents`): their bytes, and the reader's index of them.

A latent set lies in `DATASET/latents/` (see docs/latents.md; the set of an `[image] levels` level
in `DATASET/latents/<level>/`, laid out the same): shards `NAME-latents-000000.tar`
whose members `<key>.latent.safetensors` each hold one sample's `mean` (and, by setting, `std`)
as a (C, h, w) tensor in safetensors' own format, plus `manifest.parquet` (key, shard, offset,
size, image_sha256, …), `index.json` and `latents.lock` (written last: the set is complete).

The member bytes are written here, not by the safetensors library: its header order follows a
hash map, and kdata's bytes must be the same on every run. The layout is the public one (8-byte
little-endian header length, JSON header padded with spaces to 8 bytes, raw little-endian data),
so `safetensors.torch.load(member_bytes)` reads a member too.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import polars as pl

from kohaku_data.train.errors import ReaderError

LATENT_DIR = "latents"
LATENT_LOCK = "latents.lock"
LATENT_SUFFIX = "latent.safetensors"
LATENT_INDEX_COLUMNS = ("key", "shard", "offset", "size", "image_sha256")
_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
_HEAD = struct.Struct("<Q")


def latent_dir(level: str | None = None) -> str:
    """The dataset-relative folder of the latent set of `level` (None: the main images)."""
    return LATENT_DIR if level is None else f"{LATENT_DIR}/{level}"


def member_name(key: int) -> str:
    return f"{key}.{LATENT_SUFFIX}"


def pack_member(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """safetensors bytes of {name: (dtype "F16"|"BF16"|"F32", shape, raw little-endian data)},
    names in sorted order, header JSON with sorted keys: the same tensors give the same bytes."""
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([_HEAD.pack(len(head)), head, *(tensors[n][2] for n in sorted(tensors))])


def parse_member(data: bytes) -> dict[str, Any]:
    """{name: torch tensor} of a latent member (bf16 has no numpy dtype, so torch it is)."""
    import torch

    try:
        (length,) = _HEAD.unpack_from(data)
        header = json.loads(data[_HEAD.size:_HEAD.size + length])
        base = _HEAD.size + length
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            start, end = spec["data_offsets"]
            buffer = bytearray(data[base + start:base + end])
            out[name] = torch.frombuffer(buffer, dtype=getattr(torch, _DTYPES[spec["dtype"]])).reshape(spec["shape"])
        return out
    except (struct.error, ValueError, KeyError, RuntimeError) as exc:
        raise ReaderError(f"a latent member is not a safetensors blob kdata wrote ({exc}): run kdata verify.") from None


class LatentIndex:
    """Where each sample's latent member lies, aligned with the dataset's sample order; refuses a
    latent set that is incomplete or made from other pixels than the dataset's images now hold."""

    def __init__(self, files: Any, location: str, keys: pl.Series, image_sha256: pl.Series,
                 level: str | None = None) -> None:
        folder = latent_dir(level)
        lock = f"{folder}/{LATENT_LOCK}"
        again = f"kdata latents {location} --vae PATH" + (f" --level {level}" if level is not None else "")
        if not files.exists(lock):
            raise ReaderError(f"{location} has no complete latent set ({lock} is missing): run `{again}` first.")
        with files.open(lock) as f:
            self.lock = json.loads(f.read())
        frame = files.read_parquet(f"{folder}/manifest.parquet", list(LATENT_INDEX_COLUMNS))
        want = pl.DataFrame({"key": keys, "want_sha256": image_sha256})
        joined = want.join(frame, on="key", how="left", maintain_order="left")
        bad = joined.filter(pl.col("image_sha256").is_null() | (pl.col("image_sha256") != pl.col("want_sha256")))
        if bad.height:
            raise ReaderError(f"{bad.height} samples of {location} have no latents of their current image "
                              f"(first key {bad['key'][0]}): run `{again}` again.")
        self.shards = [f"{folder}/{s}" for s in joined["shard"].to_list()]
        self.offsets = joined["offset"].to_numpy()
        self.sizes = joined["size"].to_numpy()

    def read(self, files: Any, i: int) -> dict[str, Any]:
        return parse_member(files.read(self.shards[i], int(self.offsets[i]), int(self.sizes[i])))
