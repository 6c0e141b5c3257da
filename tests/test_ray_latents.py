"""`kdata latents --executor ray` on a real two-node Ray cluster on this machine (loopback only,
as tests/test_ray_build.py: run in their own pytest invocation, `make test` does): the latent
sets of a 2-level build, made by tasks on both nodes, are byte for byte the local executor's."""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before `import ray`: loopback addresses
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -c constraints.txt '.[ray]')")
pytest.importorskip("diffusers", reason="the latents extra is not installed (pip install '.[latents]')")
from ray.cluster_utils import Cluster  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from kohaku_data.cli import app  # noqa: E402
from ray_support import node_args  # noqa: E402
from latents_support import save_tiny_vae  # noqa: E402
from test_build_support import build, make_inputs, small_recipe  # noqa: E402

TINY_BUCKETS = {"name": "tiny-64", "step": 32, "min_area": 48 * 64, "max_area": 64 * 96, "min_side": 32, "max_side": 128}
LO = {"name": "lo", "step": 16, "min_area": 24 * 32, "max_area": 32 * 32, "min_side": 16, "max_side": 64}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args=node_args(head=True))
    c.add_node(**node_args())
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    inputs = make_inputs(tmp_path_factory.mktemp("inputs"), n_posts=10)
    out = tmp_path_factory.mktemp("ladder") / "ds"
    build(inputs, out, small_recipe(image={"bucket": TINY_BUCKETS, "levels": [LO]}, shard_max_bytes=30_000), workers=1)
    assert len(list(out.glob("t-*.tar"))) >= 4, "tasks for both nodes"
    return out


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("tiny") / "vae")


def _latents(ds: Path, vae: Path, *executor: str) -> dict[str, bytes]:
    """Run `kdata latents DS --vae VAE --level all` (in process); every file under DS/latents and the card."""
    result = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(vae), "--level", "all", "--device", "cpu",
                                      "--no-progress", *executor])
    assert result.exit_code == 0, result.output
    files = {p.relative_to(ds).as_posix(): p.read_bytes() for p in sorted((ds / "latents").rglob("*")) if p.is_file()}
    return {**files, "README.md": (ds / "README.md").read_bytes()}


def test_ray_latents_of_every_level_equal_the_local_executors_bytes(cluster, dataset, tiny_vae, tmp_path, monkeypatch):
    local, remote = (tmp_path / "local", tmp_path / "ray")
    for folder in (local, remote):
        shutil.copytree(dataset, folder)
    want = _latents(local, tiny_vae, "--workers", "1")
    assert {"latents/latents.lock", "latents/lo/latents.lock"} <= set(want)

    from kohaku_data.assembly import executors

    made, real = [], executors.make_executor

    def recording(*args, **kwargs):  # the CLI's executor, to see where its tasks ran
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(executors, "make_executor", recording)
    got = _latents(remote, tiny_vae, "--executor", "ray", "--ray-address", cluster.address)
    assert type(made[0]).__name__ == "RayExecutor" and made[0].nodes == 2
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(made[0].placements) == alive, "latent tasks ran on both nodes"
    assert got == want, sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
