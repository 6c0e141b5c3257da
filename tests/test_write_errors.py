"""A full disk, a file-size limit or a read-only disk: every writing command answers with one
sentence (what could not be written, what is kept, rerun), exits 1, leaves no visible temp file,
and the rerun with room gives the same bytes as a clean run.

Real commands in real subprocesses: the file-size limit is RLIMIT_FSIZE set in the child (EFBIG);
a full disk (ENOSPC) and a read-only one (EROFS) are real tmpfs mounts, where this machine lets
the test mount one (root in CI), else those tests skip with the reason.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kohaku_data.atomic import replacing
from kohaku_data.errors import WriteProblem, write_problem
from cli_support import checked
from test_build_support import folder_bytes, make_inputs

KDATA = str(Path(sys.executable).with_name("kdata"))
RECIPE = """
name = "t"
version = "1"
shard_max_bytes = 400000
[image]
bucket = "demo-256"
"""


def kdata(*args: str, cwd: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return checked(subprocess.run([KDATA, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                                  preexec_fn=limit if fsize else None))


def assert_clear_write_error(done: subprocess.CompletedProcess, reason: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    text = " ".join(done.stderr.split())
    assert text.startswith("error: could not write"), text
    assert reason in text and "rerun the same command" in text, text
    assert len(text) < 400, text  # one or two sentences, not a report


def visible_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name and not p.name.startswith(".")
            and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])]


def file_hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in folder_bytes(folder).items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The module's shared folder: inputs and recipe (only ever read by the commands), clean build."""
    root = tmp_path_factory.mktemp("write-errors")
    (root / "t.toml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def inputs(work: Path):
    return make_inputs(work / "in")


@pytest.fixture(scope="module")
def recipe(work: Path) -> Path:
    return work / "t.toml"


@pytest.fixture(scope="module")
def clean_build(work: Path, inputs, recipe: Path) -> Path:
    """A build of the inputs with room: the bytes a refused-then-resumed build must end with
    (made once for the module: the same inputs and recipe give the same bytes)."""
    out = work / "clean"
    clean = kdata(*build_args(inputs, out, recipe), cwd=work)
    assert clean.returncode == 0, clean.stderr
    return out


def build_args(inputs, out: Path, recipe: Path) -> list[str]:
    return ["build", "--db", str(inputs.db), "--src", str(inputs.src), "--recipe", str(recipe), "--out", str(out),
            "--workers", "2", "--no-progress"]


def test_build_at_a_file_size_limit_resumes_to_the_clean_bytes(tmp_path: Path, inputs, recipe: Path,
                                                               clean_build: Path) -> None:
    out = tmp_path / "out"
    failed = kdata(*build_args(inputs, out, recipe), cwd=tmp_path, fsize=150_000)  # below one shard
    assert_clear_write_error(failed, "the file-size limit was reached")
    # shard tasks run in parallel: whichever shard's write hit the limit first is named
    assert re.search(r"t-\d{6}\.tar", failed.stderr) and "staged images" in failed.stderr
    assert not visible_temp_files(out)
    assert not (out / "dataset.lock").exists()

    resumed = kdata(*build_args(inputs, out, recipe), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "reused" in resumed.stdout and " 0 reused" not in resumed.stdout  # staged images were kept
    assert file_hashes(out) == file_hashes(clean_build)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 600 KiB tmpfs: writes past it fail with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); the RLIMIT_FSIZE tests cover EFBIG")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_build_on_a_full_disk_resumes_once_there_is_room(tmp_path: Path, inputs, recipe: Path, clean_build: Path,
                                                         small_disk: Path) -> None:
    out = small_disk / "out"
    failed = kdata(*build_args(inputs, out, recipe), cwd=tmp_path)
    assert_clear_write_error(failed, "the disk is full")
    assert not visible_temp_files(out)

    remount(small_disk, "size=64m")
    assert kdata(*build_args(inputs, out, recipe), cwd=tmp_path).returncode == 0
    assert file_hashes(out) == file_hashes(clean_build)


def test_build_on_a_read_only_disk_says_so(tmp_path: Path, inputs, recipe: Path, small_disk: Path) -> None:
    remount(small_disk, "ro")
    failed = kdata(*build_args(inputs, small_disk / "out", recipe), cwd=tmp_path)
    assert_clear_write_error(failed, "the file system is read-only")
    assert "fix the permissions" in failed.stderr


