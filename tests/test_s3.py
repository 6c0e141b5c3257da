"""Sources and datasets on object storage, against a real S3 API on loopback (moto's server,
through s3fs, with a fault-injecting proxy in front): the same bytes as on a disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from cli_support import checked, no_traceback  # noqa: E402
from kohaku_data import storage, tar_index  # noqa: E402
from kohaku_data.sources import open_source, read_entry  # noqa: E402
from s3_support import FaultProxy, s3_env, server_and_proxy, use_endpoint  # noqa: E402
from test_build_support import Inputs, build, folder_bytes, make_inputs  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    with server_and_proxy() as pair:
        yield pair


@pytest.fixture
def endpoint(s3, monkeypatch) -> FaultProxy:
    """This test talks to S3 through the proxy (requests logged, faults on demand)."""
    server, proxy = s3
    use_endpoint(monkeypatch, proxy.url)
    proxy.log.clear()
    proxy.fail_next(0)
    return proxy


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"), tar=True)


KDATA = [sys.executable, "-c", "from kohaku_data.cli import app; app()"]
_buckets = iter(range(1_000_000))


def _bucket(prefix: str = "b") -> str:
    """A fresh bucket per use (tests share one server)."""
    import s3fs

    name = f"kdata-{prefix}-{next(_buckets)}"
    s3fs.S3FileSystem().mkdir(name)
    return name


def _upload(local: Path, url: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{url.removeprefix('s3://')}/{path.relative_to(local).as_posix()}", path.read_bytes())


def _tar_gets(proxy: FaultProxy) -> list:
    return [r for r in proxy.log if r.method == "GET" and r.path.split("?")[0].endswith(".tar")]


def test_source_in_a_bucket_is_the_local_source_and_members_are_ranged_reads(inputs, endpoint, tmp_path):
    url = f"s3://{_bucket()}/raw"
    _upload(inputs.src, url)
    remote = open_source(url)
    local = open_source(inputs.src)
    fields = lambda s: [(e.key, e.name, e.ext, e.size, e.member, e.offset) for e in s.entries()]  # noqa: E731
    assert fields(remote) == fields(local)
    assert sorted((r.name, r.reason) for r in remote.rejects) == sorted((r.name, r.reason) for r in local.rejects)
    assert remote.fingerprint() == local.fingerprint()
    # the first pass streamed the tar once and left its index beside it (hfutils form)
    tar = inputs.src / "data-0000.tar"
    assert json.loads(storage.read_bytes(f"{url}/data-0000.json")) == tar_index.scan_tar(tar, tar.stat().st_size).index

    endpoint.log.clear()
    again = open_source(url)  # the index beside the tar answers: the tar is not read at all
    assert fields(again) == fields(local) and _tar_gets(endpoint) == []

    for entry, twin in zip(again.entries(), local.entries()):
        assert read_entry(entry) == read_entry(twin)
    ranges = {r.range for r in _tar_gets(endpoint)}
    wanted = {f"bytes={e.offset}-{e.offset + e.size - 1}" for e in again.entries() if e.size}
    assert ranges == wanted, "every member is one ranged GET, never the whole tar"


def test_build_from_a_bucket_gives_the_local_bytes(inputs, local_build, endpoint, tmp_path):
    url = f"s3://{_bucket()}/raw"
    _upload(inputs.src, url)
    local, local_dir = local_build
    remote_inputs = Inputs(inputs.db, url, inputs.ids, inputs.hard)
    remote = build(remote_inputs, tmp_path / "remote", workers=1)
    assert (remote.samples, remote.shards) == (local.samples, local.shards)
    assert folder_bytes(tmp_path / "remote") == folder_bytes(local_dir)


def test_500s_and_a_stalling_store_are_retried_to_the_same_bytes(inputs, local_dataset, endpoint, tmp_path):
    url = f"s3://{_bucket()}/raw"
    _upload(inputs.src, url)
    endpoint.fail_next(6)  # one more in a row than botocore tries (5), while the tar is indexed
    endpoint.stall_next(3, 0.5)
    faulty = build(Inputs(inputs.db, url, inputs.ids, inputs.hard), tmp_path / "faulty", workers=1)
    assert endpoint.failures_left <= 0 and any(r.range for r in endpoint.log)
    assert faulty.samples > 0
    assert folder_bytes(tmp_path / "faulty") == folder_bytes(local_dataset)


def test_missing_bucket_is_one_sentence(endpoint):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' does not exist") as info:
        open_source("s3://no-such-bucket/raw")
    assert str(info.value).count(". ") == 0 and "\n" not in str(info.value)


def test_bad_credentials_are_one_sentence_from_the_cli(s3, inputs, tmp_path):
    server, proxy = s3
    env = s3_env(proxy.url, AWS_ACCESS_KEY_ID="wrong", AWS_SECRET_ACCESS_KEY="wrong")
    server.set_auth(True)
    try:
        run = checked(subprocess.run(
            [*KDATA, "build", "--src", "s3://anything/raw", "--out",
             str(tmp_path / "out"), "--db", str(inputs.db), "--workers", "1", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=120))
    finally:
        server.set_auth(False)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "access denied" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def local_build(inputs, tmp_path_factory):
    """The inputs built on a disk, once for the module: (its BuildResult, its folder)."""
    out = tmp_path_factory.mktemp("ds") / "t-1"
    return build(inputs, out, workers=1), out


@pytest.fixture(scope="module")
def local_dataset(local_build) -> Path:
    return local_build[1]


def test_retry_waits_are_a_setting(monkeypatch):
    monkeypatch.delenv(storage.RETRY_DELAY_ENV, raising=False)
    assert storage._retry_delays() == (0.5, 1.0, 2.0, 4.0)
    monkeypatch.setenv(storage.RETRY_DELAY_ENV, "0.01")
    assert storage._retry_delays() == (0.01, 0.02, 0.04, 0.08)
    monkeypatch.setenv(storage.RETRY_DELAY_ENV, "0")
    assert storage._retry_delays() == (0, 0, 0, 0)
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(storage.RETRY_DELAY_ENV, bad)
        with pytest.raises(storage.StorageError, match="KDATA_STORAGE_RETRY_DELAY=.* is not a number of seconds"):
            storage._retry_delays()


def test_verify_reads_a_dataset_in_a_bucket(local_dataset, endpoint, s3, tmp_path):
    from kohaku_data.assembly.verify import verify_dataset

    url = f"s3://{_bucket()}/datasets/t-1"
    _upload(local_dataset, url)
    report = verify_dataset(url)
    assert report.ok, report.problems
    assert (report.shards, report.samples) == (verify_dataset(local_dataset).shards, verify_dataset(local_dataset).samples)

    run = checked(subprocess.run([*KDATA, "verify", url], env=s3_env(endpoint.url), capture_output=True, text=True, timeout=120))
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr

    shard = json.loads((local_dataset / "index.json").read_text())["shardlist"][1]["url"]
    data = bytearray((local_dataset / shard).read_bytes())
    data[2000] ^= 0xFF
    storage.commit_bytes(f"{url}/{shard}", bytes(data))
    storage.commit_bytes(f"{url}/stray-000099.tar", b"\0" * 1024)
    problems = verify_dataset(url).problems
    assert any(shard in p and "sha256" in p for p in problems)
    assert any("stray-000099.tar" in p for p in problems)
    run = checked(subprocess.run([*KDATA, "verify", url], env=s3_env(endpoint.url), capture_output=True, text=True, timeout=120))
    assert run.returncode == 1 and "MISMATCH" in run.stderr


def test_recaption_from_a_bucket_into_a_bucket_gives_the_local_bytes(local_dataset, inputs, endpoint, tmp_path,
                                                                     monkeypatch):
    from kohaku_data.assembly.recaption import recaption_dataset
    from kohaku_data.assembly.verify import verify_dataset
    from kohaku_data.db import DanbooruDB
    from test_build_support import small_recipe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"s3://{_bucket()}/datasets/t-1"
    _upload(local_dataset, url)
    recipe = small_recipe(caption={"quality": False, "year": False})
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        local = recaption_dataset(local_dataset, recipe, db, out=tmp_path / "recap")
        remote = recaption_dataset(url, recipe, db)
        assert remote["out"].startswith(url + "-recap-") and not remote["up_to_date"]
        assert recaption_dataset(url, recipe, db)["up_to_date"]
    assert remote["samples"] == local["samples"]
    assert verify_dataset(remote["out"]).ok
    ours = dict(storage.list_files(remote["out"]))
    theirs = {p.relative_to(tmp_path / "recap").as_posix() for p in (tmp_path / "recap").rglob("*")
              if p.is_file() and p.name != ".build.lock"}
    assert set(ours) == theirs
    for name in theirs:
        assert storage.read_bytes(f"{remote['out']}/{name}") == (tmp_path / "recap" / name).read_bytes(), name


def _staged_objects(out: str) -> list[str]:
    """The staged task objects beside an s3:// output (its `.staging/images/<config>/tasks/`)."""
    import s3fs

    try:
        return s3fs.S3FileSystem().find(f"{out.removeprefix('s3://')}/.staging/images")
    except FileNotFoundError:
        return []


