"""`kdata verify OUT`: does the dataset (a folder, or a URL such as `s3://bucket/datasets/x/`)
match its index and manifest?

Checks: every shard of index.json exists with its size, sha256 and md5sum, and its member index
(`NAME-000000.json`) and the manifest's member offsets match the tar (the index's hfutils keys
strictly; webshart's width/height/aspect/caption, where present, against the manifest: a build
made before those fields verifies clean); every manifest row's image
member is in its shard with that sha256, with its `.txt` (equal to the manifest caption) and
`.json`; no extra members or samples; per-shard counts agree; no shard files outside the index.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.manifest import INDEX_NAME, MANIFEST_NAME, OFFSET_COLUMNS
from kohaku_data.assembly.shards import file_sha256, shard_file_problems
from kohaku_data.errors import KdataError
from kohaku_data.tar_index import index_path


class VerifyError(KdataError):
    """The folder is not a built dataset at all."""


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(out: storage.Target) -> VerifyReport:
    """Check the dataset in `out`: a local folder or a URL (`s3://bucket/datasets/x/`; there each
    shard is streamed once into a temporary file, checked, and removed)."""
    index, manifest = _read_tables(out)
    report = VerifyReport()
    listed = {entry["url"] for entry in index["shardlist"]}
    for entry in index["shardlist"]:
        rows = manifest.filter(pl.col("shard") == entry["url"])
        tar = storage.join(out, entry["url"])
        with storage.fetched([tar, index_path(tar)]) as (local_tar, _):
            _check_shard(local_tar, entry, rows, report)
    for extra in sorted(set(manifest["shard"].unique()) - listed):
        report.problems.append(f"manifest rows point at {extra}, which index.json does not list")
    for name in storage.list_names(out):
        if name.endswith(".tar") and name not in listed:
            report.problems.append(f"{name} is in the folder but not in index.json")
    return report


def _read_tables(out: storage.Target) -> tuple[dict, pl.DataFrame]:
    try:
        index = json.loads(storage.read_bytes(storage.join(out, INDEX_NAME)))
        data = storage.read_bytes(storage.join(out, MANIFEST_NAME))
    except FileNotFoundError as exc:
        missing = storage.name_of(exc.filename or "") or "index.json or manifest.parquet"
        raise VerifyError(f"{out} has no {missing}: is it a dataset built by `kdata build`?") from None
    present = pl.read_parquet_schema(io.BytesIO(data))
    offsets = [c for c in OFFSET_COLUMNS if c in present]  # an older build has none: reported per shard
    sizes = [c for c in ("width", "height") if c in present]  # what webshart's fields are checked against
    levels = [c for c in present if c.split("@", 1)[0] in ("image", "sha256") and "@" in c]  # [image] levels
    columns = ["key", "shard", "image", "sha256", "caption", *sizes, *offsets, *levels]
    return index, pl.read_parquet(io.BytesIO(data), columns=columns)


def _check_shard(path: Path | None, entry: dict, rows: pl.DataFrame, report: VerifyReport) -> None:
    """`path`: the shard on this disk (the dataset's own file, or a fetched copy with its member
    index beside it), None when the shard is missing."""
    report.shards += 1
    if path is None or not path.is_file():
        report.problems.append(f"{entry['url']}: missing")
        return
    size = path.stat().st_size
    report.bytes += size
    if size != entry["filesize"]:
        report.problems.append(f"{entry['url']}: {size} bytes, index.json says {entry['filesize']}")
    if file_sha256(path) != entry["sha256"]:
        report.problems.append(f"{entry['url']}: sha256 differs from index.json (the file changed)")
    if rows.height != entry["nsamples"]:
        report.problems.append(f"{entry['url']}: manifest has {rows.height} samples, index.json says {entry['nsamples']}")
    _check_members(path, rows, report)
    report.problems += shard_file_problems(path.parent, entry, rows)  # md5sum, member index, manifest offsets


def _check_members(path: Path, rows: pl.DataFrame, report: VerifyReport) -> None:
    expected = {row["image"]: row for row in rows.iter_rows(named=True)}
    by_key = {str(row["key"]): row for row in expected.values()}
    wanted = set(expected) | {f"{r['key']}.{ext}" for r in expected.values() for ext in ("txt", "json")}
    # `[image] levels`: each level's member, checked against its own sha256 column
    levels = [c.split("@", 1)[1] for c in rows.columns if c.startswith("image@")]
    level_sha = {r[f"image@{lv}"]: r[f"sha256@{lv}"] for r in expected.values() for lv in levels}
    wanted |= set(level_sha)
    seen: set[str] = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                seen.add(member.name)
                if member.name not in wanted:
                    report.problems.append(f"{path.name}: extra member {member.name}")
                    continue
                data = tar.extractfile(member).read() if member.isreg() else b""
                if member.name in level_sha:
                    if hashlib.sha256(data).hexdigest() != level_sha[member.name]:
                        report.problems.append(f"{path.name}: {member.name} sha256 differs from the manifest")
                    continue
                _check_member(path.name, member.name, data, expected, by_key, report)
    except (tarfile.TarError, OSError) as exc:
        report.problems.append(f"{path.name}: unreadable tar ({exc})")
        return
    for name in sorted(wanted - seen):
        report.problems.append(f"{path.name}: member {name} is missing")
    report.samples += len(expected.keys() & seen)


def _check_member(shard: str, name: str, data: bytes, expected: dict, by_key: dict, report: VerifyReport) -> None:
    if name in expected:
        if hashlib.sha256(data).hexdigest() != expected[name]["sha256"]:
            report.problems.append(f"{shard}: {name} sha256 differs from the manifest")
        return
    key, ext = name.split(".", 1)
    row = by_key.get(key)
    if ext == "txt" and row is not None and data.decode("utf-8", "replace") != row["caption"]:
        report.problems.append(f"{shard}: {name} differs from the manifest caption")
    if ext == "json":
        try:
            json.loads(data)
        except ValueError:
            report.problems.append(f"{shard}: {name} is not valid JSON")