def _posts_jsonl(path: Path, n: int) -> Path:
    from fake_danbooru import make_posts

    path.write_text("\n".join(json.dumps(p) for p in make_posts(n, seed=3).values()) + "\n")
    return path


def _table_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("post", "tag", "posttagrelation")]


def test_import_at_a_file_size_limit_keeps_a_sound_db_and_resumes(tmp_path: Path) -> None:
    posts = _posts_jsonl(tmp_path / "posts.jsonl", 3000)
    for name in ("clean.db", "x.db"):
        assert kdata("db", "init", "--db", name, cwd=tmp_path).returncode == 0
    batches = ["--batch-size", "500"]  # tag ids follow the batch order: the same in every run
    assert kdata("db", "import", str(posts), "--db", "clean.db", *batches, cwd=tmp_path).returncode == 0

    size = (tmp_path / "x.db").stat().st_size
    failed = kdata("db", "import", str(posts), "--db", "x.db", *batches, cwd=tmp_path, fsize=size + 300_000)
    assert_clear_write_error(failed, "file-size limit")
    assert "kept in the DB" in failed.stderr
    _table_rows(tmp_path / "x.db")  # still a sound sqlite file

    assert kdata("db", "import", str(posts), "--db", "x.db", *batches, cwd=tmp_path).returncode == 0
    assert _table_rows(tmp_path / "x.db") == _table_rows(tmp_path / "clean.db")


def test_caption_at_a_file_size_limit_leaves_no_partial_file(tmp_path: Path) -> None:
    posts = _posts_jsonl(tmp_path / "posts.jsonl", 3000)
    assert kdata("db", "init", "--db", "x.db", cwd=tmp_path).returncode == 0
    assert kdata("db", "import", str(posts), "--db", "x.db", cwd=tmp_path).returncode == 0
    for out in ("c.jsonl", "c.parquet"):
        failed = kdata("caption", "--db", "x.db", "--out", out, cwd=tmp_path, fsize=100_000)
        assert_clear_write_error(failed, "file-size limit")
        assert not (tmp_path / out).exists() and not visible_temp_files(tmp_path)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out}")]
        assert kdata("caption", "--db", "x.db", "--out", out, cwd=tmp_path).returncode == 0
        assert kdata("caption", "--db", "x.db", "--out", f"again-{out}", cwd=tmp_path).returncode == 0
        assert (tmp_path / out).read_bytes() == (tmp_path / f"again-{out}").read_bytes()


def test_sample_at_a_file_size_limit_reruns_to_the_same_bytes(tmp_path: Path) -> None:
    # 1,000 posts: a 1.5 MB DB, far past the limit
    assert kdata("sample", "clean", "--posts", "1000", "--no-images", cwd=tmp_path).returncode == 0
    failed = kdata("sample", "s", "--posts", "1000", "--no-images", cwd=tmp_path, fsize=100_000)
    assert_clear_write_error(failed, "file-size limit")
    assert not (tmp_path / "s" / "danbooru.db").exists()  # nothing that blocks the rerun
    assert kdata("sample", "s", "--posts", "1000", "--no-images", cwd=tmp_path).returncode == 0
    assert (tmp_path / "s" / "danbooru.db").read_bytes() == (tmp_path / "clean" / "danbooru.db").read_bytes()


def test_migrate_at_a_file_size_limit_stays_at_the_last_version(tmp_path: Path) -> None:
    # 3,000 posts (a 4.4 MB DB): the limit still stops the same migration as with 10,000 (at version 2)
    assert kdata("sample", "s", "--posts", "3000", "--no-images", cwd=tmp_path).returncode == 0
    db = tmp_path / "s" / "danbooru.db"
    failed = kdata("db", "migrate", "--db", str(db), cwd=tmp_path, fsize=1_000_000)  # below its WAL
    assert_clear_write_error(failed, "file-size limit")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert kdata("db", "migrate", "--db", str(db), cwd=tmp_path).returncode == 0
    info = json.loads(kdata("db", "info", "--db", str(db), "--json", cwd=tmp_path).stdout)
    assert info["posts"] == 3000


