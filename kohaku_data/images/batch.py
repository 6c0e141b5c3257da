"""`run_images`: a folder or danbooru2023 tar(s) → `OUT/<name>.webp|png` + `OUT/records.parquet`.

Inputs come from `kohaku_data.sources.open_source` (`<id>.<ext>` files and tars); plain files in a
folder whose names are not post ids are processed too (output named after their relative path).
Workers are processes that read their input and run `process_image`; the main process writes
outputs in input order, so the outputs and records are identical for any worker count. At most
`4 * workers` images are in flight (bounded memory on millions of inputs). A worker that dies
(a decoder crash) costs only the image that killed it: it is retried alone, then recorded as
"worker_crashed".
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from kohaku_data.atomic import replacing, write_atomic
from kohaku_data.config import ImageConfig
from kohaku_data.images.artifacts import polars_schema as artifact_columns
from kohaku_data.images.stage import ImageResult, process_image
from kohaku_data.progress import progress_bar
from kohaku_data.runtime import worker_pool
from kohaku_data.sources import SourceEntry, SourceError, open_source, read_entry

RECORDS = "records.parquet"
RECORD_SCHEMA = {
    "source": pl.String, "key": pl.Int64, "status": pl.String, "reason": pl.String, "detail": pl.String,
    "output": pl.String, "width": pl.Int32, "height": pl.Int32, "bucket": pl.String,
    "crop_box": pl.List(pl.Int32), "format": pl.String, "mode": pl.String, "source_format": pl.String,
    "source_mode": pl.String, "source_width": pl.Int32, "source_height": pl.Int32, "bytes": pl.Int64,
    "sha256": pl.String,
    # source artifact measures (kohaku_data/images/artifacts.FIELDS), null where they do not apply
    **artifact_columns(),
}


@dataclass(frozen=True)
class Task:
    """One input: a source entry, or a plain file whose name is not a post id."""

    name: str
    key: int | None
    output_stem: str  # relative to OUT, no extension
    entry: SourceEntry | None = None
    path: str | None = None


@dataclass
class BatchSummary:
    total: int = 0
    ok: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason → count
    records: Path | None = None

    def add(self, status: str, reason: str | None) -> None:
        self.total += 1
        if status == "ok":
            self.ok += 1
        else:
            self.rejected[reason or "unknown"] = self.rejected.get(reason or "unknown", 0) + 1


def run_images(src: Path, out: Path, config: ImageConfig, *, workers: int = 1, progress: bool = False) -> BatchSummary:
    """Process every input under `src` into `out`; one records row per input (kept or rejected)."""
    config.bucket_preset(), config.codec_preset()  # fail early on unknown preset names
    tasks, source_rows = list_tasks(Path(src))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, rows, taken = BatchSummary(), list(source_rows), set()
    for row in source_rows:
        summary.add(row["status"], row["reason"])
    todo, dup_rows = _drop_duplicate_outputs(tasks, taken)
    with progress_bar("images", total=len(tasks), enabled=progress) as bar:
        for task, result in zip(todo, _results(todo, config, workers), strict=True):
            rows.append(_store(task, result, out))
            summary.add(result.status, result.reason)
            bar.advance()
        for row in dup_rows:
            rows.append(row)
            summary.add(row["status"], row["reason"])
            bar.advance()
    summary.records = _write_records(rows, out / RECORDS)
    return summary


# -- inputs ----------------------------------------------------------------------------------
def list_tasks(src: Path) -> tuple[list[Task], list[dict]]:
    """Tasks in a stable order, plus records rows for the inputs the source refused."""
    source = open_source(src)
    tasks = [Task(e.name, e.key, _stem(e.name, e.key), entry=e) for e in source.entries()]
    rows = []
    for rej in source.rejects:
        plain = src / rej.name if src.is_dir() and ":" not in rej.name else None
        if rej.reason == "not_a_post_id" and plain is not None and plain.is_file():
            tasks.append(Task(rej.name, None, _stem(rej.name, None), path=str(plain)))
        else:
            rows.append(_row(rej.name, None, status="rejected", reason=rej.reason, detail=rej.detail))
    return tasks, rows


def _stem(name: str, key: int | None) -> str:
    if key is not None:
        return str(key)
    member = PurePosixPath(name.split(":", 1)[-1])
    return member.with_suffix("").as_posix()


def _drop_duplicate_outputs(tasks: list[Task], taken: set[str]) -> tuple[list[Task], list[dict]]:
    keep, dups = [], []
    for task in tasks:
        if task.output_stem in taken:
            dups.append(_row(task.name, task.key, status="rejected", reason="duplicate_output",
                             detail=f"another input already writes {task.output_stem}.*"))
        else:
            taken.add(task.output_stem)
            keep.append(task)
    return keep, dups


# -- work ------------------------------------------------------------------------------------
def work(task: Task, config: ImageConfig) -> ImageResult:
    """Runs in a worker: read the bytes, process them. Never raises."""
    try:
        if task.entry is not None:
            data = read_entry(task.entry)
        else:
            with open(task.path, "rb") as f:
                data = f.read()
    except (SourceError, OSError) as exc:
        return ImageResult("rejected", "read_error", str(exc))
    return process_image(data, config, name=task.name)


def _results(tasks: list[Task], config: ImageConfig, workers: int) -> Iterator[ImageResult]:
    if workers <= 1:
        return (work(t, config) for t in tasks)
    return _Pool(workers, config).run(tasks)


class _Pool:
    """Ordered results from a process pool with a bounded window; survives worker crashes."""

    def __init__(self, workers: int, config: ImageConfig) -> None:
        self.workers, self.config = workers, config
        self.pending: collections.deque[tuple[Task, Future]] = collections.deque()

    def run(self, tasks: Iterable[Task]) -> Iterator[ImageResult]:
        self.pool = worker_pool(self.workers)
        try:
            for task in tasks:
                self.pending.append((task, self.pool.submit(work, task, self.config)))
                if len(self.pending) >= 4 * self.workers:
                    yield self._take()
            while self.pending:
                yield self._take()
        finally:
            self.pool.shutdown(cancel_futures=True)

    def _take(self) -> ImageResult:
        task, future = self.pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            self._restart()
            return self._alone(task)

    def _restart(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.pool = worker_pool(self.workers)
        self.pending = collections.deque((t, self.pool.submit(work, t, self.config)) for t, _ in self.pending)

    def _alone(self, task: Task) -> ImageResult:
        with worker_pool(1) as solo:
            try:
                return solo.submit(work, task, self.config).result()
            except BrokenProcessPool:
                return ImageResult("rejected", "worker_crashed", f"{task.name}: the worker process died on it")


# -- outputs ---------------------------------------------------------------------------------
def _store(task: Task, r: ImageResult, out: Path) -> dict:
    output = None
    if r.status == "ok":
        output = f"{task.output_stem}.{r.output_format}"
        write_atomic(out / output, r.data)
    sw, sh = r.source_size or (None, None)
    return _row(
        task.name, task.key, status=r.status, reason=r.reason, detail=r.detail, output=output,
        width=r.width, height=r.height, bucket=f"{r.bucket[0]}x{r.bucket[1]}" if r.bucket else None,
        crop_box=list(r.crop_box) if r.crop_box else None, format=r.output_format, mode=r.mode,
        source_format=r.source_format, source_mode=r.source_mode, source_width=sw, source_height=sh,
        bytes=len(r.data) if r.data is not None else None, sha256=r.sha256, **(r.artifacts or {}),
    )


def _row(source: str, key: int | None, **values) -> dict:
    row = dict.fromkeys(RECORD_SCHEMA)
    row.update(source=source, key=key, **values)
    return row


def _write_records(rows: list[dict], path: Path) -> Path:
    frame = pl.DataFrame(rows, schema=RECORD_SCHEMA) if rows else pl.DataFrame(schema=RECORD_SCHEMA)
    with replacing(path) as tmp:
        frame.write_parquet(tmp)
    return path
