"""`kdata build` end to end on real sqlite files, real images and real tars."""

from __future__ import annotations

import sqlite3
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import polars as pl
import pytest
import webdataset as wds
from typer.testing import CliRunner

from kohaku_data.assembly import BuildError
from cli_support import no_traceback
from kohaku_data.cli import app
from test_build_support import ORPHAN_KEY, Inputs, build, folder_bytes, make_inputs, small_recipe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "ds"
    build(inputs, out, workers=1)
    return out


def test_shards_read_back_with_webdataset(built):
    manifest = pl.read_parquet(built / "manifest.parquet")
    index = json.loads((built / "index.json").read_text())
    assert len(index["shardlist"]) >= 3, "small shards must split the sample"
    urls = [str(built / s["url"]) for s in index["shardlist"]]
    rows = {r["key"]: r for r in manifest.iter_rows(named=True)}
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        key = int(sample["__key__"])
        row = rows[key]
        assert f"{sample['webp'].size[0]}x{sample['webp'].size[1]}" == row["bucket"]
        assert sample["txt"] == row["caption"]
        assert sample["json"]["id"] == key and sample["json"]["caption"] == row["caption"]
        assert f"{sample['json']['bucket'][0]}x{sample['json']['bucket'][1]}" == row["bucket"]
        seen.append(key)
    assert seen == sorted(rows) and len(seen) == manifest.height
    assert [s["nsamples"] for s in index["shardlist"]] == (
        manifest.group_by("shard", maintain_order=True).len()["len"].to_list())


def test_dataset_files_get_the_umask_permissions(built):
    """Trainers often read a dataset from another account: no file may keep a temp file's 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in built.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert {"index.json", "manifest.parquet", "dataset.lock"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~mask) for p in files}


def test_tar_headers_are_fixed_and_sizes_capped(built):
    recipe = small_recipe()
    names = sorted(p.name for p in built.glob("*.tar"))
    assert names == [f"t-{i:06d}.tar" for i in range(len(names))]  # gap-free numbering
    for path in built.glob("*.tar"):
        assert path.stat().st_size <= recipe.shard_max_bytes
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
                assert m.name.split(".")[0].isdigit() and "/" not in m.name


def test_every_refusal_is_recorded(inputs, built):
    rejects = pl.read_parquet(built / "rejects.parquet")
    by_key = dict(zip(rejects["key"].to_list(), rejects["reason"].to_list()))
    assert by_key[inputs.hard["md5_mismatch"]] == "md5_mismatch"
    assert by_key[inputs.hard["zero_byte"]] == "empty_file"
    assert by_key[inputs.hard["too_small"]] == "too_small"
    assert by_key[inputs.hard["corrupt"]] not in (None, "ok")
    assert by_key[ORPHAN_KEY] == "file_without_post"
    manifest_keys = set(pl.read_parquet(built / "manifest.parquet")["key"].to_list())
    assert manifest_keys.isdisjoint(by_key)
    # Every live post with a good file is a sample; nothing else is (deleted posts are not
    # selected, as `kdata query ""` hides them).
    with sqlite3.connect(inputs.db) as conn:
        deleted = {pid for (pid,) in conn.execute("SELECT id FROM post WHERE is_deleted = 1")}
    conn.close()
    assert deleted, "the sample DB should have deleted posts for this check to mean something"
    good = set(inputs.ids) - set(inputs.hard.values()) - deleted
    assert manifest_keys == good


def test_tar_source_refuses_unsafe_members_and_gives_same_images(inputs, built, tmp_path):
    tar_inputs = make_inputs(tmp_path / "in", tar=True)
    out = tmp_path / "tar-ds"
    build(tar_inputs, out)
    rejects = pl.read_parquet(out / "rejects.parquet")
    unsafe = rejects.filter(pl.col("reason") == "unsafe_member_name")
    assert unsafe.height == 1 and "../evil.png" in unsafe["source"][0]
    cols = ["key", "sha256", "caption", "bucket"]
    assert pl.read_parquet(out / "manifest.parquet")[cols].equals(pl.read_parquet(built / "manifest.parquet")[cols])
    assert not (tmp_path / "evil.png").exists() and not (out.parent / "evil.png").exists()


def test_byte_identical_for_any_worker_count(inputs, built, tmp_path):
    out = tmp_path / "w2"
    result = build(inputs, out, workers=2)
    assert result.processed > 0
    assert folder_bytes(out) == folder_bytes(built)


def test_rerun_is_up_to_date_and_other_recipe_refused(inputs, built, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    assert build(inputs, out).up_to_date
    assert folder_bytes(out) == folder_bytes(built)
    other = small_recipe(caption={"tag_order": "alpha"})
    with pytest.raises(BuildError, match="another recipe"):
        build(inputs, out, other)
    result = build(inputs, out, other, force=True)
    assert not result.up_to_date and result.samples == json.loads((built / "stats.json").read_text())["samples"]
    assert json.loads((out / "dataset.lock").read_text())["recipe_sha256"] == other.sha256()


def test_second_build_into_same_folder_refuses(inputs, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); time.sleep(60)", str(out / ".build.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildError, match="another build is running"):
            build(inputs, out)
        assert not (out / "index.json").exists()
    finally:
        holder.kill()
        holder.wait()


def _kill_after(cmd: list[str], out: Path, shards: int) -> int:
    """Start a build, SIGKILL it as soon as `shards` finished shards exist; its exit status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and len(list(out.glob("*.tar"))) < shards:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    no_traceback(proc.stderr.read(), "the killed build")
    return proc.returncode