def _kill_when(cmd: list[str], env: dict, ready, timeout: float = 120) -> int:
    """Run `cmd`, SIGKILL it as soon as `ready()` holds (or let it end); its exit status."""
    import signal
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    no_traceback(proc.stderr.read(), "the killed build")
    return proc.returncode


def test_build_from_a_bucket_into_a_bucket_resumes_through_500s_to_the_local_bytes(inputs, local_dataset, endpoint, tmp_path,
                                                                       monkeypatch):
    bucket = _bucket()
    src, out = f"s3://{bucket}/raw", f"s3://{bucket}/datasets/t-1"
    _upload(inputs.src, src)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = s3_env(endpoint.url, XDG_CACHE_HOME=str(tmp_path / "cache"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "t"\nversion = "1"\nshard_max_bytes = 400000\n[image]\nbucket = "demo-256"\n')
    cmd = [*KDATA, "build", "--src", src, "--out", out, "--db", str(inputs.db), "--recipe", str(recipe),
           "--workers", "2", "--no-progress"]
    staged = lambda: len(_staged_objects(out)) >= 8  # noqa: E731
    assert _kill_when(cmd, env, staged) == -9, "killed mid-build"
    assert not storage.exists(f"{out}/dataset.lock")
    assert all(name.endswith(".bin") for name in _staged_objects(out)), "one staged object per image task"
    assert storage.exists(f"{out}/.staging/driver.lock"), "the killed driver's lease is left behind"
    # objects a store may hold after trouble (S3 itself never keeps a cut-short PUT; other stores
    # and hand copies might): an empty one and one cut inside its header are recomputed, not fatal
    empty, cut = (f"s3://{name}" for name in sorted(_staged_objects(out))[:2])
    storage.commit_bytes(empty, b"")
    storage.commit_bytes(cut, storage.read_bytes(cut)[:10])
    assert storage.read_range(empty, 0, 64) == b"" and storage.read_range(cut, 10, 5) == b""

    endpoint.fail_next(6, method="PUT")  # the store refuses uploads for a while as the rerun publishes
    run = checked(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300))
    assert run.returncode == 0, run.stderr
    assert endpoint.failures_left <= 0
    assert "reused" in run.stdout and " 0 reused" not in run.stdout, run.stdout
    expected = {p.relative_to(local_dataset).as_posix(): p.read_bytes() for p in local_dataset.rglob("*")
                if p.is_file() and not p.name.startswith(".")}
    published = dict(storage.list_files(out))
    assert set(published) == set(expected)
    differ = [name for name, data in expected.items() if storage.read_bytes(f"{out}/{name}") != data]
    assert differ == [], f"published files that differ from the local build: {differ}"
    assert not (tmp_path / "cache" / "kdata").exists(), "an s3:// output needs no local work folder"
    assert storage.list_names(f"{out}/.staging") == [], "staging and the lease are gone"

    check = checked(subprocess.run([*KDATA, "verify", out], env=env, capture_output=True, text=True, timeout=120))
    assert check.returncode == 0, check.stderr
    again = checked(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120))
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr


