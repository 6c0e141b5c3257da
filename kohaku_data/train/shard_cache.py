"""A node-local cache of whole shards, with a byte limit, shared by the processes of a node.

    cache = ShardCache("s3://bucket/datasets/ds", "/local/nvme/kdata-cache", limit_bytes=20 << 30)
    ds = KdataDataset("s3://bucket/datasets/ds", decode="torch", cache=cache)

A shard is fetched whole (one GET, streamed to disk), checked against `index.json` (size and
sha256; a corrupt copy is fetched again) and renamed into place, so a file under its final name
is always complete: processes that start at once, or restart after a crash, reuse it (resume).
A shard is kept under its sha256 and name (`ShardEntry.file`), so caches of several datasets may
share one directory (and its limit): two builds' shards of one file name never mix their bytes,
and a shard both builds hold (same bytes) is kept once.
One process fetches a given shard (an exclusive `flock` on `.locks/NAME`); readers hold a
shared lock on it while they read, so a shard is never evicted under a read. A fetch reserves
its size before it starts (the part file's name carries it), under one cache-wide lock, after
evicting the least recently used unlocked shards: the files never exceed `limit_bytes`. A
failing GET is retried with backoff and a stalled one (no result within `stall_s`) is raced by
a fresh attempt. `Prefetcher` fetches the shards a plan needs next and drops those it no
longer needs (plan-aware eviction).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from kohaku_data import storage
from kohaku_data.train.errors import ReaderError

INDEX = "index.json"
_PART = re.compile(r"^\.(?P<name>.+)\.(?P<size>\d+)\.(?P<pid>\d+)\.[0-9a-f]+\.part$")


@dataclass(frozen=True)
class ShardEntry:
    name: str
    size: int
    sha256: str

    @property
    def file(self) -> str:
        """Its file in the cache directory: keyed by content, not by name alone (another dataset's
        shard of the same name is another file; the same bytes are one)."""
        return f"{self.sha256[:16]}.{self.name}"


class ShardCache:
    """Whole shards of the dataset at `location`, kept under `directory` within `limit_bytes`."""

    def __init__(self, location: str | os.PathLike, directory: str | os.PathLike, limit_bytes: int, *,
                 attempts: int = 6, stall_s: float = 30.0, backoff_s: float = 0.2) -> None:
        self.location = normal_location(location)
        self.directory, self.limit_bytes = Path(directory), int(limit_bytes)
        self.attempts, self.stall_s, self.backoff_s = int(attempts), float(stall_s), float(backoff_s)
        (self.directory / ".locks").mkdir(parents=True, exist_ok=True)
        self.entries = _read_entries(self.location)
        too_big = [e for e in self.entries.values() if e.size > self.limit_bytes]
        if too_big:
            raise ReaderError(f"shard {too_big[0].name} has {too_big[0].size} bytes, more than the cache limit "
                              f"{self.limit_bytes}: give a limit of at least the largest shard (a few windows' worth).")

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("location", "directory", "limit_bytes", "attempts", "stall_s",
                                               "backoff_s", "entries")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, name: str, start: int, size: int) -> bytes:
        """`size` bytes of shard `name` from `start`, fetching the shard first if it is not here."""
        file = self._entry(name).file
        while True:
            with self._pinned(file) as path:
                if path is not None:
                    with open(path, "rb") as f:
                        data = os.pread(f.fileno(), size, start)
                    if len(data) != size:
                        raise ReaderError(f"{name} ends before byte {start + size}: the manifest does not fit "
                                          f"the shard; run `kdata verify` on the dataset.")
                    return data
            self.fetch(name)

    @contextlib.contextmanager
    def _pinned(self, file: str) -> Iterator[Path | None]:
        """The shard file's path while a shared lock keeps it from eviction; None if it is not here."""
        with _flocked(self._lock_path(file), fcntl.LOCK_SH):
            path = self.directory / file
            yield path if path.exists() else None

    def fetch(self, name: str, *, evict: bool = True) -> bool:
        """Make shard `name` local (no-op when it is); False when it did not fit and `evict` is off."""
        entry = self._entry(name)
        with _flocked(self._lock_path(entry.file), fcntl.LOCK_EX):
            final = self.directory / entry.file
            if final.exists():
                os.utime(final)
                return True
            part = self._reserve(entry, evict)
            if part is None:
                return False
            try:
                self._download(entry, part)
                os.replace(part, final)
            finally:
                part.unlink(missing_ok=True)
        return True

    def drop(self, name: str) -> bool:
        """Remove shard `name` unless a reader holds it (plan-aware eviction); True if removed."""
        file = self._entry(name).file
        with self._locked_all():
            return self._evict_one(file)

    def holds(self, name: str) -> bool:
        """Whether shard `name` is here, complete."""
        return (self.directory / self._entry(name).file).exists()

    def used_bytes(self) -> int:
        """Bytes of complete shards plus the reservations of fetches in flight."""
        total = 0
        for entry in os.scandir(self.directory):
            m = _PART.match(entry.name)
            if m:
                total += int(m["size"])
            elif not entry.name.startswith("."):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:  # evicted by another process meanwhile
                    pass
        return total

    def cached(self) -> list[str]:
        """The names of this dataset's shards that are here (a shared directory holds others too)."""
        files = {e.name for e in os.scandir(self.directory) if e.is_file() and not e.name.startswith(".")}
        return sorted(name for name in {f.split(".", 1)[-1] for f in files}
                      if name in self.entries and self.entries[name].file in files)

    # -- internals ------------------------------------------------------------------------------------
    def _entry(self, name: str) -> ShardEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise ReaderError(f"{name} is not in {self.location}/{INDEX}: open the cache on the dataset the "
                              f"reader reads.") from None

    def _lock_path(self, file: str) -> Path:
        return self.directory / ".locks" / file

    @contextlib.contextmanager
    def _locked_all(self) -> Iterator[None]:
        with _flocked(self.directory / ".locks" / ".cache", fcntl.LOCK_EX):
            yield

    def _reserve(self, entry: ShardEntry, evict: bool, poll_s: float = 0.05) -> Path | None:
        """A part file whose name reserves `entry.size` bytes, once they fit under the limit."""
        while True:
            with self._locked_all():
                self._remove_dead_parts()
                free = self.limit_bytes - self.used_bytes()
                if free < entry.size and evict:
                    for victim in self._by_age():
                        if free >= entry.size:
                            break
                        size = (self.directory / victim).stat().st_size
                        if self._evict_one(victim):
                            free += size
                if free >= entry.size:
                    part = self.directory / f".{entry.file}.{entry.size}.{os.getpid()}.{secrets.token_hex(4)}.part"
                    part.touch()
                    return part
            if not evict:
                return None
            time.sleep(poll_s)  # every shard is being read: wait for one to be released

    def _by_age(self) -> list[str]:
        """Complete shards, least recently used first."""
        files = [(e.stat().st_mtime_ns, e.name) for e in os.scandir(self.directory)
                 if e.is_file() and not e.name.startswith(".")]
        return [name for _, name in sorted(files)]

    def _evict_one(self, file: str) -> bool:
        """Remove one complete shard file if no reader or fetcher holds its lock (never blocks)."""
        fd = os.open(self._lock_path(file), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path = self.directory / file
            if not path.exists():
                return False
            path.unlink()
            return True
        finally:
            os.close(fd)

    def _remove_dead_parts(self) -> None:
        """Part files of processes that are gone (a killed fetch): their reservation ends."""
        for entry in os.scandir(self.directory):
            m = _PART.match(entry.name)
            if m and not _alive(int(m["pid"])):
                Path(entry.path).unlink(missing_ok=True)

    def _download(self, entry: ShardEntry, part: Path) -> None:
        """The shard into `part`, checked; failing, stalled or corrupt attempts are retried."""
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 5.0))
            scratch = part.with_name(f"{part.name}.{attempt}")
            try:
                _run_within(lambda: self._copy(entry.name, scratch), self.stall_s)
                problem = _check(scratch, entry)
                if not problem:
                    os.replace(scratch, part)
                    return
            except TimeoutError:
                problem = f"no answer within {self.stall_s} s"
            except Exception as exc:  # noqa: BLE001 - any failed GET (storage, client, OS) is retried
                problem = f"{type(exc).__name__}: {exc}"
            scratch.unlink(missing_ok=True)
        raise ReaderError(f"could not fetch {entry.name} from {self.location} in {self.attempts} attempts "
                          f"({problem}): check the storage, then run again (cached shards are kept).")

    def _copy(self, name: str, dest: Path) -> None:
        """One streamed copy of the whole shard (one GET on object storage)."""
        target = storage.join(self.location, name)
        local = storage.local_path(target)
        try:
            if local is not None:
                shutil.copyfile(local, dest)
                return
            fs, path = storage.url_to_fs(target)
            fs.get_file(path, str(dest))
        except BaseException:
            dest.unlink(missing_ok=True)
            raise


