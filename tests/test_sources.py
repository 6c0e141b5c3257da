import io
import pickle
import tarfile

import pytest

from kohaku_data.sources import SourceError, open_source, read_entry


def _add(tar: tarfile.TarFile, name: str, data: bytes, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def test_folder_nested_files_sorted_by_id(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "30.png").write_bytes(b"thirty")
    (tmp_path / "4.JPG").write_bytes(b"four")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "cover.jpg").write_bytes(b"x")
    source = open_source(tmp_path)
    entries = source.entries()
    assert [(e.key, e.name, e.ext) for e in entries] == [(4, "4.JPG", "jpg"), (30, "a/b/30.png", "png")]
    assert [read_entry(e) for e in entries] == [b"four", b"thirty"]
    assert {(r.name, r.reason) for r in source.rejects} == {
        ("notes.txt", "unsupported_extension"), ("cover.jpg", "not_a_post_id"),
    }


def test_tar_members_read_without_unpacking_and_updates_win(tmp_path):
    with tarfile.open(tmp_path / "data-0001.tar", "w") as tar:
        _add(tar, "1001.jpg", b"old 1001")
        _add(tar, "prefix/2001.png", b"two thousand one")
    (tmp_path / "updates").mkdir()
    (tmp_path / "updates" / "1001.webp").write_bytes(b"new 1001")
    entries = open_source(tmp_path).entries()
    assert [(e.key, e.name) for e in entries] == [
        (1001, "updates/1001.webp"), (2001, "data-0001.tar:prefix/2001.png"),
    ]
    assert read_entry(entries[0]) == b"new 1001"
    assert read_entry(entries[1]) == b"two thousand one"
    # entries travel to worker processes
    assert read_entry(pickle.loads(pickle.dumps(entries[1]))) == b"two thousand one"


def test_unsafe_members_links_and_duplicates_are_rejected(tmp_path):
    with tarfile.open(tmp_path / "data-0002.tar", "w") as tar:
        _add(tar, "../5.jpg", b"escape")
        _add(tar, "/abs/6.jpg", b"absolute")
        _link(tar, "7.jpg", "/etc/passwd", tarfile.SYMTYPE)
        _link(tar, "8.jpg", "2.jpg", tarfile.LNKTYPE)
        _add(tar, "2.jpg", b"ok")
    (tmp_path / "2.png").write_bytes(b"second copy")
    source = open_source(tmp_path)
    assert [(e.key, e.name) for e in source.entries()] == [(2, "2.png")]
    reasons = sorted((r.name, r.reason) for r in source.rejects)
    assert reasons == [
        ("data-0002.tar:../5.jpg", "unsafe_member_name"),
        ("data-0002.tar:/abs/6.jpg", "unsafe_member_name"),
        ("data-0002.tar:2.jpg", "duplicate_key"),
        ("data-0002.tar:7.jpg", "tar_link"),
        ("data-0002.tar:8.jpg", "tar_link"),
    ]


def test_truncated_tar_keeps_complete_members(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "1.png", b"a" * 600)
        _add(tar, "2.png", b"b" * 5000)
    whole = buf.getvalue()
    (tmp_path / "data-0000.tar").write_bytes(whole[: 512 + 1024 + 512 + 1000])
    source = open_source(tmp_path)
    assert [e.key for e in source.entries()] == [1]
    assert read_entry(source.entries()[0]) == b"a" * 600
    assert any(r.reason in {"corrupt_tar_member", "corrupt_tar"} for r in source.rejects)


def test_garbage_tar_is_a_reject_not_a_crash(tmp_path):
    (tmp_path / "data-0003.tar").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "9.png").write_bytes(b"fine")
    source = open_source(tmp_path)
    assert [e.key for e in source.entries()] == [9]
    assert [(r.name, r.reason) for r in source.rejects] == [("data-0003.tar", "corrupt_tar")]


def test_missing_source_and_changed_file(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "3.png").write_bytes(b"12345")
    entry = open_source(tmp_path).entries()[0]
    (tmp_path / "3.png").write_bytes(b"12")
    with pytest.raises(SourceError, match="cut short"):
        read_entry(entry)


def test_fingerprint_follows_inputs(tmp_path):
    (tmp_path / "1.png").write_bytes(b"x")
    first = open_source(tmp_path).fingerprint()
    assert open_source(tmp_path).fingerprint() == first
    (tmp_path / "2.png").write_bytes(b"y")
    assert open_source(tmp_path).fingerprint() != first