def test_one_driver_per_bucket_output_and_a_dead_drivers_lease_does_not_block(inputs, endpoint, tmp_path):
    """The lease object `OUT/.staging/driver.lock`: a live driver anywhere refuses a second one;
    a driver gone from this machine, or one whose lease expired elsewhere, is taken over."""
    import time

    from kohaku_data.assembly import BuildError
    from kohaku_data.assembly.lease import DriverLease

    out = f"s3://{_bucket()}/datasets/t-1"
    lease = f"{out}/.staging/driver.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kohaku_data.assembly.lease import DriverLease; "
         "DriverLease(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(60)", f"{out}/.staging"],
        env=s3_env(endpoint.url), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildError, match="another build is running into .*renewed until") as info:
            build(inputs, out)
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with DriverLease(f"{out}/.staging"):  # its process is gone from this machine: taken over at once
        pass
    assert not storage.exists(lease), "released"

    elsewhere = {"driver": "feed", "host": "another-machine", "pid": 1, "boot": "x", "pidns": "x"}
    storage.commit_bytes(lease, json.dumps({**elsewhere, "expires": time.time() + 600}).encode())
    with pytest.raises(BuildError, match="another build is running into"):
        DriverLease(f"{out}/.staging").acquire()
    storage.commit_bytes(lease, json.dumps({**elsewhere, "expires": time.time() - 1}).encode())
    with DriverLease(f"{out}/.staging") as taker:
        assert json.loads(storage.read_bytes(lease))["driver"] == taker.me["driver"]
        assert storage.exists(f"{lease}.feed.takeover"), "a takeover is create-only: one driver wins it"


