"""One image task: read bytes → md5 check → image stage → staged result; and the sample members.

A task carries everything it needs (plan items, image config, staging folder) and touches no
DB, so it runs in any process or on any machine that sees the same paths. Results go into a
content-addressed staging area, one file per post, written atomically:

    STAGING/<key // 10000>/<key>.ok    header JSON + image bytes
    STAGING/<key // 10000>/<key>.rej   JSON (reason, detail)

The staging folder name is a hash of the image settings, and each header records the input
(name, size), so a resumed build reuses exactly the results that still hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kohaku_data.atomic import write_atomic
from kohaku_data.assembly.plan import PlanItem
from kohaku_data.assembly.sample_schema import TAG_CATEGORIES, conform
from kohaku_data.curation.captions import curated_fields
from kohaku_data.config import ImageConfig
from kohaku_data.errors import KdataError
from kohaku_data.sources import read_entry

_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class ImageTask:
    index: int
    items: tuple[PlanItem, ...]
    image: ImageConfig
    check_md5: bool
    staging: str


@dataclass(frozen=True)
class ImageRef:
    """Where one stored image lies: a byte range of a staged file (read where a shard is written,
    so image bytes never travel through the driver)."""

    path: str
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedInfo:
    """What the driver needs of a staged result: its header, and where the image is (ok only)."""

    header: dict[str, Any]
    image: ImageRef | None = None

    @property
    def ok(self) -> bool:
        return self.header["status"] == "ok"


@dataclass(frozen=True)
class TaskResult:
    index: int
    done: int  # items processed now
    reused: int  # items whose staged result was still valid
    items: tuple[StagedInfo, ...] = ()  # one per task item, in task order


@dataclass(frozen=True)
class Staged:
    """A staged result: `header` (JSON-able) and, when status is ok, the stored image bytes."""

    header: dict[str, Any]
    data: bytes | None = None
    size: int | None = None  # the image's size when `data` is not loaded (on the driver)

    @property
    def ok(self) -> bool:
        return self.header["status"] == "ok"

    @property
    def image_bytes(self) -> int:
        return len(self.data) if self.data is not None else (self.size or 0)


def staging_dir(root: Path, image: ImageConfig, check_md5: bool) -> Path:
    """Content address of the image settings: another image config never reuses these results."""
    text = json.dumps([image.model_dump(mode="json"), check_md5], sort_keys=True)
    return root / hashlib.sha256(text.encode()).hexdigest()[:16]


def staged_path(staging: Path, key: int, ok: bool) -> Path:
    return staging / str(key // 10_000) / f"{key}.{'ok' if ok else 'rej'}"


def run_image_task(task: ImageTask) -> TaskResult:
    staging = Path(task.staging)
    done = reused = 0
    infos = []
    for item in task.items:
        info = staged_info(staging, item)
        if info is not None:
            reused += 1
        else:
            info = _stage(staging, item, _process(item, task.image, task.check_md5))
            done += 1
        infos.append(info)
    return TaskResult(task.index, done, reused, tuple(infos))


def _input(item: PlanItem) -> dict[str, Any]:
    return {"name": item.entry.name, "size": item.entry.size}


def _process(item: PlanItem, image: ImageConfig, check_md5: bool) -> Staged:
    from kohaku_data.images import process_image
    from kohaku_data.sources import SourceError

    base = {"key": item.key, "input": _input(item)}
    try:
        data = read_entry(item.entry)
    except SourceError as exc:
        return Staged({**base, "status": "rejected", "reason": "unreadable_source", "detail": str(exc)})
    md5_checked = check_md5 and item.md5 is not None and len(data) == item.file_size
    if md5_checked:
        actual = hashlib.md5(data).hexdigest()
        if actual != item.md5.lower():
            detail = f"md5 of the file is {actual}, the post says {item.md5}"
            return Staged({**base, "status": "rejected", "reason": "md5_mismatch", "detail": detail})
    result = process_image(data, image, name=item.entry.name)
    if result.status != "ok":
        return Staged({**base, "status": "rejected", "reason": result.reason, "detail": result.detail or ""})
    header = {
        **base, "status": "ok", "md5_checked": md5_checked,
        "source_format": result.source_format, "source_mode": result.source_mode,
        "source_size": list(result.source_size), "bucket": list(result.bucket),
        "crop_box": list(result.crop_box), "width": result.width, "height": result.height,
        "format": result.output_format, "mode": result.mode, "sha256": result.sha256,
    }
    return Staged(header, result.data)


def _stage(staging: Path, item: PlanItem, staged: Staged) -> StagedInfo:
    head = json.dumps(staged.header, sort_keys=True).encode()
    path = staged_path(staging, item.key, staged.ok)
    # Not durable (no fsync per file): a result lost in a crash is only recomputed; the rename
    # keeps it whole.
    write_atomic(path, _LEN.pack(len(head)) + head + (staged.data or b""))
    return _info(path, staged.header, _LEN.size + len(head), len(staged.data or b""))


def _info(path: Path, header: dict[str, Any], offset: int, size: int) -> StagedInfo:
    if header["status"] != "ok":
        return StagedInfo(header)
    return StagedInfo(header, ImageRef(str(path), offset, size, header["sha256"]))


def staged_info(staging: Path, item: PlanItem) -> StagedInfo | None:
    """The header and image location of `item`'s staged result, if one holds for this very
    input (the image is not read: `read_staged_image` checks its sha256 where it is used)."""
    for ok in (True, False):
        path = staged_path(staging, item.key, ok)
        try:
            with open(path, "rb") as f:
                head_len = _LEN.unpack(f.read(_LEN.size))[0]
                header = json.loads(f.read(head_len))
                size = os.fstat(f.fileno()).st_size - _LEN.size - head_len
        except FileNotFoundError:
            continue
        except (ValueError, struct.error):
            return None
        if header.get("input") != _input(item):
            return None  # another file now has this id: recompute
        return _info(path, header, _LEN.size + head_len, size)
    return None


class StagedDamaged(KdataError):
    """A staged image no longer matches its header (disk trouble, or a hand-edited staging area)."""


def read_staged_image(ref: ImageRef) -> bytes:
    """The stored image bytes at `ref`, checked against their sha256. A damaged staged result is
    removed, so that the rerun the error asks for recomputes it."""
    from kohaku_data import storage

    try:
        data = storage.read_range(ref.path, ref.offset, ref.size)  # a local file or a staging URL
    except FileNotFoundError:
        raise StagedDamaged(f"the staged result {ref.path} vanished; rerun the build to redo it") from None
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        storage.remove(ref.path)
        raise StagedDamaged(f"the staged result {ref.path} was damaged (removed); rerun the build to redo it")
    return data


def load_staged(staging: Path, item: PlanItem, *, header_only: bool = False) -> Staged | None:
    """The staged result of `item` if there is one for this very input, else None."""
    for ok in (True, False):
        path = staged_path(staging, item.key, ok)
        try:
            with open(path, "rb") as f:
                head = f.read(_LEN.size)
                header = json.loads(f.read(_LEN.unpack(head)[0]))
                data = f.read() if ok and not header_only else None
        except FileNotFoundError:
            continue
        except (ValueError, struct.error):
            return None  # cut short by a crash before the rename cannot happen; be safe anyway
        if header.get("input") != _input(item):
            return None  # another file now has this id: recompute
        if data is not None and hashlib.sha256(data).hexdigest() != header["sha256"]:
            return None
        return Staged(header, data)
    return None


def remove_staged(staging: Path, key: int) -> None:
    for ok in (True, False):
        staged_path(staging, key, ok).unlink(missing_ok=True)


# -- sample members ---------------------------------------------------------------------------
def sample_members(staged: Staged, caption: dict[str, Any]) -> list[tuple[str, bytes]]:
    """`<key>.<webp|png>`, `<key>.txt`, `<key>.json` — the members of one webdataset sample."""
    key = staged.header["key"]
    text = caption["caption"].encode()
    meta = sample_json(staged.header, caption)
    return [
        (f"{key}.{staged.header['format']}", staged.data),
        (f"{key}.txt", text),
        (f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()),
    ]


def sample_json(header: dict[str, Any], caption: dict[str, Any]) -> dict[str, Any]:
    """The `.json` of a sample, in the one fixed schema of `sample_schema` (no nulls, every key)."""
    values = {
        "id": header["key"],
        "bucket": header["bucket"],
        "crop_box": header["crop_box"],
        "original_size": header["source_size"],
        "source": header["input"]["name"],
        "source_format": header["source_format"],
        "tags": {cat: caption.get(f"tags_{cat}") for cat in TAG_CATEGORIES},
        **{k: caption.get(k) for k in (
            "rating", "rating_tag", "score", "fav_count", "created_at", "quality", "year_tag", "md5", "caption")},
        **curated_fields(caption),  # tag caption, text fields, attached tags (kohaku_data/curation)
    }
    return conform(values)
