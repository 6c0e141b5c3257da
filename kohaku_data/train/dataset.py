"""`KdataDataset`: a map-style reader of a built dataset, one byte range per sample.

`manifest.parquet` records, per sample, the byte offset and size of each member's data inside
its shard (`image_offset`/`image_size`, `txt_…`, `json_…`). A sample's three members are
adjacent in the tar, so `ds[i]` is one read of the span from the first member's data to the last
one's end, then slicing: no tar scan, and the same code for a local folder and an fsspec URL.

Only the columns indexing needs are loaded up front (ints and short strings), so opening a
million-sample dataset takes well under a second; `ds.manifest`, the full frame, is read on
first use. Row i of `ds.manifest` is sample i, and sample order is the manifest's (key order).

SDXL conditioning comes from the manifest, not from the stored image: `original_size` is the
(h, w) of the *source* file, `crop_top_left` the (top, left) of the crop in the scaled source,
`target_size` the (h, w) of the stored image (its bucket).
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import numpy as np
import polars as pl

from kohaku_data.train.errors import ReaderError
from kohaku_data.train.ranges import RangeFiles

Decode = Literal["pil", "numpy", "torch", "bytes"]
Payload = Literal["image", "latents"]
DECODES = ("pil", "numpy", "torch", "bytes")
MANIFEST = "manifest.parquet"  # the name kohaku_data.assembly writes (not imported: no build deps here)
MEMBERS = ("image", "txt", "json")
OFFSET_COLUMNS = tuple(f"{m}_{part}" for m in MEMBERS for part in ("offset", "size"))
INDEX_COLUMNS = ("key", "shard", "bucket", "width", "height", "crop_left", "crop_top",
                 "source_width", "source_height", *OFFSET_COLUMNS)
KEEP_SEPARATOR = "|||"
# `[image] levels`: a build's extra resolution levels have these columns suffixed `@<level>`;
# `level=` reads them in place of the main image's (the manifest's other columns are shared)
LEVEL_COLUMNS = ("image", "format", "width", "height", "bucket", "crop_left", "crop_top", "crop_right",
                 "crop_bottom", "image_bytes", "sha256", "image_offset", "image_size")
_SPAN_SLACK = 4 * 1024  # headers and padding between adjacent members: 3 x (512 + <512) bytes


class KdataDataset:
    """Map-style dataset over a kdata build: `len(ds)`, `ds[i]` -> a dict (see `__getitem__`).

    `decode`: "pil" (PIL image), "numpy" (HxWxC uint8), "torch" (CxHxW uint8 tensor) or "bytes"
    (the stored file). `mode`: the PIL mode images are converted to ("RGB"; None keeps the
    stored RGB/RGBA). `keep_separator`: where `caption_parts` splits the caption (None: no kept
    part). Works with any DataLoader `num_workers`: handles are reopened in each worker.
    """

    def __init__(self, location: str, decode: Decode = "pil", *, mode: str | None = "RGB",
                 keep_separator: str | None = KEEP_SEPARATOR, caption_policy: Any = None,
                 cache: Any = None, payload: Payload = "image", level: str | None = None) -> None:
        if decode not in DECODES:
            raise ReaderError(f"decode={decode!r} is not one of {', '.join(DECODES)}: pick one of them.")
        if payload not in ("image", "latents"):
            raise ReaderError(f"payload={payload!r} is not image or latents: pick one of them.")
        if decode == "torch":
            _require_torch()
        self.location, self.decode, self.mode, self.keep_separator = str(location), decode, mode, keep_separator
        # `level`: one of the build's `[image] levels` (its member, bucket, crop, target size);
        # None: the main image. The sampler then buckets by that level's buckets.
        self.level = level
        # train/captions.CaptionPolicy: `caption` drawn per (seed, epoch, key); the stored one stays in
        # `stored_caption`. The epoch comes with the sampler's index, else `self.epoch`.
        self.caption_policy, self.epoch = caption_policy, 0
        self.files = RangeFiles(self.location)
        # train/shard_cache.ShardCache: shards are read from whole local copies (fetched once each)
        # instead of one ranged request per sample; the manifest still comes from `location`.
        self.shards = cache if cache is not None else self.files
        if cache is not None:
            from kohaku_data.train.shard_cache import cache_of

            cache_of(self)  # a cache of another dataset would serve its same-named shards: refused
        self._index = self._read_index()
        self._manifest: pl.DataFrame | None = None
        # Plain arrays: one row lookup per sample is then a few numpy reads, not a polars row.
        cols = {c: self._index[c].to_numpy() for c in INDEX_COLUMNS if c not in ("shard", "bucket")}
        self._cols = cols
        self._span_start = np.minimum.reduce([cols[f"{m}_offset"] for m in MEMBERS])
        self._span_end = np.maximum.reduce([cols[f"{m}_offset"] + cols[f"{m}_size"] for m in MEMBERS])
        # kdata writes a sample's members one after another (a header and padding between them);
        # a manifest whose members lie apart is read member by member instead of one wide span.
        data = sum(cols[f"{m}_size"] for m in MEMBERS)
        self._one_span = (self._span_end - self._span_start) <= data + _SPAN_SLACK
        self._shard_names, self._shard_code = factorize(self._index["shard"])
        # payload="latents" (train/latents.py): `latents` {"mean"[, "std"]: (C, h, w) tensors} instead of `image`
        self.payload, self.latents = payload, None
        if payload == "latents":
            from kohaku_data.train.latents import LatentIndex

            _require_torch()
            self.latents = LatentIndex(self.files, self.location, self._index["key"], self.column("sha256"),
                                       self.level)

    # -- manifest ----------------------------------------------------------------------------------
    def _read_index(self) -> pl.DataFrame:
        if not self.files.exists(MANIFEST):
            raise ReaderError(f"{self.location} has no {MANIFEST}: point KdataDataset at the folder "
                              f"`kdata build` wrote (shards, manifest.parquet, index.json).")
        schema = self._schema()
        if self.level is not None and f"bucket@{self.level}" not in schema:
            have = [c.split("@", 1)[1] for c in schema if c.startswith("bucket@")]
            raise ReaderError(f"level={self.level!r} is not a level of {self.location} (its levels: "
                              f"{', '.join(have) or 'none, only the main image'}): pick one of them or None.")
        missing = [c for c in INDEX_COLUMNS if c not in schema]
        if missing:
            raise ReaderError(f"{MANIFEST} lacks {', '.join(missing)}: the dataset was built before "
                              f"member offsets were recorded; rebuild it with this kdata version.")
        frame = self._read_manifest([self._name(c) for c in INDEX_COLUMNS])
        frame = frame.rename({self._name(c): c for c in INDEX_COLUMNS if self._name(c) != c})
        nulls = [c for c in OFFSET_COLUMNS if frame[c].null_count()]
        if nulls:
            raise ReaderError(f"{MANIFEST} has samples without {nulls[0]}: rebuild the dataset.")
        return frame

    def _name(self, column: str) -> str:
        """The manifest column holding `column` at this dataset's level."""
        return f"{column}@{self.level}" if self.level is not None and column in LEVEL_COLUMNS else column

    def _schema(self) -> dict[str, pl.DataType]:
        return self.files.parquet_schema(MANIFEST)

    def _read_manifest(self, columns: list[str] | None = None) -> pl.DataFrame:
        """Columns of the manifest; the others are never read (RangeFiles.read_parquet)."""
        return self.files.read_parquet(MANIFEST, columns)

    @property
    def manifest(self) -> pl.DataFrame:
        """The whole manifest (read on first use); row i is sample i."""
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def column(self, name: str) -> pl.Series:
        """One manifest column, without loading the whole manifest when it is an index column."""
        if name in self._index.columns:
            return self._index[name]
        stored = self._name(name)
        if self._manifest is not None:
            return self._manifest[stored].alias(name)
        if stored not in self._schema():
            raise ReaderError(f"{MANIFEST} has no column {stored!r}: name one of its columns.")
        return self._read_manifest([stored])[stored].alias(name)

    def __len__(self) -> int:
        return self._index.height

    # -- samples -----------------------------------------------------------------------------------
    def read_members(self, i: int) -> dict[str, bytes]:
        """The raw bytes of sample i's image, txt and json members (one range read)."""
        c = self._cols
        shard = self._shard_names[self._shard_code[i]]
        where = {m: (int(c[f"{m}_offset"][i]), int(c[f"{m}_size"][i])) for m in MEMBERS}
        if not self._one_span[i]:
            return {m: self.shards.read(shard, offset, size) for m, (offset, size) in where.items()}
        start, end = int(self._span_start[i]), int(self._span_end[i])
        span = self.shards.read(shard, start, end - start)
        return {m: span[offset - start:offset - start + size] for m, (offset, size) in where.items()}

    def __getitem__(self, i: int) -> dict[str, Any]:
        """`key`, `image`, `caption`, `caption_parts` (kept, rest), `original_size` (h, w of the
        source), `crop_top_left` (top, left), `target_size` (h, w stored), `padded` (True when a
        sampler repeated this entry to fill a batch), then the fields of the sample's json (the
        keys above win: e.g. the json's `original_size` is (w, h))."""
        index = int(i)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is out of range for {len(self)} samples")
        members = self.read_members(index)
        c = self._cols
        caption = members["txt"].decode("utf-8")
        item = json.loads(members["json"])
        payload = ({"latents": self.latents.read(self.files, index)} if self.latents is not None
                   else {"image": self._decode(members["image"])})
        item.update(
            key=int(c["key"][index]),
            **payload,
            caption=caption,
            caption_parts=split_caption(caption, self.keep_separator),
            original_size=(int(c["source_height"][index]), int(c["source_width"][index])),
            crop_top_left=(int(c["crop_top"][index]), int(c["crop_left"][index])),
            target_size=(int(c["height"][index]), int(c["width"][index])),
            padded=bool(getattr(i, "padded", False)),
        )
        if self.caption_policy is not None:
            item["stored_caption"] = caption
            item["caption"] = self.caption_policy(item, int(getattr(i, "epoch", self.epoch)))
            item["caption_parts"] = split_caption(item["caption"], self.keep_separator)
        return item

    def _decode(self, data: bytes) -> Any:
        if self.decode == "bytes":
            return data
        from PIL import Image

        im = Image.open(io.BytesIO(data))
        if self.mode is not None and im.mode != self.mode:
            im = im.convert(self.mode)
        else:
            im.load()
        if self.decode == "pil":
            return im
        array = np.asarray(im)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.decode == "numpy":
            return array
        import torch

        # CHW made by numpy, wrapped without a copy: torch's own strided uint8 copy is slow, and
        # its intra-op threads spin against the loader's processes on a busy machine.
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def factorize(values: pl.Series) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted distinct values, each row's position among them): vectorised, no Python loop."""
    names = values.unique().sort().to_list()
    if None in names:
        raise ReaderError(f"{MANIFEST} column {values.name!r} has nulls: rebuild the dataset.")
    # An Enum's physical codes are the positions in its (sorted, fixed) categories.
    return tuple(names), values.cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int32)


def split_caption(caption: str, separator: str | None = KEEP_SEPARATOR) -> tuple[str, str]:
    """(kept, rest) of a kdata caption: `kept, |||rest` -> ("kept", "rest"); no separator: ("", caption)."""
    if not separator or separator not in caption:
        return "", caption.strip()
    kept, rest = caption.split(separator, 1)
    return kept.strip().rstrip(",").strip(), rest.strip().lstrip(",").strip()


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ReaderError("decode='torch' needs PyTorch: pip install torch (from a kohaku-data checkout: pip install '.[torch]').") from None