def normal_location(location: str | os.PathLike) -> str:
    """A dataset location as caches compare it: a local folder resolved, a URL without a trailing /."""
    local = storage.local_path(location)
    return str(local.resolve()) if local is not None else os.fspath(location).rstrip("/")


def cache_of(dataset: object) -> ShardCache | None:
    """The ShardCache `dataset` reads through (KdataDataset(..., cache=...)), else None; a cache
    opened on another location is refused (it would serve that dataset's shards in its place)."""
    cache = getattr(dataset, "shards", None)
    if not isinstance(cache, ShardCache):
        return None
    location = getattr(dataset, "location", None)
    if location is not None and normal_location(location) != cache.location:
        raise ReaderError(f"the dataset at {location} reads through a ShardCache of {cache.location}: give each "
                          f"dataset a ShardCache of its own location (several may share one directory).")
    return cache


def _check(path: Path, entry: ShardEntry) -> str:
    """'' when `path` holds the shard index.json lists, else what differs."""
    size = path.stat().st_size
    if size != entry.size:
        return f"{size} bytes, index.json says {entry.size}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return "" if digest.hexdigest() == entry.sha256 else "sha256 differs from index.json"


def _run_within(call: Callable[[], None], seconds: float) -> None:
    """Run `call` on a thread; TimeoutError if it has not finished in `seconds` (it is left to
    finish on its own: a GET cannot be cancelled from outside; its file is then left unused)."""
    done: Future = Future()

    def work() -> None:
        try:
            call()
            done.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)

    threading.Thread(target=work, daemon=True).start()
    done.result(timeout=seconds)


