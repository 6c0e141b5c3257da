"""kohaku_data.atomic: whole files or nothing, with the usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kohaku_data.atomic import replacing, write_atomic


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_get_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    """Datasets are shared with trainers on other accounts: a temp file's 0600 must not stick."""
    write_atomic(tmp_path / "a.json", b"{}", durable=True)
    with replacing(tmp_path / "b.parquet") as tmp:
        tmp.write_bytes(b"x")
    for name in ("a.json", "b.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_an_error_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
