"""One image task: read bytes → md5 check → image stage → one staged object; and the sample members.

A task carries everything it needs (plan items, image config, staging location) and touches no
DB, so it runs in any process or on any machine that reaches the output — a folder every node
mounts, or the object store of an `s3://` output. Its results are committed as ONE create-only
object beside the output:

    OUT/.staging/images/<image-config hash>/tasks/<first key>-<last key>.bin
        4-byte big-endian length, JSON header {"items": [{"header", "offset", "size"}, …]},
        then the stored images of the ok items, concatenated (offsets count from the header's end)

A recipe with `[image] levels` stages each level as a task object of its own, in the folder of
that level's image config alone (`ImageConfig.level_configs`: the folder a build with that
bucket would use; the main bucket's folder does not depend on the levels). So a level added to
a recipe reuses the staged objects of the levels it already had and computes only the new one
(still from one decode of each original); each level's object is exactly the one a
single-level build of it would stage.

One object per task, not per image: on object storage each write is a request, and a task's
images are made together anyway. The folder name is a hash of the image settings, and each
item's header records its input (name, size), so a resumed build reuses exactly the task
objects whose every item still holds. Shard tasks read each image back by byte range
(`ImageRef`, `storage.read_range`) wherever they run; the format is internal to the build.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from kohaku_data import storage
from kohaku_data.assembly.plan import PlanItem
from kohaku_data.assembly.sample_schema import TAG_CATEGORIES, conform
from kohaku_data.curation.captions import curated_fields
from kohaku_data.images.artifacts import FIELDS as ARTIFACT_FIELDS, json_value
from kohaku_data.config import ImageConfig
from kohaku_data.errors import KdataError
from kohaku_data.sources import SourceError, read_entries

_LEN = struct.Struct(">I")
_PEEK = 64 << 10  # first read of a staged object: its header (~0.5 KB an item) in one request


@dataclass(frozen=True)
class ImageTask:
    index: int
    items: tuple[PlanItem, ...]
    image: ImageConfig
    check_md5: bool
    staging: str  # a folder path or a URL: where this task's object goes


@dataclass(frozen=True)
class ImageRef:
    """Where one stored image lies: a byte range of a staged task object (read where a shard is
    written, so image bytes never travel through the driver)."""

    path: str
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedInfo:
    """What the driver needs of a staged result: its header, and where the image is (ok only)."""

    header: dict[str, Any]
    image: ImageRef | None = None
    levels: tuple[tuple[str, "StagedInfo"], ...] = ()  # (level name, its staged result), recipe order

    @property
    def ok(self) -> bool:
        return self.header["status"] == "ok"


@dataclass(frozen=True)
class TaskResult:
    index: int
    done: int  # items processed now
    reused: int  # items whose staged result was still valid
    items: tuple[StagedInfo, ...] = ()  # one per task item, in task order
    path: str = ""  # the task's staged object (removed once every item is in a written shard)


@dataclass(frozen=True)
class Staged:
    """A staged result: `header` (JSON-able) and, when status is ok, the stored image bytes."""

    header: dict[str, Any]
    data: bytes | None = None
    size: int | None = None  # the image's size when `data` is not loaded (on the driver)
    levels: tuple[tuple[str, "Staged"], ...] = ()  # `[image] levels`: (name, that level's result)

    @property
    def ok(self) -> bool:
        return self.header["status"] == "ok"

    @property
    def image_bytes(self) -> int:
        return len(self.data) if self.data is not None else (self.size or 0)


def staging_dir(root: storage.Target, image: ImageConfig, check_md5: bool) -> storage.Target:
    """Content address of the image settings: another image config never reuses these results.
    The main bucket's results do not depend on `levels` (left out: a recipe without levels keeps
    the folder it had before levels existed)."""
    dumped = image.model_dump(mode="json")
    dumped.pop("levels", None)
    text = json.dumps([dumped, check_md5], sort_keys=True)
    return storage.join(root, hashlib.sha256(text.encode()).hexdigest()[:16])


def level_staging(staging: storage.Target, level: ImageConfig, check_md5: bool) -> storage.Target:
    """The staging folder of one level: beside the main one, addressed by the level's own config."""
    return staging_dir(storage.parent_of(staging), level, check_md5)


def task_object(staging: storage.Target, items: tuple[PlanItem, ...]) -> storage.Target:
    """The staged object of a task of these items (named by its key range: fixed by the plan)."""
    return storage.join(staging, "tasks", f"{items[0].key}-{items[-1].key}.bin")


