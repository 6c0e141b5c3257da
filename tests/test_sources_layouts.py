"""The published Danbooru image sets, laid out exactly as on the Hub, read locally and by URL.

- nyanko7/danbooru2023: `original/data-0XXX.tar`, `recent/data-1XXX.tar`,
  `updates/<date>/dataset-<id % 10>.tar`, members `./<id>.<ext>`; ugoira zips, mp4, swf and
  0-byte members inside. Its hfutils indexes live in another repository
  (deepghs/danbooru2023_index) at the same relative paths: `--src-index`.
- deepghs danbooru2024 / danbooru_newest: `images/{id % 1000:04d}.tar` with the index beside.

URLs go through a counting subclass of fsspec's memory filesystem (the generic fsspec path that
`hf://` takes too), so the tests see every request: listings, whole-file reads, ranged reads,
streamed opens.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from kohaku_data import sources, tar_index
from kohaku_data.sample.images import render_post
from kohaku_data.sources import SourceRoot, open_source, read_entry

_MTIME = 1_704_067_200


class CountingMemoryFS(MemoryFileSystem):
    """fsspec's memory store, recording each read: (path, start, end) of `cat_file`, and the
    paths opened for streaming."""

    protocol = "countmem"
    # on the class: fsspec keeps one instance per thread, and sources index tars in threads
    reads: list[tuple[str, int | None, int | None]] = []
    opened: list[str] = []

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("countmem://"):
            path = "memory://" + path[len("countmem://"):]
        return super()._strip_protocol(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.reads.append((self._strip_protocol(path), start, end))
        return super().cat_file(path, start=start, end=end, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            self.opened.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)

    def forget(self) -> None:
        self.reads.clear()
        self.opened.clear()


fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)


@pytest.fixture
def remote(request) -> CountingMemoryFS:
    fs = fsspec.filesystem("countmem")
    fs.forget()
    yield fs
    for path in list(fs.store):
        if path.startswith(f"/{request.node.name}"):
            del fs.store[path]
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not d.startswith(f"/{request.node.name}")]


# -- writing the published layouts ----------------------------------------------------------------
def image(post_id: int) -> bytes:
    return render_post(0, post_id, None).data


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar as the sets ship it: fixed metadata, members in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        if any(name.startswith("./") for name, _ in members):  # `tar -cf x.tar .` lists the folder first
            folder = tarfile.TarInfo("./")
            folder.type, folder.mtime, folder.mode = tarfile.DIRTYPE, _MTIME, 0o755
            tar.addfile(folder)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))


def hfutils_index(tar: Path) -> dict:
    """What deepghs/hfutils `tar_get_index_info` writes (hfutils/index/make.py): a streamed pass,
    `files[tarinfo.name]` for every regular member (names as stored: `./1006.jpg` keeps its
    `./`), `offset` = `tarinfo.offset_data`; `hash` = git blob sha1, `hash_lfs` = sha256."""
    data = tar.read_bytes()
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for info in archive:
            if info.isreg():
                member = data[info.offset_data:info.offset_data + info.size]
                files[info.name] = {"offset": info.offset_data, "size": info.size,
                                    "sha256": hashlib.sha256(member).hexdigest()}
    return {"filesize": len(data), "hash": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest(),
            "hash_lfs": hashlib.sha256(data).hexdigest(), "files": files}


def write_index(tar: Path, where: Path) -> None:
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(json.dumps(hfutils_index(tar)))


def nyanko7_tree(root: Path, index_root: Path | None) -> dict[str, bytes]:
    """nyanko7/danbooru2023 for ids ≡ 6 (mod 1000) and ≡ 6 (mod 10); indexes under `index_root`
    (deepghs/danbooru2023_index's layout). Returns the bytes each kept post must come from."""
    old, new = image(1006), image(10_006)
    trees = {
        "original/data-0006.tar": [("./1006.jpg", old), ("./2006.png", image(2006)),
                                   ("./3006.zip", b"PK\x03\x04ugoira"), ("./4006.mp4", b"\x00\x00\x00\x18ftypmp42"),
                                   ("./5006.swf", b"FWS\x09"), ("./6006.jpg", b""), ("./7006.png", image(7006))],
        "recent/data-1006.tar": [("./9006.webp", image(9006)), ("./7006.png", b"")],
        "updates/20240319/dataset-6.tar": [("./1006.jpg", b"an older update"), ("./8006.gif", image(8006))],
        "updates/20240610/dataset-6.tar": [("./1006.jpg", new), ("./2006.png", b"")],
    }
    for rel, members in trees.items():
        tar = root / rel
        write_tar(tar, members)
        if index_root is not None:
            write_index(tar, index_root / (rel[:-4] + ".json"))
    # 6006's only file is empty: it stays a source entry, so the build rejects it with its reason
    return {1006: new, 2006: image(2006), 6006: b"", 7006: image(7006), 8006: image(8006), 9006: image(9006)}


def deepghs_tree(root: Path) -> dict[int, bytes]:
    """deepghs/danbooru2024(-webp-4Mpixel) and danbooru_newest: `images/XXXX.tar`, index beside."""
    files = {6: image(6), 1006: image(1006), 2017: image(2017)}
    groups: dict[str, list[tuple[str, bytes]]] = {}
    for key, data in files.items():
        groups.setdefault(f"images/{key % 1000:04d}.tar", []).append((f"{key}.webp", data))
    for rel, members in groups.items():
        write_tar(root / rel, members)
        write_index(root / rel, root / (rel[:-4] + ".json"))
    return files


def upload(fs: CountingMemoryFS, local: Path, url_path: str) -> str:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{url_path}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return f"countmem://{url_path.lstrip('/')}"


# -- member names, rejects, winners ---------------------------------------------------------------
def test_nyanko7_layout_with_separate_index_folder(tmp_path):
    expected = nyanko7_tree(tmp_path / "danbooru2023", tmp_path / "danbooru2023_index")
    source = open_source(SourceRoot(str(tmp_path / "danbooru2023"), str(tmp_path / "danbooru2023_index")))
    got = {e.key: (e.name, read_entry(e)) for e in source.entries()}
    assert sorted(got) == sorted(expected)
    assert {k: data for k, (_, data) in got.items()} == expected
    assert got[1006][0] == "updates/20240610/dataset-6.tar:./1006.jpg"  # the newest update
    assert got[2006][0] == "original/data-0006.tar:./2006.png"  # an empty update loses to a real file
    assert got[7006][0] == "original/data-0006.tar:./7006.png"
    reasons = {(r.name, r.reason) for r in source.rejects}
    assert reasons == {
        ("original/data-0006.tar:./3006.zip", "unsupported_extension"),
        ("original/data-0006.tar:./4006.mp4", "unsupported_extension"),
        ("original/data-0006.tar:./5006.swf", "unsupported_extension"),
        ("recent/data-1006.tar:./7006.png", "duplicate_key"),
        ("updates/20240610/dataset-6.tar:./2006.png", "duplicate_key"),  # an empty update is no update
    }
    assert [e.key for e in source.entries() if e.size == 0] == [6006], "empty only where no real copy exists"


def test_member_names_to_post_ids(tmp_path):
    write_tar(tmp_path / "a.tar", [("./11.jpg", b"1"), ("12.png", b"2"), ("images/0013/13.webp", b"3"),
                                  ("./sub/14.JPEG", b"4"), ("./x15.jpg", b"5"), ("./16", b"6"), ("./17.jpg.part", b"7")])
    source = open_source(tmp_path)
    assert [(e.key, e.member, e.ext) for e in source.entries()] == [
        (11, "./11.jpg", "jpg"), (12, "12.png", "png"), (13, "images/0013/13.webp", "webp"), (14, "./sub/14.JPEG", "jpeg")]
    assert {(r.name, r.reason) for r in source.rejects} == {
        ("a.tar:./x15.jpg", "not_a_post_id"), ("a.tar:./16", "unsupported_extension"),
        ("a.tar:./17.jpg.part", "unsupported_extension")}


def test_duplicate_ids_pick_one_winner_whatever_the_listing_order(tmp_path):
    for rel in ("b/data-0001.tar", "a/data-0001.tar", "updates/20240101/x-1.tar", "updates/20231201/x-1.tar"):
        write_tar(tmp_path / rel, [("./21.png", rel.encode())])
    source = open_source(tmp_path)
    [entry] = source.entries()
    assert read_entry(entry) == b"updates/20240101/x-1.tar"
    assert source.rejects == [], "copies replaced by an update are expected"
    (tmp_path / "updates" / "20240101" / "x-1.tar").unlink()
    (tmp_path / "updates" / "20231201" / "x-1.tar").unlink()
    source = open_source(tmp_path)
    assert read_entry(source.entries()[0]) == b"a/data-0001.tar"
    assert [(r.name, r.reason) for r in source.rejects] == [("b/data-0001.tar:./21.png", "duplicate_key")]


def test_deepghs_layout_index_beside_each_tar(tmp_path):
    expected = deepghs_tree(tmp_path)
    source = open_source(tmp_path)
    assert {e.key: read_entry(e) for e in source.entries()} == expected
    assert [e.name for e in source.entries()] == ["images/0006.tar:6.webp", "images/0006.tar:1006.webp",
                                                  "images/0017.tar:2017.webp"]
    assert source.rejects == [], "the .json indexes are no inputs"


# -- by URL: only the selected members are read ---------------------------------------------------
def test_url_with_index_root_reads_indexes_and_selected_members_only(tmp_path, remote, request):
    expected = nyanko7_tree(tmp_path / "d", tmp_path / "i")
    base = f"/{request.node.name}"
    src, idx = upload(remote, tmp_path / "d", f"{base}/d"), upload(remote, tmp_path / "i", f"{base}/i")
    before = set(remote.store)
    source = open_source(SourceRoot(src, idx))
    assert remote.opened == [], "no tar is streamed when its index is given"
    assert all(start is None and path.endswith(".json") for path, start, _ in remote.reads), remote.reads
    assert set(remote.store) == before, "nothing is written into the source or the index folder"
    local = {e.key: e for e in open_source(SourceRoot(str(tmp_path / "d"), str(tmp_path / "i"))).entries()}
    assert [(e.key, e.member, e.offset, e.size) for e in source.entries()] == [
        (e.key, e.member, e.offset, e.size) for e in local.values()]
    remote.forget()
    chosen = [e for e in source.entries() if e.key in (1006, 8006)]
    assert [read_entry(e) for e in chosen] == [expected[1006], expected[8006]]
    assert remote.reads == [(f"{base}/d/{e.name.split(':')[0]}", e.offset, e.offset + e.size) for e in chosen]
    assert remote.opened == []


def test_index_that_does_not_fit_is_ignored_with_a_warning(tmp_path, remote, request, caplog, monkeypatch):
    nyanko7_tree(tmp_path / "d", tmp_path / "i")
    bad = tmp_path / "i" / "recent" / "data-1006.json"
    index = json.loads(bad.read_text())
    bad.write_text(json.dumps({**index, "filesize": index["filesize"] + 512}))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = f"/{request.node.name}"
    src, idx = upload(remote, tmp_path / "d", f"{base}/d"), upload(remote, tmp_path / "i", f"{base}/i")
    with caplog.at_level(logging.WARNING, logger="kohaku_data.tar_index"):
        source = open_source(SourceRoot(src, idx))
    assert [r.getMessage() for r in caplog.records if "data-1006.json" in r.getMessage()], caplog.text
    assert "does not fit" in caplog.text and "filesize" in caplog.text
    assert remote.opened == [f"{base}/d/recent/data-1006.tar"], "only the tar without a fitting index is streamed"
    assert 9006 in {e.key for e in source.entries()}
    # the locally checked copy (same bytes) agrees, and a damaged index is refused alike
    bad.write_text('{"filesize": 3, "files": {"./1.jpg": {"offset": "x"}}}')
    with caplog.at_level(logging.WARNING, logger="kohaku_data.tar_index"):
        local = open_source(SourceRoot(str(tmp_path / "d"), str(tmp_path / "i")))
    assert [e.key for e in local.entries()] == [e.key for e in source.entries()]


def test_read_only_remote_gets_no_index_written_it_is_cached_locally(tmp_path, remote, request, monkeypatch):
    deepghs_tree(tmp_path / "d")
    for json_file in (tmp_path / "d").rglob("*.json"):
        json_file.unlink()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "_READ_ONLY_PROTOCOLS", frozenset({"countmem"}))  # as hf:// is
    src = upload(remote, tmp_path / "d", f"/{request.node.name}/d")
    before = set(remote.store)
    first = open_source(src)
    assert set(remote.store) == before, "no index written into a read-only remote"
    assert len(list((tmp_path / "cache" / "kdata" / "tar-index").glob("*.json"))) == 2
    assert sorted(remote.opened) == [f"/{request.node.name}/d/images/0006.tar", f"/{request.node.name}/d/images/0017.tar"]
    remote.forget()
    again = open_source(src)
    assert remote.opened == [], "the cached index is used next time"
    assert again.files.equals(first.files)


