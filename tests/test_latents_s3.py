"""`kdata latents s3://…` against a real S3 API on loopback (moto's server through s3fs, a
fault-injecting proxy in front; tests/s3_support.py): the same latent files in the bucket as a
local run writes on a disk, a run failed by the store resumed to them, verified there, and the
trainer's reader giving the local batches from the bucket."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from typer.testing import CliRunner  # noqa: E402

from cli_support import checked  # noqa: E402
from kohaku_data import storage  # noqa: E402
from kohaku_data.assembly.executor import LocalExecutor  # noqa: E402
from kohaku_data.cli import app  # noqa: E402
from kohaku_data.latents import LatentSpec, make_latents, vae_sha256  # noqa: E402
from kohaku_data.latents import tasks as latent_tasks  # noqa: E402
from latents_support import save_tiny_vae  # noqa: E402
from s3_support import FaultProxy, s3_env  # noqa: E402
from test_build_support import build, make_inputs, small_recipe  # noqa: E402
from test_s3 import KDATA, _bucket, _upload, endpoint, s3  # noqa: E402, F401  (fixtures: the S3 server, this test's proxy)

TINY_BUCKETS = {"name": "tiny-64", "step": 32, "min_area": 48 * 64, "max_area": 64 * 96, "min_side": 32, "max_side": 128}
LO = {"name": "lo", "step": 16, "min_area": 24 * 32, "max_area": 32 * 32, "min_side": 16, "max_side": 64}
RECIPE = small_recipe(image={"bucket": TINY_BUCKETS, "levels": [LO]}, shard_max_bytes=30_000)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("latent-s3-inputs"), n_posts=10)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("tiny") / "vae")


@pytest.fixture(scope="module")
def local(inputs, tiny_vae, tmp_path_factory) -> Path:
    """The dataset built on a disk with its latent sets (main and level `lo`), made as a user does."""
    ds = tmp_path_factory.mktemp("latent-s3-local") / "ds"
    build(inputs, ds, RECIPE, workers=1)
    assert len(list(ds.glob("t-*.tar"))) >= 3, "a task per shard, several shards"
    result = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(tiny_vae), "--level", "all",
                                      "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    return ds


def _latent_files(local: Path) -> dict[str, bytes]:
    """What `kdata latents` wrote: every file under latents/ (part records too) and the card."""
    files = {p.relative_to(local).as_posix(): p.read_bytes() for p in (local / "latents").rglob("*") if p.is_file()}
    return {**files, "README.md": (local / "README.md").read_bytes()}


def _bucket_files(url: str, names) -> dict[str, bytes | None]:
    import s3fs

    # s3fs answers "missing" for a file absent from a folder listing it cached: this process
    # listed `.parts/` before `kdata latents` wrote more there in another process
    s3fs.S3FileSystem().invalidate_cache()
    found = {}
    for name in names:
        try:
            found[name] = storage.read_bytes(f"{url}/{name}")
        except FileNotFoundError:
            found[name] = None
    return found


def _without_latents(local: Path, to: Path) -> Path:
    """The built dataset as it was before `kdata latents` (no latents/, the build's card)."""
    shutil.copytree(local, to, ignore=shutil.ignore_patterns("latents", ".build.lock"))
    card = (to / "README.md").read_text()
    start = card.index("## Latents")
    (to / "README.md").write_text(card[:start] + card[card.index("## Files"):])
    return to


def _latents_cli(url: str, vae: Path, proxy: FaultProxy, *more: str) -> subprocess.CompletedProcess:
    cmd = [*KDATA, "latents", url, "--vae", str(vae), "--device", "cpu", "--no-progress", *more]
    return checked(subprocess.run(cmd, env=s3_env(proxy.url), capture_output=True, text=True, timeout=300))


def test_latents_of_a_dataset_built_into_a_bucket_are_the_local_bytes(inputs, local, tiny_vae, endpoint):
    url = f"s3://{_bucket()}/datasets/ds"
    build(inputs, url, RECIPE, workers=1)
    endpoint.fail_next(6, method="PUT")  # one more 500 in a row than botocore tries: kdata's retries go on
    endpoint.log.clear()
    run = _latents_cli(url, tiny_vae, endpoint, "--level", "all")
    assert run.returncode == 0, run.stderr
    assert endpoint.failures_left <= 0
    whole = [r for r in endpoint.log if r.method == "GET" and r.path.split("?")[0].endswith("/ds/manifest.parquet")
             and not r.range]
    assert len(whole) <= 1, "the dataset manifest's columns are read by range; only the card reads it whole"
    assert f"{url}/latents: " in run.stdout and f"{url}/latents/lo: " in run.stdout, run.stdout
    want = _latent_files(local)
    assert {"latents/latents.lock", "latents/lo/latents.lock", "latents/index.json"} <= set(want)
    got = _bucket_files(url, want)
    assert [name for name in want if got[name] != want[name]] == []
    listed = {f"latents/{rel}" for rel, _ in storage.list_files(f"{url}/latents")}
    assert listed == {n for n in want if n.startswith("latents/") and "/." not in n}, "nothing more in the bucket"

    check = checked(subprocess.run([*KDATA, "verify", url], env=s3_env(endpoint.url), capture_output=True,
                                   text=True, timeout=120))
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr


def test_a_run_the_store_failed_resumes_to_the_local_bytes_and_verify_finds_a_changed_shard(
        local, tiny_vae, endpoint, tmp_path, monkeypatch):
    url = f"s3://{_bucket()}/datasets/ds"
    _upload(_without_latents(local, tmp_path / "ds"), url)
    spec = LatentSpec(str(tiny_vae.resolve()), vae_sha256(tiny_vae), None, device="cpu")
    real, calls = latent_tasks.run_latent_task, []

    def store_fails_after_the_first(task):
        calls.append(task.url)
        if len(calls) == 2:  # the store refuses every upload now: more 500s than any retry rides out
            endpoint.fail_next(10_000, method="PUT")
        return real(task)

    monkeypatch.setattr("kohaku_data.latents.build.run_latent_task", store_fails_after_the_first)
    with pytest.raises(storage.StorageError, match="run the same command again to resume"):
        make_latents(url, spec, LocalExecutor(1))
    endpoint.fail_next(0)
    assert not storage.exists(f"{url}/latents/latents.lock")
    assert len(storage.list_names(f"{url}/latents/.parts")) == 1, "the first shard's part record"

    # the CLI in this process (the test above runs it as a user does): its work is the test's own
    run = CliRunner().invoke(app, ["latents", url, "--vae", str(tiny_vae), "--level", "all", "--device", "cpu",
                                   "--no-progress"])
    assert run.exit_code == 0, run.output
    assert f"{url}/latents: " in run.output and "1 shards kept" in run.output, run.output
    want = _latent_files(local)
    got = _bucket_files(url, want)
    assert [name for name in want if got[name] != want[name]] == []

    shard = sorted(n for n in storage.list_names(f"{url}/latents/lo") if n.endswith(".tar"))[0]
    data = bytearray(storage.read_bytes(f"{url}/latents/lo/{shard}"))
    data[1024] ^= 1
    storage.commit_bytes(f"{url}/latents/lo/{shard}", bytes(data))
    check = CliRunner().invoke(app, ["verify", url])
    assert check.exit_code == 1 and f"MISMATCH latents/lo/{shard}" in check.output, check.output


def test_the_reader_trains_from_the_buckets_latents_as_from_the_local_ones(local, endpoint):
    from kohaku_data.train import BucketBatchSampler, KdataDataset, KdataLoader

    url = f"s3://{_bucket()}/datasets/ds"
    _upload(local, url)

    def epoch(location: str, level: str | None) -> list[tuple[list[int], torch.Tensor]]:
        reader = KdataDataset(location, payload="latents", level=level)
        loader = KdataLoader(reader, BucketBatchSampler(reader, 2, seed=5, remainder="carry"), num_workers=0)
        loader.set_epoch(1)
        return [([int(k) for k in batch["key"]], batch["latents"]) for batch in loader]

    for level in (None, "lo"):
        want, got = epoch(str(local), level), epoch(url, level)
        assert len(want) > 1 and [k for k, _ in got] == [k for k, _ in want]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))


