"""Distributed shard packing: the driver lays shards out from sizes, shard tasks write them.

The driver knows every member's size without touching an image: the image tasks return the
size (and staged location) of each stored image, and the `.txt` / `.json` members are made on
the driver from the captions it computes in bulk. So `ShardLayout` fixes the shard boundaries
(exact byte caps, gap-free numbering) from the plan and the results alone — the same for any
executor, node or worker count — and each closed shard becomes a `ShardJob`: its samples in
order, small members inline, images by reference to their staged bytes. `write_shard` runs
wherever the executor puts it, reads those images by byte range, writes the tar (and its member
index) beside the others — on a disk or straight into the object store, create-only — and
returns its `ShardInfo`: image bytes never pass through the driver.

`ShardLayout.add` follows the plan order exactly as a single packer would: a reject joins the
open shard's reject list; a sample that would take the open shard past its cap first closes it
(so a shard's `last_key` is the last plan item before the sample that did not fit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from kohaku_data import storage
from kohaku_data.assembly.lock import BuildError
from kohaku_data.atomic import name_failed_write
from kohaku_data.assembly.plan import PlanItem
from kohaku_data.assembly.shards import (
    ShardInfo, TarStream, member_bytes, member_index, member_index_bytes, member_index_name, shard_name, tar_size,
)
from kohaku_data.assembly.tasks import ImageRef, Staged, StagedInfo, read_staged_image, sample_members
from kohaku_data.config import Recipe
from kohaku_data.curation import artifacts as artifact_rules

Member = tuple[str, "bytes | ImageRef"]


def level_member(key: int, level: str, fmt: str) -> str:
    """The member name of a sample's image at an extra resolution level."""
    return f"{key}.{level}.{fmt}"


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: plain data, picklable, no DB (a task for any executor)."""

    index: int
    path: str  # where the tar goes: a path or a URL
    samples: tuple[tuple[Member, ...], ...]
    size: int  # the tar's size the layout computed; the writer must land on it exactly


@dataclass(frozen=True)
class ShardDone:
    index: int
    info: ShardInfo
    placements: tuple[dict, ...]  # per sample, what ShardWriter.add_sample returned


@dataclass
class LaidOut:
    """A closed shard on the driver: its job, and what its part records once it is written."""

    job: ShardJob
    samples: list[tuple[Staged, dict]]  # (staged header, caption) per sample, for manifest rows
    rejects: list[dict]
    last_key: int
    keys: list[int]  # every plan item it covers (their staged results go once it is written)


def write_shard(job: ShardJob) -> ShardDone:
    """Write one shard and its member index from its job (runs in a worker, on any node that
    reaches the output). The tar is committed create-only (`storage.committing`: a disk's hard
    link, S3's `If-None-Match`), so a late writer never replaces a committed shard. One already
    there is kept when its sha256 is ours — a twin's: a task cancelled as hung, or retried after
    a lost node, writes the same bytes — and replaced otherwise (a killed run's leftover that
    its builder could not clear first)."""
    for _ in range(2):
        done, stream, committed = _write_tar(job)
        if committed or _sha256_of(job.path) == done.info.sha256:
            _commit_member_index(job, stream)
            return done
        storage.remove(job.path)
    raise BuildError(f"{storage.display(job.path)} keeps reappearing under its shard task; "
                     "is another build writing into this output?")


def _write_tar(job: ShardJob) -> tuple[ShardDone, TarStream, bool]:
    """(result, the stream's hashes, whether this call committed the tar)."""
    committed = True
    try:
        with storage.committing(job.path, exclusive=True) as f:
            stream = TarStream(f, job.size)
            placements = tuple(stream.add_sample([(name, _bytes(data)) for name, data in sample])
                               for sample in job.samples)
            stream.close()
            if f.tell() != job.size:
                raise BuildError(f"{storage.display(job.path)} came out {f.tell()} bytes, the layout said "
                                 f"{job.size}; this is a kdata bug: please report it")
    except FileExistsError:
        committed = False
    except OSError as exc:
        name_failed_write(exc, job.path)  # e.g. a full disk met at the final flush
        raise
    info = ShardInfo(storage.name_of(job.path), stream.nsamples, job.size, stream.sha256, stream.md5)
    return ShardDone(job.index, info, placements), stream, committed


def _commit_member_index(job: ShardJob, stream: TarStream) -> None:
    """`NAME-000000.json` beside the tar (deterministic from it: a plain overwrite is safe)."""
    index = member_index(job.size, stream.git_sha1, stream.sha256, stream.files)
    target = storage.join(storage.parent_of(job.path), member_index_name(storage.name_of(job.path)))
    try:
        storage.commit_bytes(target, member_index_bytes(index))
    except OSError as exc:
        name_failed_write(exc, target)
        raise


def _sha256_of(target: str) -> str | None:
    """sha256 of a committed file (streamed), None when it vanished meanwhile."""
    digest = hashlib.sha256()
    try:
        with storage.open_read(target) as f:
            while block := f.read(1 << 22):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _bytes(data: bytes | ImageRef) -> bytes:
    return read_staged_image(data) if isinstance(data, ImageRef) else data


@dataclass
class ShardLayout:
    """Shard boundaries from sizes only; `add` items in plan order, `finish` at the end."""

    out: storage.Target
    recipe: Recipe
    index: int  # the next shard's number
    _members: list[tuple[Member, ...]] = field(default_factory=list)
    _samples: list[tuple[Staged, dict]] = field(default_factory=list)
    _rejects: list[dict] = field(default_factory=list)
    _keys: list[int] = field(default_factory=list)
    _content: int = 0
    _last_key: int = -1

    def add(self, item: PlanItem, staged: StagedInfo, caption: dict[str, Any] | None) -> LaidOut | None:
        """Place one plan item; returns the shard it closed, if it closed one."""
        closed = None
        if not staged.ok:
            self._reject(item, staged.header["reason"], staged.header.get("detail", ""))
        elif caption is None:
            self._reject(item, "post_missing", "the post left the DB during the build")
        elif (rejected := artifact_rules.verdict(staged.header.get("artifacts") or {}, self.recipe.artifacts)):
            self._reject(item, *rejected)  # recipe rules on the source's artifact measures
        elif (failed := next((lv for lv in staged.levels if not lv[1].ok), None)) is not None:
            name, level = failed  # every level or none: a sample has all of its members
            self._reject(item, level.header["reason"], f"level {name}: {level.header.get('detail', '')}")
        else:
            closed = self._add(staged, self._tagged(staged, caption))
        self._keys.append(item.key)
        self._last_key = item.key
        return closed

    def finish(self) -> tuple[LaidOut | None, list[dict]]:
        """Close the open shard; the rejects after its last sample are the build's tail."""
        if self._members:
            return self._close(), []
        return None, self._rejects

    def _tagged(self, staged: StagedInfo, caption: dict[str, Any]) -> dict[str, Any]:
        """The caption with the artifact tags the recipe gives and the post lacks (in `artifact_tags`)."""
        earned = artifact_rules.tags(staged.header.get("artifacts") or {}, self.recipe.artifacts)
        tagged, added = artifact_rules.tag_caption(caption, earned, self.recipe.caption)
        return {**tagged, "artifact_tags": added}

    def _reject(self, item: PlanItem, reason: str, detail: str) -> None:
        self._rejects.append({"key": item.key, "source": item.entry.name, "reason": reason, "detail": detail})

    def _add(self, info: StagedInfo, caption: dict[str, Any]) -> LaidOut | None:
        levels = tuple((name, Staged(lv.header, None, lv.image.size)) for name, lv in info.levels)
        staged = Staged(info.header, None, info.image.size, levels)
        members = tuple((name, info.image if data is None else data) for name, data in sample_members(staged, caption))
        # `[image] levels`: `<id>.<level>.<ext>` after the json, in recipe order (docs/shards-and-exports.md)
        members += tuple((level_member(info.header["key"], name, lv.header["format"]), lv.image)
                         for name, lv in info.levels)
        size = sum(member_bytes(m.size if isinstance(m, ImageRef) else len(m)) for _, m in members)
        closed = self._close() if self._members and self._full(size) else None
        self._members.append(members)
        self._samples.append((staged, caption))
        self._content += size
        return closed

    def _full(self, size: int) -> bool:
        cap = self.recipe.shard_max_samples
        if cap is not None and len(self._members) >= cap:
            return True
        return tar_size(self._content + size) > self.recipe.shard_max_bytes

    def _close(self) -> LaidOut:
        path = storage.join(self.out, shard_name(self.recipe.name, self.index))
        job = ShardJob(self.index, str(path), tuple(self._members), tar_size(self._content))
        laid = LaidOut(job, self._samples, self._rejects, self._last_key, self._keys)
        self.index += 1
        self._members, self._samples, self._rejects, self._keys, self._content = [], [], [], [], 0
        return laid