def test_missing_index_root_is_one_sentence(tmp_path):
    deepghs_tree(tmp_path / "d")
    with pytest.raises(sources.SourceError, match="index folder .* does not exist"):
        open_source(tmp_path / "d", tmp_path / "nope")


def test_source_root_is_the_source_path_everywhere():
    root = SourceRoot("s3://b/danbooru2023", "s3://b/danbooru2023_index")
    assert root == "s3://b/danbooru2023" and isinstance(root, str)
    import pickle

    assert pickle.loads(pickle.dumps(root)).index_root == "s3://b/danbooru2023_index"
    assert sources.source_root("x", None) == "x" and type(sources.source_root("x", None)) is str
    assert tar_index.misfit({"filesize": 10, "files": {"a": {"offset": 8, "size": 4}}}, "x.tar", 10)


# -- whole builds: a local mirror and the same tree by URL give the same bytes -------------------------
def nyanko7_from_inputs(inputs, root: Path, index_root: Path) -> None:
    """The build-test images (real DB, real files) repacked as nyanko7/danbooru2023 tars."""
    groups: dict[str, list[tuple[str, bytes]]] = {}
    for path in sorted(inputs.src.rglob("*.*")):
        key = int(path.name.split(".")[0])
        rel = f"original/data-0{key % 1000:03d}.tar" if key % 2 else f"recent/data-1{key % 1000:03d}.tar"
        groups.setdefault(rel, []).append((f"./{path.name}", path.read_bytes()))
    groups.setdefault("original/data-0000.tar", []).append(("./123.zip", b"PK\x03\x04"))
    for rel, members in groups.items():
        write_tar(root / rel, members)
        write_index(root / rel, index_root / (rel[:-4] + ".json"))