def test_a_bad_url_a_missing_bucket_no_build_and_a_refusing_store_are_one_sentence(local, tiny_vae, endpoint,
                                                                                   tmp_path):
    empty = f"s3://{_bucket()}/datasets/none"
    built = f"s3://{_bucket()}/datasets/ds"
    _upload(_without_latents(local, tmp_path / "ds"), built)
    cases = [("s3://no-such-bucket/ds", (), "bucket 'no-such-bucket' does not exist"),
             ("nosuchproto://x/ds", (), "nosuchproto"),
             (empty, ("--level", "all"), "is not a finished kdata build"),
             (built, ("--level", "nope"), "is not a level of")]
    for url, more, said in cases:
        run = _latents_cli(url, tiny_vae, endpoint, *more)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 1 and len(lines) == 1 and said in lines[0], (url, run.stderr)
    endpoint.fail_next(10_000, method="DELETE")  # the first write of a run: its lock goes
    try:
        run = _latents_cli(built, tiny_vae, endpoint)
    finally:
        endpoint.fail_next(0)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and "run the same command again to resume" in lines[0], run.stderr
    assert json.loads(storage.read_bytes(f"{built}/dataset.lock")), "the dataset itself is untouched"


def test_a_rebuild_into_the_bucket_keeps_the_latent_sets_and_the_cards_section(inputs, tiny_vae, endpoint):
    """As on a disk: a captions-only rebuild of a bucket dataset leaves latents/ alone (kdata
    latents then encodes nothing), and the rebuilt card still lists the sets."""
    url = f"s3://{_bucket()}/datasets/ds"
    build(inputs, url, RECIPE, workers=1)
    assert _latents_cli(url, tiny_vae, endpoint, "--level", "all").returncode == 0
    before = dict(storage.list_files(f"{url}/latents"))
    recaptioned = RECIPE.model_copy(update={"caption": RECIPE.caption.model_copy(update={"quality": False})})
    build(inputs, url, recaptioned, workers=1, force=True)
    assert dict(storage.list_files(f"{url}/latents")) == before
    card = storage.read_bytes(f"{url}/README.md").decode()
    section = card[card.index("## Latents"):card.index("## Files")]
    assert "| main images | `latents/` |" in section and "| level `lo` | `latents/lo/` |" in section, card
    assert "stale" not in section
    again = _latents_cli(url, tiny_vae, endpoint, "--level", "all")
    assert again.returncode == 0 and "(0 encoded" in again.stdout, again.stdout + again.stderr