# -- hfutils-form indexes beside the tars ---------------------------------------------------------
def _three_member_tar(path):
    with tarfile.open(path, "w") as tar:
        _add(tar, "11.jpg", b"eleven" * 100)
        _add(tar, "12.png", b"twelve" * 300)
        _add(tar, "notes/readme.md", b"not an image")


def test_streamed_index_is_hfutils_form_with_git_blob_hash(tmp_path):
    import hashlib
    import subprocess

    from kohaku_data import tar_index

    tar = tmp_path / "data-0007.tar"
    _three_member_tar(tar)
    data = tar.read_bytes()
    scan = tar_index.scan_tar(tar, len(data))  # what a tar behind a URL gets (tests/test_s3.py)
    index = scan.index
    git = subprocess.run(["git", "hash-object", str(tar)], capture_output=True, text=True)
    assert index["hash"] == git.stdout.strip()  # what the Hub shows for the file
    assert index["hash_lfs"] == hashlib.sha256(data).hexdigest() and index["filesize"] == len(data)
    assert list(index["files"]) == ["11.jpg", "12.png", "notes/readme.md"]  # tar order, every regular member
    for meta in index["files"].values():
        member = data[meta["offset"]:meta["offset"] + meta["size"]]
        assert hashlib.sha256(member).hexdigest() == meta["sha256"]
    assert scan.members == tar_index.walk_headers(tar, len(data)).members  # the same as the header walk


def test_an_index_beside_the_tar_that_fits_is_used_instead_of_the_tar(tmp_path):
    import json

    from kohaku_data import tar_index

    tar = tmp_path / "data-0008.tar"
    _three_member_tar(tar)
    size = tar.stat().st_size
    first = open_source(tmp_path).entries()
    assert not (tmp_path / "data-0008.json").exists(), "a local tar is read from its headers: no index written"
    # what a user downloads from the Hub: here only one member listed, so its use shows
    one = {"filesize": size, "hash": "x", "hash_lfs": "y",
           "files": {"12.png": {"offset": first[1].offset, "size": first[1].size, "sha256": "z"}}}
    (tmp_path / "data-0008.json").write_text(json.dumps(one))
    source = open_source(tmp_path)
    assert [(e.key, e.offset, e.size) for e in source.entries()] == [(12, first[1].offset, first[1].size)]
    assert not any("data-0008.json" in r.name for r in source.rejects), "an index is no input"
    # an index of another file (the size differs) is not trusted: the tar itself answers
    (tmp_path / "data-0008.json").write_text(json.dumps({**one, "filesize": size + 512}))
    assert [e.key for e in open_source(tmp_path).entries()] == [11, 12]
    assert tar_index.load_index(tar, size) is None


def test_damaged_tars_get_no_index_so_their_rejects_come_back(tmp_path):
    from kohaku_data import tar_index

    with tarfile.open(tmp_path / "data-0009.tar", "w") as tar:
        _add(tar, "1.png", b"a" * 600)
        _link(tar, "2.jpg", "1.png", tarfile.SYMTYPE)
    scan = tar_index.scan_tar(tmp_path / "data-0009.tar", (tmp_path / "data-0009.tar").stat().st_size)
    assert scan.index is None and [m[0] for m in scan.members] == ["1.png"]
    assert [(r[0], r[1]) for r in scan.refused] == [("2.jpg", "tar_link")]


def test_source_is_columnar_and_entries_follow_its_rows(tmp_path):
    _three_member_tar(tmp_path / "data-0001.tar")
    (tmp_path / "5.webp").write_bytes(b"five")
    source = open_source(tmp_path)
    assert source.files.columns == ["key", "container", "member", "offset", "size"]
    assert source.files["key"].to_list() == [5, 11, 12] and len(source) == 3
    assert [source.container_path(c) for c in source.files["container"]] == [
        str(tmp_path / "5.webp"), str(tmp_path / "data-0001.tar"), str(tmp_path / "data-0001.tar")]
    single = open_source(tmp_path / "data-0001.tar")  # a tar as the whole source
    assert [(e.key, e.name) for e in single.entries()] == [(11, "data-0001.tar:11.jpg"), (12, "data-0001.tar:12.png")]