def test_build_by_url_equals_local_and_reads_only_selected_members(tmp_path, remote, request):
    from test_build_support import build, folder_bytes, make_inputs, small_recipe

    inputs = make_inputs(tmp_path / "inputs")
    nyanko7_from_inputs(inputs, tmp_path / "d", tmp_path / "i")
    limit = inputs.ids[15]
    recipe = small_recipe(query=f"id:<={limit}")
    local_src = SourceRoot(str(tmp_path / "d"), str(tmp_path / "i"))
    build(type(inputs)(inputs.db, local_src, inputs.ids, inputs.hard), tmp_path / "local", recipe)
    base = f"/{request.node.name}"
    url_src = SourceRoot(upload(remote, tmp_path / "d", f"{base}/d"), upload(remote, tmp_path / "i", f"{base}/i"))
    remote.forget()
    build(type(inputs)(inputs.db, url_src, inputs.ids, inputs.hard), tmp_path / "url", recipe)
    assert folder_bytes(tmp_path / "url") == folder_bytes(tmp_path / "local")
    assert remote.opened == [], "no tar streamed"
    ranged = [(p, s, e) for p, s, e in remote.reads if s is not None]
    whole = [p for p, s, _ in remote.reads if s is None]
    assert all(p.endswith(".json") for p in whole)
    members = {(f"{base}/d/{e.name.split(':')[0]}", e.offset, e.offset + e.size): e.key
               for e in open_source(local_src).entries()}
    read_keys = [members[r] for r in ranged]  # a KeyError: a read that is no whole member
    assert len(set(read_keys)) == len(read_keys), "each member read once"
    import polars as pl

    assert all(k <= limit for k in read_keys), "no member outside the recipe's query is read"
    shipped = set(pl.read_parquet(tmp_path / "url" / "manifest.parquet")["key"].to_list())
    assert shipped <= set(read_keys) and inputs.hard["too_small"] in read_keys
    assert inputs.hard["zero_byte"] not in read_keys, "an empty member needs no request"
    assert len(read_keys) < len(members) // 2