def test_images_at_a_file_size_limit_resumes_to_the_same_files(tmp_path: Path, inputs) -> None:
    args = ["images", str(inputs.src), "--preset", "demo-256", "--workers", "2", "--no-progress"]
    assert kdata(*args[:2], "clean", *args[2:], cwd=tmp_path).returncode == 0
    failed = kdata(*args[:2], "out", *args[2:], cwd=tmp_path, fsize=30_000)
    assert_clear_write_error(failed, "file-size limit")
    assert not visible_temp_files(tmp_path / "out")
    assert kdata(*args[:2], "out", *args[2:], cwd=tmp_path).returncode == 0
    assert file_hashes(tmp_path / "out") == file_hashes(tmp_path / "clean")


def test_sync_at_a_file_size_limit_keeps_what_it_stored(tmp_path: Path) -> None:
    from fake_danbooru import FakeDanbooru, make_posts

    with FakeDanbooru(make_posts(1500, seed=4)) as site:
        assert kdata("db", "init", "--db", "x.db", cwd=tmp_path).returncode == 0
        size = (tmp_path / "x.db").stat().st_size
        sync = ["sync", "--base-url", site.url, "--db", "x.db", "--rate", "100"]
        failed = kdata(*sync, cwd=tmp_path, fsize=size + 200_000)
        assert_clear_write_error(failed, "file-size limit")
        assert "sync position are kept" in failed.stderr
        assert kdata(*sync, cwd=tmp_path).returncode == 0
    info = json.loads(kdata("db", "info", "--db", "x.db", "--json", cwd=tmp_path).stdout)
    assert info["posts"] == 1500


@pytest.mark.parametrize("code, reason", [
    (errno.ENOSPC, "the disk is full"), (errno.EFBIG, "the file-size limit was reached"),
    (errno.EDQUOT, "the disk quota is exhausted"), (errno.EROFS, "the file system is read-only"),
    (errno.EACCES, "permission was denied"),
])
def test_each_write_errno_is_named_with_the_file_the_user_knows(code: int, reason: str, tmp_path: Path) -> None:
    target = tmp_path / "manifest.parquet"
    with pytest.raises(OSError) as raised, replacing(target) as tmp:
        raise OSError(code, "strerror", str(tmp))  # as open() of the temporary file reports it
    assert write_problem(raised.value) == WriteProblem(reason, str(target))
    assert not list(tmp_path.iterdir())


def test_write_problems_are_found_behind_other_errors() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("while packing") from inner
    except RuntimeError as outer:
        assert write_problem(outer) == WriteProblem("the disk is full")
    assert write_problem(RuntimeError("No space left on device (os error 28)")) == WriteProblem("the disk is full")
    assert write_problem(OSError(errno.ENOENT, "missing", "x")) is None
    assert write_problem(ValueError("bad value")) is None


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_at_a_file_size_limit_resumes_to_the_clean_files(tmp_path: Path, clean_build: Path) -> None:
    dataset = tmp_path / "ds"
    shutil.copytree(clean_build, dataset)  # this test's own copy of a finished build
    export = ["export", str(dataset), "--format", "kohya", "--no-progress"]
    assert kdata(*export[:2], "clean", *export[2:], cwd=tmp_path).returncode == 0
    failed = kdata(*export[:2], "out", *export[2:], cwd=tmp_path, fsize=20_000)  # below one image
    assert_clear_write_error(failed, "file-size limit")
    assert "already exported are kept" in failed.stderr
    assert not visible_temp_files(tmp_path / "out")
    assert kdata(*export[:2], "out", *export[2:], cwd=tmp_path).returncode == 0
    # dataset.toml and kdata-export.json name their own folder: compared with the paths swapped
    got, want = tree_hashes(tmp_path / "out"), tree_hashes(tmp_path / "clean")
    named = {name for name in want if name.endswith((".toml", "kdata-export.json"))}
    assert named and set(got) == set(want)
    assert {k: v for k, v in got.items() if k not in named} == {k: v for k, v in want.items() if k not in named}
    for name in named:
        clean_text = (tmp_path / "clean" / name).read_text().replace(str(tmp_path / "clean"), str(tmp_path / "out"))
        assert (tmp_path / "out" / name).read_text() == clean_text