def test_a_lease_is_renewed_and_a_driver_that_lost_it_stops(endpoint):
    import time

    from kohaku_data.assembly import BuildError
    from kohaku_data.assembly.lease import DriverLease

    out = f"s3://{_bucket()}/datasets/t-1"
    lease = f"{out}/.staging/driver.lock"
    record = lambda: json.loads(storage.read_bytes(lease))  # noqa: E731
    with DriverLease(f"{out}/.staging", ttl=0.4) as held:  # renewed every 0.1 s
        first = record()["expires"]
        assert _soon(lambda: record()["expires"] > first), "the heartbeat renews it"
        held.check()

        def stolen() -> bool:
            if record()["driver"] != "thief":  # (again, if a renewal read just before landed after it)
                storage.commit_bytes(lease, json.dumps({"driver": "thief", "expires": time.time() + 60}).encode())
            try:
                held.check()
            except BuildError as exc:
                return "lost its lease" in str(exc)
            return False

        assert _soon(stolen), "the heartbeat notices the lease is another driver's"
    assert record()["driver"] == "thief", "another's lease is never removed"


def _soon(condition, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_an_output_in_a_missing_bucket_is_one_sentence(inputs, endpoint):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' does not exist") as info:
        build(inputs, "s3://no-such-bucket/datasets/t-1")
    assert "\n" not in str(info.value)


def test_create_only_writes_in_a_bucket_and_a_twin_shard_task(endpoint):
    """S3's `If-None-Match: *` through s3fs: a second create-only write is refused, the object
    untouched. A shard task whose twin already committed the same tar keeps it; a stale tar
    (a killed run's) is replaced."""
    import hashlib

    from kohaku_data.assembly.packing import ShardJob, write_shard
    from kohaku_data.assembly.shards import member_bytes, tar_size

    base = f"s3://{_bucket()}/d"
    storage.commit_bytes(f"{base}/a", b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        storage.commit_bytes(f"{base}/a", b"second", exclusive=True)
    with pytest.raises(FileExistsError), storage.committing(f"{base}/a", exclusive=True) as f:
        f.write(b"third")
    assert storage.read_bytes(f"{base}/a") == b"first"

    job = ShardJob(0, f"{base}/t-000000.tar", ((("1.txt", b"hello"), ("1.json", b"{}")),),
                   tar_size(member_bytes(5) + member_bytes(2)))
    first = write_shard(job)
    assert write_shard(job) == first  # the twin
    storage.commit_bytes(job.path, b"\0" * job.size)  # a stale tar of the same name and size
    assert write_shard(job) == first
    assert hashlib.sha256(storage.read_bytes(job.path)).hexdigest() == first.info.sha256
    index = json.loads(storage.read_bytes(f"{base}/t-000000.json"))
    assert index["hash_lfs"] == first.info.sha256 and index["filesize"] == job.size


def test_what_another_process_wrote_after_a_listing_is_seen(endpoint):
    """A long-lived process (a build driver, `kdata serve`) lists a folder, another process then
    writes into it: listings, lookups and reads see the new object (no stale listing cache)."""
    base = f"s3://{_bucket()}/d"
    storage.commit_bytes(f"{base}/a", b"1")
    assert storage.list_files(base) == [("a", 1)] and storage.list_names(base) == ["a"]
    assert not storage.exists(f"{base}/b")
    writer = "import sys; from kohaku_data import storage; storage.commit_bytes(sys.argv[1], b'22')"
    subprocess.run([sys.executable, "-c", writer, f"{base}/b"], env=s3_env(endpoint.url), check=True, timeout=60)
    assert storage.exists(f"{base}/b") and storage.size(f"{base}/b") == 2
    assert storage.list_files(base) == [("a", 1), ("b", 2)] and storage.list_names(base) == ["a", "b"]
    assert storage.read_bytes(f"{base}/b") == b"22"