def test_cli_build_with_src_index_and_clean_errors(tmp_path):
    from cli_support import run_kdata
    from test_build_support import make_inputs

    inputs = make_inputs(tmp_path / "inputs", n_posts=12)
    nyanko7_from_inputs(inputs, tmp_path / "d", tmp_path / "i")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "t"\nversion = "1"\n[image]\nbucket = "demo-256"\n')
    args = ["--db", inputs.db, "--recipe", recipe, "--workers", "1", "--no-progress"]
    done = run_kdata("build", "--src", tmp_path / "d", "--src-index", tmp_path / "i", *args, "--out", tmp_path / "o")
    assert done.returncode == 0, done.stderr
    assert "samples" in done.stdout and "md5_mismatch: 1" in done.stdout
    assert not list((tmp_path / "d").rglob("*.json")), "no index written into the source"
    done = run_kdata("build", "--src", tmp_path / "d", "--src-index", tmp_path / "nope", *args, "--out", tmp_path / "o2")
    assert done.returncode != 0 and "index folder" in done.stderr and "does not exist" in done.stderr
    assert not list((tmp_path / "o2").glob("*.tar")) if (tmp_path / "o2").exists() else True
    done = run_kdata("recipe", "check", recipe, "--db", inputs.db, "--src", tmp_path / "d", "--src-index", tmp_path / "i")
    assert done.returncode == 0 and "files to process: 11" in done.stdout, done.stdout + done.stderr