def _read_entries(location: str) -> dict[str, ShardEntry]:
    try:
        index = json.loads(storage.read_bytes(storage.join(location, INDEX)))
    except FileNotFoundError:
        raise ReaderError(f"{location} has no {INDEX}: the shard cache needs each shard's size and sha256 "
                          f"from a kdata build.") from None
    return {s["url"]: ShardEntry(s["url"], int(s["filesize"]), s["sha256"]) for s in index["shardlist"]}


@contextlib.contextmanager
def _flocked(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Schedule = list[tuple[str, int, int]]  # (shard name, first batch, last batch), in first-use order
Fetch = tuple[ShardCache, str, int, int]  # (its cache, shard name, first batch, last batch)


class Prefetcher:
    """Fetches a plan's shards ahead of the loop and drops those it has finished with.

    `schedule`: (shard name, first batch, last batch) in first-use order (window.shard_schedule);
    `progress()`: global batches the training loop has received. A shard is fetched once it fits
    without evicting anything, and dropped once progress has passed its last batch.
    `Prefetcher.over(pairs, progress)`: one thread for several (cache, schedule) pairs on one batch
    axis (the datasets of a mix), fetching in first-use order across all of them."""

    def __init__(self, cache: ShardCache, schedule: Schedule, progress: Callable[[], int],
                 poll_s: float = 0.01) -> None:
        self._setup(fetch_queue([(cache, schedule)]), progress, poll_s)

    @classmethod
    def over(cls, schedules: Sequence[tuple[ShardCache, Schedule]], progress: Callable[[], int],
             poll_s: float = 0.01) -> Prefetcher:
        prefetcher = cls.__new__(cls)
        prefetcher._setup(fetch_queue(schedules), progress, poll_s)
        return prefetcher

    def _setup(self, queue: list[Fetch], progress: Callable[[], int], poll_s: float) -> None:
        self.queue, self.progress, self.poll_s = queue, progress, poll_s
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Prefetcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def _run(self) -> None:
        try:
            pending = list(self.queue)
            live: list[tuple[ShardCache, str, int]] = []
            while (pending or live) and not self._stop.is_set():
                done = self.progress()
                for cache, name, last in [x for x in live if x[2] < done]:
                    if cache.drop(name) or not cache.holds(name):
                        live.remove((cache, name, last))
                if pending and pending[0][0].fetch(pending[0][1], evict=False):
                    cache, name, _, last = pending.pop(0)
                    live.append((cache, name, last))
                else:
                    time.sleep(self.poll_s)
        except BaseException as exc:  # noqa: BLE001 - readers fetch on their own; kept for the caller
            self.error = exc


def fetch_queue(schedules: Sequence[tuple[ShardCache, Schedule]]) -> list[Fetch]:
    """The shards of several schedules in first-use order, each file once: a shard that several
    schedules read (one dataset in two stages of a curriculum, one cache shared by two datasets
    of one build, the same bytes in two builds) is fetched at its first use and kept to its last."""
    merged: dict[tuple[Path, str], list] = {}
    for cache, schedule in schedules:
        root = cache.directory.resolve()  # two caches on one folder share its files
        for name, first, last in schedule:
            key = (root, cache._entry(name).file)
            if key in merged:
                item = merged[key]
                item[2], item[3] = min(item[2], int(first)), max(item[3], int(last))
            else:
                merged[key] = [cache, name, int(first), int(last)]
    return [tuple(item) for item in sorted(merged.values(), key=lambda item: item[2])]