def run_image_task(task: ImageTask) -> TaskResult:
    """Reuse the task's staged object when every item still holds, else process every item and
    commit the object once (create-only)."""
    path = task_object(task.staging, task.items)
    if task.image.levels:
        return _run_ladder(task, path)
    infos = staged_infos(path, task.items)
    if infos is not None:
        return TaskResult(task.index, 0, len(infos), infos, str(path))
    data = pack_staged(_process_all(task))
    return TaskResult(task.index, len(task.items), 0, commit_staged(path, task.items, data), str(path))


def _run_ladder(task: ImageTask, path: storage.Target) -> TaskResult:
    """Main bucket + `levels`: each level's object reused when staged, the missing ones made
    together, from one read and one decode of each original."""
    configs = [("", task.image.model_copy(update={"levels": ()})), *task.image.level_configs()]
    paths = [path] + [task_object(level_staging(task.staging, cfg, task.check_md5), task.items)
                      for _, cfg in configs[1:]]
    found = [staged_infos(p, task.items) for p in paths]
    missing = [i for i, infos in enumerate(found) if infos is None]
    if missing:
        made = _process_all(task, [configs[i][1] for i in missing])
        for j, i in enumerate(missing):
            found[i] = commit_staged(paths[i], task.items, pack_staged([per_item[j] for per_item in made]))
    names = [name for name, _ in configs[1:]]
    infos = tuple(StagedInfo(main.header, main.image, tuple(zip(names, (level[n] for level in found[1:]))))
                  for n, main in enumerate(found[0]))
    done = len(task.items) if missing else 0
    return TaskResult(task.index, done, len(task.items) - done, infos, str(path))


def pack_staged(results: list[Staged]) -> bytes:
    """The bytes of one task object (see the module docstring): deterministic for its results."""
    entries, offset = [], 0
    for staged in results:
        size = len(staged.data or b"")
        entries.append({"header": staged.header, "offset": offset, "size": size})
        offset += size
    head = json.dumps({"items": entries}, sort_keys=True).encode()
    return b"".join([_LEN.pack(len(head)), head, *(s.data or b"" for s in results)])


def commit_staged(path: storage.Target, items: tuple[PlanItem, ...], data: bytes) -> tuple[StagedInfo, ...]:
    """Commit a task object create-only. An object already there is either a twin's (a hung
    task's resubmission made the same bytes: use it) or a stale one (other inputs: replace it).
    Not durable on a disk (no fsync): a result lost in a crash is only recomputed."""
    for _ in range(2):
        try:
            storage.commit_bytes(path, data, exclusive=True, durable=False)
        except FileExistsError:
            infos = staged_infos(path, items)
            if infos is not None:
                return infos
            storage.remove(path)
            continue
        base = _LEN.size + _LEN.unpack(data[:_LEN.size])[0]
        return _infos(path, json.loads(data[_LEN.size:base]), base)
    raise KdataError(f"the staged object {storage.display(path)} keeps changing under this task; "
                     "is another build writing into this output?")


def _input(item: PlanItem) -> dict[str, Any]:
    return {"name": item.entry.name, "size": item.entry.size}


def _process_all(task: ImageTask, levels: list[ImageConfig] | None = None) -> list:
    """Every item's result, in task order. The members are read run by run (`read_entries`:
    adjacent members of a tar in one ranged request, at most one run's bytes held at a time).
    With `levels` (image configs of one ladder), a list per item: one result per level."""
    results: list = [None] * len(task.items)
    for i, data in read_entries([item.entry for item in task.items]):
        if levels is None:
            results[i] = _process(task.items[i], task.image, task.check_md5, data)
        else:
            results[i] = _process_levels(task.items[i], levels, task.check_md5, data)
    return results  # every position is filled


def _process(item: PlanItem, image: ImageConfig, check_md5: bool, data: bytes | SourceError) -> Staged:
    return _process_levels(item, [image], check_md5, data)[0]


def _process_levels(item: PlanItem, images: list[ImageConfig], check_md5: bool,
                    data: bytes | SourceError) -> list[Staged]:
    """One staged result per image config (the levels of a ladder), from one decode."""
    from kohaku_data.images.stage import process_levels

    base = {"key": item.key, "input": _input(item)}
    if isinstance(data, SourceError):
        return [Staged({**base, "status": "rejected", "reason": "unreadable_source", "detail": str(data)})] * len(images)
    md5_checked = check_md5 and item.md5 is not None and len(data) == item.file_size
    if md5_checked:
        actual = hashlib.md5(data).hexdigest()
        if actual != item.md5.lower():
            detail = f"md5 of the file is {actual}, the post says {item.md5}"
            return [Staged({**base, "status": "rejected", "reason": "md5_mismatch", "detail": detail})] * len(images)
    return [_staged(base, result, md5_checked) for result in process_levels(data, images, name=item.entry.name)]