# -- runs of adjacent members: one ranged request for several members ------------------------------
def test_member_runs_group_adjacent_members_within_bounds():
    def member(key, path, offset, size, member="m"):
        return sources.SourceEntry(key, f"{path}:{key}", "png", size, path, member, offset)

    entries = [
        member(1, "a.tar", 1024, 100),          # 0
        member(2, "a.tar", 1636, 100),          # 1: a header (512) after 0
        member(3, "b.tar", 1536, 100),          # 2: another tar
        member(4, "a.tar", 1636 + 100 + 70_000, 100),  # 3: a gap over 64 KiB
        member(5, "a.tar", 2248, 0),            # 4: empty: needs no request
        sources.SourceEntry(6, "6.png", "png", 50, "6.png"),  # 5: a plain file
        member(7, "b.tar", 512, 100),           # 6: before 2 in b.tar, task order aside
    ]
    runs = sources.member_runs(entries)
    assert sorted(map(sorted, runs)) == [[0, 1], [2, 6], [3], [4], [5]]
    assert runs[0] == [0, 1] and [6, 2] in runs, "runs are in offset order, ordered by their first entry"
    assert sorted(map(sorted, sources.member_runs(entries, max_gap=400))) == [[0], [1], [2], [3], [4], [5], [6]]
    assert [0, 1] not in sources.member_runs(entries, max_bytes=711), "a run spans at most max_bytes"
    assert [0, 1] in sources.member_runs(entries, max_bytes=712)


def test_read_entries_equals_read_entry_also_on_a_cut_short_tar(tmp_path, remote, request):
    members = [(f"{k}.png", bytes([k]) * (1000 + k)) for k in range(1, 9)]
    write_tar(tmp_path / "d" / "a.tar", members)
    src = upload(remote, tmp_path / "d", f"/{request.node.name}/d")
    entries = open_source(src).entries()
    remote.forget()
    got = dict(sources.read_entries(entries))
    assert [got[i] for i in range(len(entries))] == [data for _, data in members]
    assert len(remote.reads) == 1, "eight adjacent members: one request"
    assert remote.reads[0][2] - remote.reads[0][1] == entries[-1].offset + entries[-1].size - entries[0].offset
    # cut short after the 6th member: the run's read is short, so each member is read alone and
    # gets what read_entry gives it (bytes, or the same error)
    path = f"/{request.node.name}/d/a.tar"
    remote.pipe_file(path, remote.cat_file(path)[:entries[5].offset + entries[5].size])
    got = dict(sources.read_entries(entries))
    for i, entry in enumerate(entries):
        try:
            alone = read_entry(entry)
        except sources.SourceError as exc:
            alone = str(exc)
        assert (str(got[i]) if isinstance(got[i], sources.SourceError) else got[i]) == alone
    assert isinstance(got[7], sources.SourceError) and "cut short" in str(got[7])
    assert got[0] == members[0][1]


