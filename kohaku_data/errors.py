"""The errors of kdata. Every error raised on bad input says what to do about it.

A failed write (full disk, file-size limit, quota, read-only file system, permissions) is not
raised as a kdata error where it happens: it can surface from any writer (Python's own files,
sqlite, polars' Rust writers, a worker process), so `write_problem` recognises it afterwards, at
the command's edge, and the CLI turns it into one sentence.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from dataclasses import dataclass

from kohaku_data.atomic import WRITING_NOTE


class KdataError(Exception):
    """An error the CLI prints as one clear sentence (no traceback) and exits non-zero on."""


#: errno → what it means for the user, for the write failures kdata explains.
WRITE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file-size limit was reached",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission was denied",
}
# sqlite reports write failures by its own result codes (no errno reaches Python): primary
# codes for a full disk or a read-only file, one extended code for a failed write().
_SQLITE_PRIMARY = {13: "the disk is full", 8: "the database file or its folder is read-only"}
_SQLITE_EXTENDED = {778: "the disk refused a write (it is full, or a file-size limit was reached)"}
_OS_ERROR_CODE = re.compile(r"os error (\d+)")  # how Rust writers (polars) report an errno


@dataclass(frozen=True)
class WriteProblem:
    """A write that failed for a reason outside kdata: where (when known) and why."""

    reason: str
    path: str | None = None

    def sentence(self, kept: str, target: str = "the output") -> str:
        """`kept`: what survives the failure; `target`: what was being written, when no file is named."""
        where = f"could not write {self.path or target}"
        fix = "fix the permissions" if "permission" in self.reason or "read-only" in self.reason else "free some space"
        kept = f" {kept.rstrip('.')}." if kept else ""
        return f"{where}: {self.reason}.{kept} Then {fix} and rerun the same command: it resumes."


def write_problem(exc: BaseException) -> WriteProblem | None:
    """The write failure behind `exc` (itself or any exception in its cause/context chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _one_write_problem(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _one_write_problem(exc: BaseException) -> WriteProblem | None:
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    if code is not None:
        reason = _SQLITE_EXTENDED.get(code) or _SQLITE_PRIMARY.get(code & 0xFF)
        return WriteProblem(reason) if reason else None
    code = exc.errno if isinstance(exc, OSError) and exc.errno is not None else _os_error_code(str(exc))
    if code not in WRITE_ERRNOS:
        return None
    return WriteProblem(WRITE_ERRNOS[code], _written_path(exc))


def _os_error_code(text: str) -> int | None:
    match = _OS_ERROR_CODE.search(text)
    return int(match.group(1)) if match else None


def _written_path(exc: BaseException) -> str | None:
    """The file `atomic.name_failed_write` noted on the error (the one the user knows), else the
    file name the error carries."""
    notes = [n for n in getattr(exc, "__notes__", ()) if n.startswith(WRITING_NOTE)]
    if notes:
        return notes[-1].removeprefix(WRITING_NOTE)
    return exc.filename if isinstance(exc, OSError) and isinstance(exc.filename, str) else None
