"""kohaku_data.storage on a disk (the S3 side is tests/test_s3.py): whole-or-nothing commits,
create-only writes, ranged reads, listings, and URL arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kohaku_data import storage


def test_commit_bytes_replaces_whole_and_exclusive_refuses_an_existing_file(tmp_path):
    target = tmp_path / "a" / "index.json"
    storage.commit_bytes(target, b"one")
    storage.commit_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(FileExistsError):
        storage.commit_bytes(target, b"three", exclusive=True)
    assert target.read_bytes() == b"two"
    storage.commit_bytes(tmp_path / "a" / "new.json", b"x", exclusive=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["index.json", "new.json"], "no temp files left"


def test_committing_writes_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "shard.tar"
    with pytest.raises(RuntimeError):
        with storage.committing(target) as f:
            f.write(b"half a shard")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with storage.committing(target, exclusive=True) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask()), "the umask's permissions, as atomic.py gives"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_ranges_listings_and_removal(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"0123456789")
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "x").write_bytes(b"kdata's own")
    (tmp_path / "a.txt").write_bytes(b"a")
    assert storage.read_range(tmp_path / "sub" / "b.bin", 3, 4) == b"3456"
    assert storage.read_range(tmp_path / "sub" / "b.bin", 8, 10) == b"89"  # short only at the end
    assert storage.list_files(tmp_path) == [("a.txt", 1), ("sub/b.bin", 10)]
    assert storage.list_names(tmp_path) == [".staging", "a.txt", "sub"]
    assert storage.size(tmp_path / "a.txt") == 1 and storage.is_dir(tmp_path / "sub")
    storage.remove_tree(tmp_path / "sub")
    storage.remove(tmp_path / "gone.txt")  # missing is fine
    assert not storage.exists(tmp_path / "sub")
    with storage.fetched([tmp_path / "a.txt", tmp_path / "nope"]) as (here, missing):
        assert here == tmp_path / "a.txt" and missing is None


def test_publish_mirrors_a_folder_with_the_marker_last(tmp_path):
    work, target = tmp_path / "work", tmp_path / "target"
    (work / "card").mkdir(parents=True)
    for name, data in {"x-000000.tar": b"t", "card/p.png": b"p", "dataset.lock": b"L", ".build.lock": b""}.items():
        (work / name).write_bytes(data)
    target.mkdir()
    (target / "x-000001.tar").write_bytes(b"stale")
    names = storage.publish(work, target, last="dataset.lock")
    assert names[-1] == "dataset.lock"
    assert storage.list_files(target) == [("card/p.png", 1), ("dataset.lock", 1), ("x-000000.tar", 1)]


def test_urls_and_paths():
    assert storage.is_remote("s3://b/k") and not storage.is_remote("/data/x") and not storage.is_remote("file:///x")
    assert storage.local_path("file:///data/x") == Path("/data/x")
    assert storage.join("s3://b/datasets/", "x", "index.json") == "s3://b/datasets/x/index.json"
    assert storage.join(Path("/d"), "x") == Path("/d/x")
    assert storage.parent_of("s3://b/datasets/x") == "s3://b/datasets" and storage.name_of("s3://b/d/x/") == "x"
    assert storage.local_lock_path("/d/out") == Path("/d/out/.build.lock")


def test_a_protocol_without_its_package_is_one_sentence():
    with pytest.raises(storage.StorageError, match="install the fsspec backend for nosuchproto://"):
        storage.exists("nosuchproto://bucket/x")