def deepghs_from_inputs(inputs, root: Path) -> None:
    """The build-test images as deepghs tars (`images/000{id % 2}.tar`, members in id order, index
    beside): a query over an id range selects runs of adjacent members."""
    groups: dict[str, list[tuple[str, bytes]]] = {}
    for path in sorted(inputs.src.rglob("*.*"), key=lambda p: int(p.name.split(".")[0])):
        key = int(path.name.split(".")[0])
        groups.setdefault(f"images/{key % 2:04d}.tar", []).append((path.name, path.read_bytes()))
    for rel, members in groups.items():
        write_tar(root / rel, members)
        write_index(root / rel, root / (rel[:-4] + ".json"))


def test_selective_build_reads_adjacent_members_in_runs(tmp_path, remote, request, monkeypatch):
    from kohaku_data.assembly import pipeline
    from test_build_support import build, folder_bytes, make_inputs, small_recipe

    inputs = make_inputs(tmp_path / "inputs")
    deepghs_from_inputs(inputs, tmp_path / "d")
    low, high = inputs.ids[4], inputs.ids[30]
    recipe = small_recipe(query=f"id:{low}..{high}")
    local_src = str(tmp_path / "d")
    build(type(inputs)(inputs.db, local_src, inputs.ids, inputs.hard), tmp_path / "local", recipe)
    url = upload(remote, tmp_path / "d", f"/{request.node.name}/d")
    # 2 tasks for the whole plan (a plan of 512+ items gets tasks of 2..64 items by itself)
    monkeypatch.setattr(pipeline, "_TASKS_PER_PLAN", 2)
    figures = {}
    for name, run_max in (("member by member", 0), ("runs", sources.RUN_MAX)):
        monkeypatch.setattr(sources, "RUN_MAX", run_max)
        remote.forget()
        build(type(inputs)(inputs.db, url, inputs.ids, inputs.hard), tmp_path / name, recipe)
        assert folder_bytes(tmp_path / name) == folder_bytes(tmp_path / "local"), name
        ranged = [(p, s, e) for p, s, e in remote.reads if s is not None and p.endswith(".tar")]
        figures[name] = (len(ranged), sum(e - s for _, s, e in ranged), ranged)
    base = f"/{request.node.name}/d/"
    tar_members = {(base + e.name.split(":")[0], e.offset, e.offset + e.size): e.key
                   for e in open_source(local_src).entries()}
    one_by_one, runs = figures["member by member"], figures["runs"]
    selected = [tar_members[r] for r in one_by_one[2]]  # a KeyError: a read that is no whole member
    assert len(set(selected)) == len(selected) > 15 and all(low <= k <= high for k in selected)
    members = one_by_one[2]
    assert runs[0] < len(members) // 4, (runs[0], len(members))
    covered = [m for m in members if any(p == m[0] and s <= m[1] and m[2] <= e for p, s, e in runs[2])]
    assert covered == members, "every selected member lies in a run"
    assert all(any(p == q and s <= a and b <= e for q, a, b in members) for p, s, e in runs[2]), \
        "a run starts and ends at selected members"
    gaps = len(members) - runs[0]
    assert 0 <= runs[1] - one_by_one[1] <= gaps * sources.RUN_GAP, "at most RUN_GAP read in vain between members"
    print(f"\nselective build, {len(members)} members: {one_by_one[0]} requests / {one_by_one[1]} bytes "
          f"member by member, {runs[0]} requests / {runs[1]} bytes in runs")
