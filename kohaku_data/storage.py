"""One storage interface for every file kdata reads or writes: a local path or an fsspec URL.

    storage.read_range("s3://bucket/danbooru2023/data-0001.tar", offset, size)   # one ranged GET
    storage.commit_bytes("s3://bucket/datasets/x/index.json", data)              # whole or nothing
    with storage.committing(url, exclusive=True) as f:                           # a big file
        f.write(...)                                                            # committed at the end

A *target* is a `Path`, a plain path string, or a URL with a protocol (`s3://`, `gs://`, `hf://`,
`file://`…). Local targets stay on the code paths of `kohaku_data.atomic` (temp file, fsync,
rename, umask permissions); anything else goes through `fsspec.core.url_to_fs`, so s3fs (the `s3`
extra), gcsfs or huggingface_hub work once installed. kdata has no storage settings of its own:
credentials and endpoints come from where users keep them (`AWS_*` variables and files, fsspec's
configuration such as `FSSPEC_S3_ENDPOINT_URL` or `~/.config/fsspec/*.json`).

Commit rules, per backend — a reader sees the old file or the new one, never a part of one:
- a disk: write a temporary file beside the target, fsync, rename it over the target;
- object storage (no rename there): one write of the final object — a single PUT, or a multipart
  upload that the store only shows once completed. `exclusive=True` makes it create-only
  (`If-None-Match: *` on S3; a hard link on a disk), so two writers can never both commit it.

Remote calls that fail in a transient way (a 5xx after botocore's own retries, a dropped
connection) are retried a few times with backoff (KDATA_STORAGE_RETRY_DELAY: the first wait,
0.5 s by default); a missing bucket or refused credentials is a
`StorageError` of one sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

from kohaku_data import atomic
from kohaku_data.errors import KdataError

Target = str | os.PathLike
T = TypeVar("T")

# Outer retries on top of the client's own (botocore retries a 5xx 4 times): a store that
# answers errors for a few seconds still ends in a finished build. The waits between them are
# 0.5, 1, 2 and 4 s; KDATA_STORAGE_RETRY_DELAY sets the first (each next one doubles, 0 retries
# at once) — the tests set it short, as one may on a local store.
_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
RETRY_DELAY_ENV = "KDATA_STORAGE_RETRY_DELAY"
_LIST_SKIP = (".",)  # names starting with a dot are kdata's own (staging, locks) or hidden files


class StorageError(KdataError):
    """A storage location cannot be read or written (missing bucket, refused credentials…)."""


# -- targets ------------------------------------------------------------------------------------
def is_remote(target: Target) -> bool:
    """True for a URL whose protocol is not the local disk."""
    text = os.fspath(target)
    return "://" in text and not text.startswith("file://")


def local_path(target: Target) -> Path | None:
    """The local path of `target`, or None when it is remote."""
    if is_remote(target):
        return None
    text = os.fspath(target)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(base: Target, *names: str) -> Target:
    """`base / name / …`: a `Path` for local targets, a URL string for remote ones."""
    local = local_path(base)
    if local is not None:
        return local.joinpath(*names)
    text = os.fspath(base).rstrip("/")
    return "/".join([text, *(n.strip("/") for n in names if n)])


def name_of(target: Target) -> str:
    return PurePosixPath(os.fspath(target).rstrip("/")).name


def parent_of(target: Target) -> Target:
    local = local_path(target)
    if local is not None:
        return local.parent
    text = os.fspath(target).rstrip("/")
    return text.rsplit("/", 1)[0]


def display(target: Target) -> str:
    return os.fspath(target)


def url_to_fs(target: Target) -> tuple[Any, str]:
    """fsspec filesystem and in-filesystem path of a remote target (one clear error if the
    protocol needs a package that is not installed)."""
    try:
        from fsspec.core import url_to_fs as _url_to_fs
    except ImportError:
        raise StorageError(
            f"{display(target)} is a URL, which needs fsspec: pip install s3fs (from a kohaku-data checkout: pip install '.[s3]'; or gcsfs, "
            "huggingface_hub for gs://, hf://)"
        ) from None
    try:
        # No listing cache: another process (a task, a worker, a second driver) writes into the
        # folders this one lists, and a cached listing would call its new objects missing.
        return _url_to_fs(os.fspath(target), use_listings_cache=False)
    except (ImportError, ValueError) as exc:
        protocol = os.fspath(target).split("://", 1)[0]
        hint = "pip install s3fs (from a kohaku-data checkout: pip install '.[s3]')" if protocol in ("s3", "s3a") else f"install the fsspec backend for {protocol}://"
        raise StorageError(f"cannot open {display(target)} ({exc}): {hint}") from None


# -- reads --------------------------------------------------------------------------------------
def exists(target: Target) -> bool:
    local = local_path(target)
    if local is not None:
        return local.exists()
    fs, path = url_to_fs(target)
    if _remote(target, "look up", lambda: fs.exists(path)):
        return True
    _check_bucket(target, fs, path)
    return False


def _check_bucket(target: Target, fs: Any, path: str) -> None:
    """A missing object may mean a missing bucket: say so (one listing of the bucket)."""
    bucket = path.split("/", 1)[0]
    if bucket and bucket != path.rstrip("/"):
        with contextlib.suppress(FileNotFoundError):
            _remote(target, "look up", lambda: fs.ls(bucket, detail=False, refresh=True))


def is_file(target: Target) -> bool:
    local = local_path(target)
    if local is not None:
        return local.is_file()
    fs, path = url_to_fs(target)
    return _remote(target, "look up", lambda: fs.isfile(path))


def is_dir(target: Target) -> bool:
    local = local_path(target)
    if local is not None:
        return local.is_dir()
    fs, path = url_to_fs(target)
    return _remote(target, "look up", lambda: fs.isdir(path))


def size(target: Target) -> int:
    """Size in bytes; FileNotFoundError when there is no such file."""
    local = local_path(target)
    if local is not None:
        return local.stat().st_size
    fs, path = url_to_fs(target)
    return int(_remote(target, "look up", lambda: fs.size(path)))


def info(target: Target) -> dict[str, Any]:
    """What the store says about one file without reading it (size, and on some stores a hash:
    the Hub reports `lfs.sha256`)."""
    local = local_path(target)
    if local is not None:
        return {"size": local.stat().st_size, "type": "file" if local.is_file() else "directory"}
    fs, path = url_to_fs(target)
    return dict(_remote(target, "look up", lambda: fs.info(path)))


def read_bytes(target: Target) -> bytes:
    """The whole file; FileNotFoundError when there is none."""
    local = local_path(target)
    if local is not None:
        return local.read_bytes()
    fs, path = url_to_fs(target)
    return _remote(target, "read", lambda: fs.cat_file(path))


def read_parquet(target: Target, columns: list[str] | None = None) -> Any:
    """Those columns of a parquet file as a polars frame, the others never read: a local file by
    path; a remote one through fsspec.parquet, which reads the footer, then only those columns'
    chunks, by concurrent coalesced ranges, for pyarrow to decode (polars would read a file
    object whole, and captions are most of a manifest's bytes; bench_manifest_read)."""
    import polars as pl

    local = local_path(target)
    if local is not None:
        return pl.read_parquet(local, columns=columns)
    import pyarrow.parquet as pq
    from fsspec.parquet import open_parquet_file

    fs, path = url_to_fs(target)

    def read() -> Any:
        # the footer's first read as pyarrow's own (64 KiB; a bigger footer takes a second one)
        with open_parquet_file(path, fs=fs, columns=columns, engine="pyarrow", footer_sample_size=1 << 16) as f:
            return pl.from_arrow(pq.read_table(f, columns=columns))

    return _remote(target, "read", read)


def parquet_schema(target: Target) -> dict[str, Any]:
    """A parquet file's column types (polars'); a remote file's footer only."""
    import polars as pl

    local = local_path(target)
    if local is not None:
        return dict(pl.read_parquet_schema(local))
    import pyarrow.parquet as pq

    fs, path = url_to_fs(target)

    def read() -> dict[str, Any]:
        with fs.open(path, "rb", cache_type="none") as f:
            return dict(pl.from_arrow(pq.read_schema(f).empty_table()).schema)

    return _remote(target, "read", read)


def read_range(target: Target, start: int, length: int) -> bytes:
    """`length` bytes from `start` (fewer only at the end of the file): one ranged request on
    object storage, so a tar member is read without the rest of its tar."""
    local = local_path(target)
    if local is not None:
        with open(local, "rb") as f:
            f.seek(start)
            return f.read(length)
    if length <= 0:
        return b""
    fs, path = url_to_fs(target)
    return _remote(target, "read", lambda: _cat_range(fs, path, start, start + length))


def _cat_range(fs: Any, path: str, start: int, end: int) -> bytes:
    """A ranged GET that reads like a file: a range starting at or past the end (an empty or
    cut-short object; S3 answers 416 "not satisfiable") is no bytes, not an error."""
    try:
        return fs.cat_file(path, start=start, end=end)
    except OSError as exc:
        if _past_end(exc):
            return b""
        raise


def _past_end(exc: OSError) -> bool:
    text = str(exc).lower()
    return "416" in text or ("range" in text and "satisfiable" in text)


@contextlib.contextmanager
def open_read(target: Target, *, block_size: int = 8 << 20) -> Iterator[IO[bytes]]:
    """A sequential reader (large blocks: a tar streams through in few requests)."""
    local = local_path(target)
    if local is not None:
        with open(local, "rb", buffering=block_size) as f:
            yield f
        return
    fs, path = url_to_fs(target)
    f = _remote(target, "open", lambda: fs.open(path, "rb", block_size=block_size, cache_type="readahead"))
    try:
        with f:
            yield f
    except (PermissionError, FileNotFoundError):
        raise
    except OSError as exc:
        raise _storage_error(target, "read", exc) from exc


@contextlib.contextmanager
def fetched(targets: list[Target]) -> Iterator[list[Path | None]]:
    """Local paths holding the bytes of `targets`, for code that needs a file on disk (a tar
    read by tarfile): local targets are themselves, remote ones are streamed into one temporary
    folder (under their own names: a tar and its index stay side by side) that is removed
    afterwards. A target that does not exist gives None."""
    with tempfile.TemporaryDirectory(prefix=".kdata-fetch-") as tmp:
        out: list[Path | None] = []
        for i, target in enumerate(targets):
            local = local_path(target)
            if local is not None:
                out.append(local if local.exists() else None)
                continue
            copy = Path(tmp) / name_of(target)
            if copy.exists():  # two targets of one name: keep them apart
                copy = Path(tmp) / str(i) / name_of(target)
                copy.parent.mkdir()
            fs, path = url_to_fs(target)
            try:
                _remote(target, "read", lambda: fs.get_file(path, str(copy)))
            except FileNotFoundError:
                copy.unlink(missing_ok=True)
                out.append(None)
                continue
            out.append(copy)
        yield out


def list_files(root: Target) -> list[tuple[str, int]]:
    """Every file under `root`, recursively: (path relative to root, size), sorted by path.
    Names that start with a dot (and whatever is inside such folders) are left out."""
    local = local_path(root)
    if local is not None:
        return _list_local(local)
    fs, path = url_to_fs(root)
    found = _remote(root, "list", lambda: fs.find(path, detail=True))
    base = path.rstrip("/") + "/"
    out = []
    for name, meta in found.items():
        if meta.get("type") != "file" or not name.startswith(base):
            continue
        rel = name[len(base):]
        if not any(part.startswith(_LIST_SKIP) for part in rel.split("/")):
            out.append((rel, int(meta["size"])))
    return sorted(out)


def _list_local(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(_LIST_SKIP)]
        for name in filenames:
            if not name.startswith(_LIST_SKIP):
                path = Path(dirpath) / name
                out.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sorted(out)


def list_names(folder: Target) -> list[str]:
    """Names directly inside `folder` (files and folders; empty when it does not exist)."""
    local = local_path(folder)
    if local is not None:
        return sorted(p.name for p in local.iterdir()) if local.is_dir() else []
    fs, path = url_to_fs(folder)
    try:
        entries = _remote(folder, "list", lambda: fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []
    return sorted(name_of(e) for e in entries if e.rstrip("/") != path.rstrip("/"))


# -- writes -------------------------------------------------------------------------------------
def commit_bytes(target: Target, data: bytes, *, exclusive: bool = False, durable: bool = True) -> None:
    """Write the whole file at once: readers see the old one or this one.

    `exclusive`: create-only; FileExistsError when the file is already there.
    `durable` (disks): fsync before the rename — for files whose presence is a promise."""
    local = local_path(target)
    if local is None:
        fs, path = url_to_fs(target)
        mode = "create" if exclusive else "overwrite"
        _remote(target, "write", lambda: fs.pipe_file(path, data, mode=mode))
        return
    if not exclusive:
        atomic.write_atomic(local, data, durable=durable)
        return
    with _local_exclusive(local) as tmp, open(tmp, "xb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def committing(target: Target, *, exclusive: bool = False, durable: bool = True) -> Iterator[IO[bytes]]:
    """A file to write `target` through; committed whole when the block ends normally, nothing
    written when it raises. On object storage the bytes are spooled to a local temporary file
    first, so a failed upload can be retried and the object appears in one write."""
    local = local_path(target)
    if local is not None:
        manager = _local_exclusive(local) if exclusive else atomic.replacing(local)
        with manager as tmp, open(tmp, "xb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        return
    fs, path = url_to_fs(target)
    with tempfile.NamedTemporaryFile(prefix=".kdata-upload-", suffix=".part") as spool:
        yield spool
        spool.flush()
        mode = "create" if exclusive else "overwrite"
        _remote(target, "write", lambda: fs.put_file(spool.name, path, mode=mode))


@contextlib.contextmanager
def _local_exclusive(path: Path) -> Iterator[Path]:
    """Like `atomic.replacing`, but the final step is a hard link: it fails when `path` exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        os.link(tmp, path)  # FileExistsError when another writer got there first
    finally:
        tmp.unlink(missing_ok=True)


def put_file(local: Path, target: Target, *, exclusive: bool = False) -> None:
    """Copy a finished local file to `target`, committed whole (see `committing`)."""
    dest = local_path(target)
    if dest is not None:
        with open(local, "rb") as src, committing(dest, exclusive=exclusive) as f:
            shutil.copyfileobj(src, f, 1 << 22)
        return
    fs, path = url_to_fs(target)
    mode = "create" if exclusive else "overwrite"
    _remote(target, "write", lambda: fs.put_file(str(local), path, mode=mode))


def publish(work: Path, target: Target, *, last: str, skip: tuple[str, ...] = (".build.lock",)) -> list[str]:
    """Make the remote `target` hold what the local folder `work` holds: first `last` is removed
    there (so a half-published target is never marked complete), then every file is uploaded
    whole, objects of an earlier version that `work` lacks are removed, and `last` is uploaded
    at the very end. Names starting with a dot and `skip` stay local. Returns the names."""
    remove(join(target, last))
    names = [rel for rel, _ in list_files(work) if rel not in skip and rel != last]
    for name in names:
        put_file(work / name, join(target, name))
    keep = {*names, last}
    for name, _ in list_files(target):
        if name not in keep:
            remove(join(target, name))
    put_file(work / last, join(target, last))
    return [*names, last]


def remove(target: Target, *, missing_ok: bool = True) -> None:
    local = local_path(target)
    if local is not None:
        local.unlink(missing_ok=missing_ok)
        return
    fs, path = url_to_fs(target)
    try:
        _remote(target, "remove", lambda: fs.rm_file(path))
    except FileNotFoundError:
        if not missing_ok:
            raise


def remove_tree(target: Target) -> None:
    """Remove a folder and everything under it (nothing when it does not exist)."""
    local = local_path(target)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    fs, path = url_to_fs(target)
    with contextlib.suppress(FileNotFoundError):
        _remote(target, "remove", lambda: fs.rm(path, recursive=True))


def make_dirs(target: Target) -> None:
    """Create a local folder (object stores have no folders: nothing to do there)."""
    local = local_path(target)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)


def local_work_dir(target: Target) -> Path:
    """A local folder that belongs to one remote `target` (this user's cache, named after the
    URL): where a re-caption prepares its output and keeps its one-writer lock, and where a
    build with dedup keeps its hash cache. (A build's staging lives beside its output, and its
    one-driver lease there: `assembly/lease.py`.)"""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdata" / "work"
    folder = cache / hashlib.sha256(display(target).rstrip("/").encode()).hexdigest()[:32]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_lock_path(target: Target) -> Path:
    """Where the one-build-per-output lock of `target` lives: inside a local folder, or for a
    remote output in its `local_work_dir`."""
    local = local_path(target)
    return (local if local is not None else local_work_dir(target)) / ".build.lock"


# -- errors and retries ---------------------------------------------------------------------------
def _remote(target: Target, action: str, call: Callable[[], T]) -> T:
    """Run one remote call: transient failures retried, the rest made into one sentence.
    FileNotFoundError of a key (not of a bucket) and FileExistsError pass through unchanged:
    callers decide what a missing file means."""
    for delay in (*_retry_delays(), None):
        try:
            return call()
        except FileExistsError:
            raise
        except FileNotFoundError as exc:
            if _is_bucket_error(exc):
                raise _storage_error(target, action, exc) from exc
            raise
        except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            raise _storage_error(target, action, exc) from exc
        except Exception as exc:  # noqa: BLE001 - transient: an OSError, or the client's own (botocore…)
            if not _transient(exc):
                raise
            if delay is None:
                raise _storage_error(target, action, exc) from exc
            time.sleep(delay)
    raise AssertionError("unreachable")


def _retry_delays() -> tuple[float, ...]:
    """The waits before each outer retry: `_RETRY_DELAYS`, or from KDATA_STORAGE_RETRY_DELAY
    (read at each call, so a process that sets it later still gets it)."""
    text = os.environ.get(RETRY_DELAY_ENV, "").strip()
    if not text:
        return _RETRY_DELAYS
    try:
        first = float(text)
    except ValueError:
        first = -1.0
    if not 0 <= first < float("inf"):  # also NaN
        raise StorageError(f"{RETRY_DELAY_ENV}={text!r} is not a number of seconds (0 or more; unset: 0.5)")
    return tuple(first * 2**i for i in range(len(_RETRY_DELAYS)))


# HTTP clients under fsspec backends raise their own errors for dropped connections and bad
# answers (botocore's HTTPClientError is no OSError): those are worth a retry too.
_CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "huggingface_hub")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.split(".")[0] in _CLIENT_MODULES


def _is_bucket_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "bucket" in text and ("not exist" in text or "nosuchbucket" in text)


def _storage_error(target: Target, action: str, exc: BaseException) -> StorageError:
    where = display(target)
    if isinstance(exc, FileNotFoundError) and _is_bucket_error(exc):
        bucket = where.split("://", 1)[-1].split("/", 1)[0]
        return StorageError(f"cannot {action} {where}: the bucket {bucket!r} does not exist (check the URL)")
    if isinstance(exc, PermissionError):
        return StorageError(
            f"cannot {action} {where}: access denied — check the credentials (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials) and the endpoint (FSSPEC_S3_ENDPOINT_URL)"
        )
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageError(
        f"cannot {action} {where} ({detail}); the work finished so far is kept: run the same command again to resume"
    )
