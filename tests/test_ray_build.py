"""`kdata build --executor ray` on a real two-node Ray cluster on this machine (issue 11).

Run in their own pytest invocation (`make test` does: Ray and pytest-xdist do not mix). The
cluster — a head and one added node, one CPU and a small object store each — is started once
for the module and torn down after. All of its traffic stays on loopback: every node and every
driver (this process and the `kdata` subprocesses) binds 127.0.0.1
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray pick the loopback address instead of the
host's external one; checked below on the listening sockets), and usage statistics are off.
The Ray + S3 tests use moto's S3 server on 127.0.0.1, started before the cluster so that its
endpoint and credentials are in every node's environment.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before `import ray`: loopback addresses
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -c constraints.txt '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

import ray_support  # noqa: E402
from kohaku_data.assembly import BuildError  # noqa: E402
from kohaku_data.assembly.executor import ToolchainMismatch, map_unordered  # noqa: E402
from kohaku_data.assembly.ray_executor import RayExecutor  # noqa: E402
from kohaku_data.errors import KdataError  # noqa: E402
from ray_support import listening_addresses, node_args, ray_env, tree_pids  # noqa: E402
from test_build_support import Inputs, build, folder_bytes, make_inputs  # noqa: E402

RECIPE_TOML = 'name = "t"\nversion = "1"\nshard_max_bytes = 400000\n[image]\nbucket = "demo-256"\n'


ray.cloudpickle.register_pickle_by_value(ray_support)  # its task functions travel with the tasks


@pytest.fixture(scope="module")
def s3_url():
    """A real S3 API on loopback (moto's server) for the Ray + S3 tests, its endpoint and
    credentials in this process's environment before the cluster starts, so every node's
    workers inherit them (as a user's nodes have their own); None without the s3 extras."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        yield None
        return
    from s3_support import S3Server, endpoint_environ

    server = S3Server.start()
    try:
        with endpoint_environ(server.url):
            yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(s3_url):
    c = Cluster(initialize_head=True, head_node_args=node_args(head=True))
    worker = c.add_node(**node_args())
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def local_bytes(inputs, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "ds"
    build(inputs, out, workers=1)
    return folder_bytes(out)


def _alive_node_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _cli(inputs: Inputs, out: Path, tmp_path: Path, address: str) -> list[str]:
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE_TOML)
    return [sys.executable, "-c", "from kohaku_data.cli import app; app()", "build", "--src", str(inputs.src),
            "--out", str(out), "--db", str(inputs.db), "--recipe", str(recipe), "--executor", "ray",
            "--ray-address", address, "--no-progress"]


def test_cluster_stays_on_loopback(cluster):
    c, _ = cluster
    pids = tree_pids(os.getpid())
    addresses = listening_addresses(pids)
    assert addresses, "the cluster's processes must listen somewhere"
    assert {host for host, _ in addresses} <= {"127.0.0.1"}, addresses
    assert c.address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_ray_build_spreads_over_both_nodes_and_equals_local(cluster, inputs, local_bytes, tmp_path):
    out = tmp_path / "ray"
    executor = RayExecutor()
    result = build(inputs, out, executor=executor)
    assert (executor.nodes, executor.cpus) == (2, 2)
    assert set(result.placements) == _alive_node_ids(), "image and shard tasks must run on both nodes"
    assert all(n > 0 for n in result.placements.values())
    assert folder_bytes(out) == local_bytes  # shards, manifests, index, stats, lock: the same bytes
    again = build(inputs, out, executor=RayExecutor())
    assert again.up_to_date


def test_node_removed_mid_build_ends_in_the_same_bytes(cluster, inputs, local_bytes, tmp_path):
    c, worker = cluster
    out = tmp_path / "lost-node"
    proc = subprocess.Popen(_cli(inputs, out, tmp_path, c.address), env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not any(out.glob(".staging/images/*/*/*")):
            time.sleep(0.005)
        assert proc.poll() is None, "the build must still be running when the node goes"
        c.remove_node(worker, allow_graceful=False)  # as a machine that vanishes
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        replacement = c.add_node(**node_args())
        c.wait_for_nodes()
        cluster_nodes_now = _alive_node_ids()
    assert proc.returncode == 0, stderr
    assert replacement.node_id in cluster_nodes_now
    assert folder_bytes(out) == local_bytes


def test_driver_sigkill_then_rerun_resumes_to_the_same_bytes(cluster, inputs, local_bytes, tmp_path):
    c, _ = cluster
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(inputs, out, tmp_path, c.address), env=ray_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    while proc.poll() is None and not any(out.glob("*.tar")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-run: {proc.stderr.read().decode()[-2000:]}"
    assert not (out / "dataset.lock").exists()
    result = build(inputs, out, executor=RayExecutor())
    assert result.reused > 0
    assert folder_bytes(out) == local_bytes
    assert not (out / ".staging").exists()


def test_kdata_toml_chooses_the_cluster(cluster, inputs, local_bytes, tmp_path):
    """`executor` / `ray_address` in ./kdata.toml, like the other settings (no command-line flag)."""
    c, _ = cluster
    (tmp_path / "kdata.toml").write_text(f'executor = "ray"\nray_address = "{c.address}"\n')
    cmd = [arg for arg in _cli(inputs, tmp_path / "toml", tmp_path, "-") if arg not in ("--executor", "ray")]
    cmd = cmd[:cmd.index("--ray-address")] + cmd[cmd.index("--ray-address") + 2:]
    done = subprocess.run(cmd, env=ray_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "tasks ran on 2 node(s)" in done.stdout, done.stdout + done.stderr[-2000:]
    assert folder_bytes(tmp_path / "toml") == local_bytes


def test_second_driver_on_the_same_output_refuses(cluster, inputs, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
         "l.acquire(); print('held', flush=True); time.sleep(60)", str(out / ".build.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildError, match="another build is running"):
            build(inputs, out, executor=RayExecutor())
    finally:
        holder.kill()
        holder.wait()


def test_a_node_with_other_library_versions_is_refused_before_any_work(cluster, inputs, tmp_path):
    """A third node whose interpreter reports another numpy (a sitecustomize on its PYTHONPATH
    stands in for a machine with another install)."""
    c, _ = cluster
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import numpy\nnumpy.__version__ = '9.9.9'\n")
    odd = c.add_node(**node_args(env_vars={"PYTHONPATH": os.pathsep.join([str(site), *sys.path])}))
    c.wait_for_nodes()
    out = tmp_path / "mixed"
    try:
        with pytest.raises(ToolchainMismatch, match=r"numpy 9\.9\.9 \(driver: .*no work was started"):
            build(inputs, out, executor=RayExecutor())
    finally:
        c.remove_node(odd)
    assert not list(out.glob("*.tar")) and not list(out.glob(".staging/images/*/*/*"))


# -- Ray and S3 together: tars in a bucket, the dataset into a bucket -----------------------------
@pytest.fixture(scope="module")
def tar_inputs(tmp_path_factory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("tar-inputs"), tar=True)


@pytest.fixture(scope="module")
def tar_local(tar_inputs, tmp_path_factory) -> dict[str, str]:
    """sha256 of every file (card/ included) of the local build from the same tars."""
    out = tmp_path_factory.mktemp("tar-local") / "ds"
    build(tar_inputs, out, workers=1)
    return {p.relative_to(out).as_posix(): _sha256(p.read_bytes()) for p in sorted(out.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _bucket_with_tars(s3_url: str | None, inputs: Inputs) -> tuple[Inputs, str]:
    """A fresh bucket holding the tars under raw/: (inputs that read them there, the output URL)."""
    if s3_url is None:
        pytest.skip("the s3 extras (s3fs, moto[server]) are not installed")
    import secrets

    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = f"kdata-ray-{secrets.token_hex(4)}"
    fs.mkdir(bucket)
    for path in sorted(inputs.src.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{bucket}/raw/{path.relative_to(inputs.src).as_posix()}", path.read_bytes())
    return Inputs(inputs.db, f"s3://{bucket}/raw", inputs.ids, inputs.hard), f"s3://{bucket}/datasets/t-1"


def _published(out: str) -> dict[str, str]:
    from kohaku_data import storage

    return {name: _sha256(storage.read_bytes(f"{out}/{name}")) for name, _ in storage.list_files(out)}


def test_ray_build_from_a_bucket_into_a_bucket_equals_local(cluster, s3_url, tar_inputs, tar_local):
    """Staging, shards and final files beside an s3:// output, written by tasks on both nodes."""
    from kohaku_data import storage

    remote, out = _bucket_with_tars(s3_url, tar_inputs)
    executor = RayExecutor()
    result = build(remote, out, executor=executor)
    assert set(result.placements) == _alive_node_ids() and all(n > 0 for n in result.placements.values())
    assert _published(out) == tar_local, "sha256 of every published object equals the local build's"
    assert storage.list_names(f"{out}/.staging") == [], "staging objects and the lease are gone"
    assert build(remote, out, executor=RayExecutor()).up_to_date


def test_ray_driver_sigkill_into_a_bucket_then_rerun_resumes_to_the_same_bytes(cluster, s3_url, tar_inputs,
                                                                              tar_local, tmp_path):
    from kohaku_data import storage

    c, _ = cluster
    remote, out = _bucket_with_tars(s3_url, tar_inputs)
    proc = subprocess.Popen(_cli(remote, out, tmp_path, c.address), env=ray_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    shards = lambda: [n for n in storage.list_names(out) if n.endswith(".tar")]  # noqa: E731
    while proc.poll() is None and not shards():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-run: {proc.stderr.read().decode()[-2000:]}"
    assert not storage.exists(f"{out}/dataset.lock")
    assert storage.exists(f"{out}/.staging/driver.lock"), "the killed driver's lease stays behind"
    result = build(remote, out, executor=RayExecutor())  # this machine, its pid gone: the lease is taken over
    assert result.reused > 0
    assert _published(out) == tar_local
    assert storage.list_names(f"{out}/.staging") == []


# -- the executor's fault handling, on the same cluster --------------------------------------------
def test_a_hung_task_is_cancelled_and_resubmitted(cluster, tmp_path):
    executor = RayExecutor(task_timeout=6)
    results = map_unordered(executor, ray_support.hang_first_time, [(str(tmp_path), i) for i in range(3)])
    assert sorted(results) == [0, 1, 2]
    assert (tmp_path / "hung-1").exists(), "task 1 hung once and was run again"


def test_a_task_whose_worker_dies_is_retried(cluster, tmp_path):
    results = map_unordered(RayExecutor(), ray_support.die_first_time, [(str(tmp_path), i) for i in range(2)])
    assert sorted(results) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["died-0", "died-1"]


def test_a_task_that_raises_is_not_retried(cluster, tmp_path):
    with pytest.raises(KdataError, match="task 0 refuses"):
        list(map_unordered(RayExecutor(), ray_support.fail_always, [(str(tmp_path), 0)]))
    assert (tmp_path / "runs").read_text() == "0\n"