def test_a_killed_run_resumes_to_the_local_bytes(local, tiny_vae, endpoint, tmp_path):
    """SIGKILL mid-run (the process gone, no cleanup): the rerun keeps the finished shards and
    ends with the local bytes."""
    from test_s3 import _kill_when

    url = f"s3://{_bucket()}/datasets/ds"
    _upload(_without_latents(local, tmp_path / "ds"), url)
    cmd = [*KDATA, "latents", url, "--vae", str(tiny_vae), "--device", "cpu", "--no-progress"]

    def parts() -> int:
        try:
            return len(storage.list_names(f"{url}/latents/.parts"))
        except FileNotFoundError:
            return 0

    assert _kill_when(cmd, s3_env(endpoint.url), lambda: parts() >= 1) == -9, "killed mid-run"
    assert not storage.exists(f"{url}/latents/latents.lock")
    run = _latents_cli(url, tiny_vae, endpoint)
    assert run.returncode == 0 and "shards kept" in run.stdout and " 0 shards kept" not in run.stdout, run.stdout
    want = {name: data for name, data in _latent_files(local).items()
            if name != "README.md" and not name.startswith("latents/lo/") and "/.parts/lo" not in name}
    got = _bucket_files(url, want)
    assert [name for name in want if got[name] != want[name]] == []