def _staged(base: dict[str, Any], result: Any, md5_checked: bool) -> Staged:
    if result.status != "ok":
        return Staged({**base, "status": "rejected", "reason": result.reason, "detail": result.detail or ""})
    header = {
        **base, "status": "ok", "md5_checked": md5_checked,
        "source_format": result.source_format, "source_mode": result.source_mode,
        "source_size": list(result.source_size), "bucket": list(result.bucket),
        "crop_box": list(result.crop_box), "width": result.width, "height": result.height,
        "format": result.output_format, "mode": result.mode, "sha256": result.sha256,
        "artifacts": result.artifacts or {},  # kohaku_data/images/artifacts.FIELDS
    }
    return Staged(header, result.data)


def staged_infos(path: storage.Target, items: tuple[PlanItem, ...]) -> tuple[StagedInfo, ...] | None:
    """The headers and image locations of the task object at `path` if it holds a result for
    every one of `items`, for these very inputs; else None (missing, unreadable, or another
    file now has one of these ids). The images are not read: `read_staged_image` checks their
    sha256 where they are used."""
    found = _read_header(path)
    if found is None:
        return None
    doc, base = found
    entries = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or len(entries) != len(items):
        return None
    for entry, item in zip(entries, items):
        header = entry.get("header", {}) if isinstance(entry, dict) else {}
        if header.get("key") != item.key or header.get("input") != _input(item):
            return None
    return _infos(path, doc, base)


def _read_header(path: storage.Target) -> tuple[Any, int] | None:
    """(header JSON, offset where the images start) of a task object; None when there is none
    or it is cut short (a disk's rename and an object store's single write make that rare)."""
    try:
        head = storage.read_range(path, 0, _PEEK)
        if len(head) < _LEN.size:
            return None
        base = _LEN.size + _LEN.unpack(head[:_LEN.size])[0]
        if len(head) < base:
            head += storage.read_range(path, len(head), base - len(head))
        return json.loads(head[_LEN.size:base]), base
    except FileNotFoundError:
        return None
    except (ValueError, struct.error):
        return None


def _infos(path: storage.Target, doc: dict[str, Any], base: int) -> tuple[StagedInfo, ...]:
    out = []
    for entry in doc["items"]:
        header = entry["header"]
        ok = header["status"] == "ok"
        ref = ImageRef(str(path), base + entry["offset"], entry["size"], header["sha256"]) if ok else None
        out.append(StagedInfo(header, ref))
    return tuple(out)


class StagedDamaged(KdataError):
    """A staged image no longer matches its header (disk trouble, or a hand-edited staging area)."""


def read_staged_image(ref: ImageRef) -> bytes:
    """The stored image bytes at `ref`, checked against their sha256. A damaged task object is
    removed, so that the rerun the error asks for recomputes it."""
    try:
        data = storage.read_range(ref.path, ref.offset, ref.size)  # a local file or a staging URL
    except FileNotFoundError:
        raise StagedDamaged(f"the staged result {ref.path} vanished; rerun the build to redo it") from None
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        storage.remove(ref.path)
        raise StagedDamaged(f"the staged result {ref.path} was damaged (removed); rerun the build to redo it")
    return data


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


def variant_fields(caption: dict[str, Any]) -> dict[str, Any]:
    """`captions` and `caption_tokens` of a caption row (`variant_<name>`, `tokens_<name>`); a
    row made without them stores its caption as the kohaku variant (tokens 0: not counted)."""
    names = [k[len("variant_"):] for k in caption if k.startswith("variant_")]
    if not names:
        return {"captions": {"kohaku": caption.get("caption")}, "caption_tokens": {"kohaku": 0}}
    return {"captions": {n: caption[f"variant_{n}"] for n in names},
            "caption_tokens": {n: caption.get(f"tokens_{n}") for n in names}}


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
        **variant_fields(caption),  # caption variants (captions/variants.py)
        "artifacts": artifact_json(header.get("artifacts") or {}),
    }
    return conform(values)


def artifact_json(measures: dict[str, Any]) -> dict[str, Any]:
    """The source artifact measures in the sample json's no-null form (artifacts.json_value)."""
    return {name: json_value(name, measures.get(name)) for name in ARTIFACT_FIELDS}