def test_sigkill_at_any_moment_then_resume_is_byte_identical(inputs, built, tmp_path):
    out = tmp_path / "killed"
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('name = "t"\nversion = "1"\nshard_max_bytes = 400000\n[image]\nbucket = "demo-256"\n')
    assert small_recipe().sha256() == __import__("kohaku_data.config", fromlist=["x"]).load_recipe(recipe_path).sha256()
    cmd = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "build", "--src", str(inputs.src),
           "--out", str(out), "--db", str(inputs.db), "--recipe", str(recipe_path), "--workers", "1",
           "--no-progress"]
    assert _kill_after(cmd, out, 1) == -signal.SIGKILL  # mid-run: some images staged, one shard
    assert not (out / "dataset.lock").exists()
    assert _kill_after(cmd, out, 3) == -signal.SIGKILL  # killed again while resuming
    result = build(inputs, out)
    assert result.reused > 0
    assert folder_bytes(out) == folder_bytes(built)
    assert not (out / ".staging").exists()


def test_cli_build_then_verify(inputs, tmp_path):
    out = tmp_path / "cli"
    runner = CliRunner()
    res = runner.invoke(app, ["build", "--src", str(inputs.src), "--out", str(out), "--db", str(inputs.db),
                              "--recipe", "pipelines/demo.toml", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "samples" in res.output and "md5_mismatch: 1" in res.output
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output


def test_missing_source_is_a_clean_error(inputs, tmp_path):
    res = CliRunner().invoke(app, ["build", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                                   "--db", str(inputs.db)])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_query_selects_posts_and_reports_posts_without_file(inputs, tmp_path):
    limit = inputs.ids[12]
    out = tmp_path / "q"
    build(inputs, out, small_recipe(query=f"id:<={limit}"))
    rejects = pl.read_parquet(out / "rejects.parquet")
    missing = rejects.filter(pl.col("reason") == "post_without_file")["key"].to_list()
    assert missing == [inputs.hard["no_file"]]
    keys = pl.read_parquet(out / "manifest.parquet")["key"].to_list()
    with sqlite3.connect(inputs.db) as conn:  # a query hides deleted posts, as Danbooru's does
        deleted = {pid for (pid,) in conn.execute("SELECT id FROM post WHERE is_deleted = 1")}
    conn.close()
    assert keys == [k for k in inputs.ids if k <= limit and k not in inputs.hard.values() and k not in deleted]
    assert ORPHAN_KEY in rejects["key"].to_list()  # a file without post is still reported
