"""Read built datasets (`DATASETS/<name>-<version>/`) for the HTTP service.

A dataset folder holds `index.json` (shard list), `dataset.lock` (what built it),
`manifest.parquet` (one row per sample: key, shard, caption, bucket, quality, ...) and
webdataset tar shards with members `<key>.webp|png`, `<key>.txt`, `<key>.json`.

To serve one sample without scanning tars, each shard's member offsets are indexed once, on
first use, and kept in the `Dataset` object (owned by the app's state, never module globals);
members are then read with one `os.pread` at their data offset.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data.errors import KdataError

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PICTURE_RE = re.compile(r"^[a-z_]+\.png$")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)


class DatasetError(KdataError):
    """A dataset or sample does not exist, or its files are unreadable."""


@dataclass(frozen=True)
class Member:
    offset: int  # of the data, in the tar file
    size: int


@dataclass
class Dataset:
    """One built dataset folder; manifest and shard indexes load lazily and are cached."""

    name: str
    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _manifest: pl.DataFrame | None = field(default=None, repr=False)
    _rows: dict[str, int] | None = field(default=None, repr=False)
    _shards: dict[str, dict[str, Member]] = field(default_factory=dict, repr=False)
    _histograms: dict[str, list[dict[str, Any]]] | None = field(default=None, repr=False)

    # -- descriptions ------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        return _read_json(self.path / "index.json")

    def lock(self) -> dict[str, Any] | None:
        path = self.path / "dataset.lock"
        return _read_json(path) if path.is_file() else None

    def summary(self) -> dict[str, Any]:
        index, lock = self.index(), self.lock() or {}
        shards = index.get("shardlist", [])
        return {
            "name": self.name,
            "shards": len(shards),
            "samples": sum(int(s.get("nsamples", 0)) for s in shards),
            "bytes": sum(int(s.get("filesize", 0)) for s in shards),
            "recipe_sha256": lock.get("recipe_sha256"),
            "kdata_version": lock.get("kdata_version") or lock.get("version"),
            "lock": lock,
        }

    # -- manifest ----------------------------------------------------------------------------
    def manifest(self) -> pl.DataFrame:
        with self._lock:
            if self._manifest is None:
                path = self.path / "manifest.parquet"
                if not path.is_file():
                    raise DatasetError(f"dataset {self.name} has no manifest.parquet (rebuild it)")
                frame = pl.read_parquet(path)
                # Keys are post ids (Int64) in kdata builds; URLs carry them as text.
                self._rows = {str(k): i for i, k in enumerate(frame["key"].to_list())}
                self._manifest = frame
            return self._manifest

    def has(self, key: str) -> bool:
        self.manifest()
        return self._rows is not None and key in self._rows

    def row(self, key: str) -> dict[str, Any]:
        frame = self.manifest()
        i = self._rows.get(key) if self._rows is not None else None
        if i is None:
            raise DatasetError(f"dataset {self.name} has no sample {key!r}")
        return frame.row(i, named=True)

    def samples(self, offset: int, limit: int) -> list[dict[str, Any]]:
        cols = [c for c in ("key", "caption", "width", "height", "bucket", "quality", "rating", "year", "image")
                if c in self.manifest().columns]
        return self.manifest().select(cols).slice(offset, limit).to_dicts()

    def histograms(self) -> dict[str, list[dict[str, Any]]]:
        """Counts per bucket, quality, rating and year; made once (a built dataset never changes
        under its lock, and the manifest itself is kept for the app's life too)."""
        if self._histograms is None:
            self._histograms = self._count()
        return self._histograms

    def _count(self) -> dict[str, list[dict[str, Any]]]:
        frame = self.manifest()
        out: dict[str, list[dict[str, Any]]] = {}
        for column in ("bucket", "quality", "rating", "year"):
            if column in frame.columns:
                counts = frame.group_by(column).len().sort(["len", column], descending=[True, False], nulls_last=True)
                out[column] = [{"value": _jsonable(v), "count": n} for v, n in counts.iter_rows()]
        return out

    # -- the card (README.md + card/*.png, written by every build) ----------------------------
    def card(self, picture_base: str) -> dict[str, Any]:
        """The card's markdown (YAML header dropped), as HTML too, with its pictures under
        `picture_base` (the route that serves `card/NAME.png`)."""
        from markdown_it import MarkdownIt

        path = self.path / "README.md"
        if not path.is_file():
            raise DatasetError(f"dataset {self.name} has no card (README.md): rebuild it with a kdata that writes one")
        text = _FRONT_MATTER.sub("", path.read_text(encoding="utf-8"), count=1)
        pictures = sorted(p.name for p in (self.path / "card").glob("*.png"))
        linked = text.replace("](card/", f"]({picture_base}/")
        # html=False: the card escapes its data, and no raw HTML from a folder reaches the page.
        html = MarkdownIt("commonmark", {"html": False}).enable("table").render(linked)
        return {"markdown": text, "html": html, "pictures": [f"{picture_base}/{p}" for p in pictures]}

    def card_picture(self, picture: str) -> Path:
        path = self.path / "card" / picture
        if not _PICTURE_RE.match(picture) or not path.is_file():
            raise DatasetError(f"dataset {self.name} has no card picture {picture!r}")
        return path

    # -- samples -----------------------------------------------------------------------------
    def read_member(self, key: str, ext: str) -> bytes:
        shard = self._shard_file(self.row(key))
        members = self._members(shard)
        member = members.get(f"{key}.{ext}")
        if member is None:
            raise DatasetError(f"sample {key!r} has no .{ext} member in {shard.name}")
        fd = os.open(shard, os.O_RDONLY)
        try:
            return os.pread(fd, member.size, member.offset)
        finally:
            os.close(fd)

    def image(self, key: str) -> tuple[bytes, str]:
        """(bytes, extension) of the sample's image (the manifest's `image` member, else any)."""
        row = self.row(key)
        members = self._members(self._shard_file(row))
        named = row.get("image")
        if isinstance(named, str) and named in members and "." in named:
            return self.read_member(key, named.rsplit(".", 1)[1]), named.rsplit(".", 1)[1]
        for ext in IMAGE_EXTS:
            if f"{key}.{ext}" in members:
                return self.read_member(key, ext), ext
        raise DatasetError(f"sample {key!r} of {self.name} has no image member")

    def _shard_file(self, row: dict[str, Any]) -> Path:
        shard = row.get("shard")
        if isinstance(shard, int):  # an index into index.json's shardlist
            shard = self.index()["shardlist"][shard]["url"]
        path = (self.path / str(shard)).resolve()
        if path.parent != self.path.resolve() or not path.is_file():
            raise DatasetError(f"shard {shard!r} of {self.name} is missing")
        return path

    def _members(self, shard: Path) -> dict[str, Member]:
        with self._lock:
            if shard.name not in self._shards:
                with tarfile.open(shard, "r:") as tar:
                    self._shards[shard.name] = {
                        m.name: Member(m.offset_data, m.size) for m in tar.getmembers() if m.isfile()
                    }
            return self._shards[shard.name]


class DatasetCatalog:
    """The built datasets under one folder. `Dataset` objects are kept, so caches persist.

    The folder is normally the parent of dataset folders; a dataset folder itself (it holds
    `index.json` or `manifest.parquet`) is served as that one dataset, because pointing
    `--datasets` at a build's `--out` is the natural first try and must not show nothing."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.single = self.root is not None and is_dataset(self.root)
        self._lock = threading.Lock()
        self._datasets: dict[str, Dataset] = {}

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        if self.single:
            return [self.root.name] if is_dataset(self.root) else []
        return sorted(p.name for p in self.root.iterdir() if (p / "index.json").is_file())

    def get(self, name: str) -> Dataset:
        if not _NAME_RE.match(name) or name not in self.names():
            known = ", ".join(self.names()) or "none built"
            raise DatasetError(f"no dataset {name!r} (known: {known})")
        with self._lock:
            if name not in self._datasets:
                self._datasets[name] = Dataset(name, self.root if self.single else self.root / name)
            return self._datasets[name]

    def describe(self) -> str:
        """One line for `kdata serve` to print at start-up: what is served, or why nothing is."""
        if self.root is None:
            return "no --datasets folder given: serving no built datasets"
        if not self.root.is_dir():
            return f"datasets folder {self.root} does not exist: serving no built datasets"
        names = self.names()
        if self.single:
            return f"{self.root} is one dataset folder: serving it as dataset {names[0]!r}"
        if not names:
            return (f"no built datasets in {self.root}: it should hold one folder per dataset, "
                    "each with index.json (kdata build --out DATASETS/NAME-VERSION)")
        return f"datasets in {self.root}: {', '.join(names)}"

    def holding(self, key: str) -> Dataset | None:
        """The first dataset (by name) with a sample `key` (loads each manifest once)."""
        for name in self.names():
            dataset = self.get(name)
            if dataset.has(key):
                return dataset
        return None

    def list(self) -> list[dict[str, Any]]:
        return [self.get(n).summary() for n in self.names()]


def is_dataset(folder: Path) -> bool:
    """A built dataset folder (not a folder of them)."""
    return (folder / "index.json").is_file() or (folder / "manifest.parquet").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
