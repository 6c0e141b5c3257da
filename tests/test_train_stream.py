"""Shard-local streaming: the window plan (train/window.py) and the shard cache
(train/shard_cache.py), on a real build served by moto's S3 server behind a fault proxy."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.train import BucketBatchSampler, KdataDataset
from kohaku_data.train.errors import ReaderError
from kohaku_data.train.plan import Layout, plan_epoch
from kohaku_data.train.shard_cache import Prefetcher, ShardCache
from kohaku_data.train.window import shard_schedule, shard_windows, windowed
from test_train_support import built_dataset

pytest.importorskip("s3fs")
pytest.importorskip("moto")
from s3_support import FaultProxy, server_and_proxy, use_endpoint  # noqa: E402


# -- the window plan (pure) -------------------------------------------------------------------------
def _synthetic(n: int = 3000, shards: int = 40, buckets: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, buckets, n).astype(np.int32)
    shard_of = np.sort(rng.integers(0, shards, n)).astype(np.int64)
    return Layout.build(tuple(f"b{i}" for i in range(buckets)), codes), shard_of


@pytest.mark.parametrize("remainder", ["carry", "pad", "drop"])
@pytest.mark.parametrize("window", [1, 3, 8])
def test_window_plan_keeps_the_entries_and_each_batch_one_bucket_from_one_window(remainder, window):
    layout, shard_of = _synthetic()
    for epoch in (0, 3):
        base = plan_epoch(layout, 7, epoch, 16, remainder)
        plan = windowed(base, shard_of, 40, 7, window)
        assert plan.report == base.report
        assert Counter(zip(plan.batches.ravel().tolist(), plan.padded.ravel().tolist())) == \
            Counter(zip(base.batches.ravel().tolist(), base.padded.ravel().tolist()))
        assert (layout.codes[plan.batches] == plan.bucket[:, None]).all()
        windows = shard_windows(40, 7, epoch, window)[shard_of[plan.batches]]
        one_window = (windows == windows[:, :1]).all(axis=1)
        # windows first, in order, then the tail (mixed windows allowed only there)
        first_mixed = np.flatnonzero(~one_window)
        tail_start = first_mixed[0] if first_mixed.size else len(plan.batches)
        assert (np.diff(windows[:tail_start, 0]) >= 0).all()
        # each shard is read in at most two runs of batches: its window, then the tail
        runs = Counter(c for c, _, _ in shard_schedule(plan.batches[:tail_start], shard_of))
        assert max(runs.values()) == 1
        assert windowed(base, shard_of, 40, 7, window).digest() == plan.digest()  # a pure function


def test_window_of_all_shards_is_todays_plan():
    layout, shard_of = _synthetic()
    base = plan_epoch(layout, 1, 2, 8, "carry")
    assert windowed(base, shard_of, 40, 1, 40).digest() == base.digest()
    assert windowed(base, shard_of, 40, 1, None).digest() == base.digest()
    assert windowed(base, shard_of, 40, 1, 4).digest() != base.digest()


# -- a build on S3 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return built_dataset(tmp_path_factory.mktemp("stream"), n_posts=40)


@pytest.fixture(scope="module")
def s3():
    with server_and_proxy() as pair:
        yield pair


_buckets = iter(range(1_000_000))


@pytest.fixture
def remote(s3, built, monkeypatch) -> tuple[str, FaultProxy]:
    """The build uploaded to a fresh bucket; this test talks to it through the proxy."""
    import s3fs

    use_endpoint(monkeypatch, s3[1].url)
    fs = s3fs.S3FileSystem()
    name = f"kdata-stream-{next(_buckets)}"
    fs.mkdir(name)
    for path in sorted(built.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            fs.pipe_file(f"{name}/ds/{path.name}", path.read_bytes())
    proxy = s3[1]
    proxy.log.clear()
    proxy.fail_next(0)
    proxy.stall_next(0, 0)
    return f"s3://{name}/ds", proxy


def _tar_gets(proxy: FaultProxy) -> Counter:
    return Counter(r.path.split("?")[0].rsplit("/", 1)[-1] for r in proxy.log
                   if r.method == "GET" and r.path.split("?")[0].endswith(".tar"))


def _epoch_members(ds: KdataDataset, sampler: BucketBatchSampler) -> list[list[bytes]]:
    return [[ds.read_members(i)["image"] for i in batch] for batch in sampler]


def test_cached_epoch_reads_each_shard_once_and_gives_the_local_bytes(built, remote, tmp_path):
    url, proxy = remote
    local = KdataDataset(built, decode="bytes")
    cache = ShardCache(url, tmp_path / "cache", limit_bytes=10 << 20)
    ds = KdataDataset(url, decode="bytes", cache=cache)
    sampler = BucketBatchSampler(ds, 2, seed=3, remainder="pad", window=2)
    proxy.log.clear()
    got = _epoch_members(ds, sampler)
    assert got == [[local.read_members(i)["image"] for i in batch] for batch in sampler]
    gets = _tar_gets(proxy)
    assert set(gets) == set(ds._shard_names) and max(gets.values()) == 1  # one GET per shard


def test_500s_stalls_and_concurrent_processes_fetch_once_and_same_batches(built, remote, tmp_path):
    url, proxy = remote
    ds_local = KdataDataset(built, decode="bytes")
    sampler = BucketBatchSampler(ds_local, 2, seed=5, remainder="pad", window=2)
    clean = [[ds_local.read_members(i)["image"] for i in b] for b in sampler]
    cache = ShardCache(url, tmp_path / "cache", limit_bytes=10 << 20, stall_s=0.5, backoff_s=0.01)
    proxy.log.clear()
    proxy.fail_next(4, method="GET")
    proxy.stall_next(2, 1.5)
    ds = KdataDataset(url, decode="bytes", cache=cache)
    assert _epoch_members(ds, BucketBatchSampler(ds, 2, seed=5, remainder="pad", window=2)) == clean
    # several processes at once on a fresh cache: each shard still fetched by one of them
    fresh = ShardCache(url, tmp_path / "shared", limit_bytes=10 << 20)
    proxy.log.clear()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_read_all, args=(fresh, sorted(fresh.entries))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert max(_tar_gets(proxy).values()) == 1 and len(_tar_gets(proxy)) == len(fresh.entries)


def _read_all(cache: ShardCache, names: list[str]) -> None:
    for name in names:
        cache.read(name, 0, 512)


def test_a_corrupt_shard_is_refused_and_never_cached(built, tmp_path):
    copy = tmp_path / "ds"
    copy.mkdir()
    for path in built.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    name = sorted(copy.glob("*.tar"))[0].name
    data = bytearray((copy / name).read_bytes())
    data[700] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    cache = ShardCache(copy, tmp_path / "cache", limit_bytes=10 << 20, attempts=2, backoff_s=0.01)
    with pytest.raises(ReaderError, match="sha256 differs"):
        cache.fetch(name)
    assert cache.cached() == [] and cache.used_bytes() == 0
    (copy / name).write_bytes((built / name).read_bytes())  # the store is repaired: fetched again
    assert cache.fetch(name) and cache.cached() == [name]


def test_cache_stays_under_its_limit_with_the_prefetcher_and_resumes_exactly(built, remote, tmp_path):
    url, proxy = remote
    sizes = {p.name: p.stat().st_size for p in built.glob("*.tar")}
    limit = 2 * max(sizes.values())
    cache = ShardCache(url, tmp_path / "cache", limit_bytes=limit)
    ds = KdataDataset(url, decode="bytes", cache=cache)
    sampler = BucketBatchSampler(ds, 2, seed=9, remainder="carry", window=1)
    done = [0]
    prefetcher = Prefetcher(cache, sampler.shard_schedule(0), lambda: done[0]).start()
    peak, keys = 0, []
    for batch in sampler:
        keys.append([ds[i]["key"] for i in batch])  # read through the cache
        peak = max(peak, cache.used_bytes())
        done[0] += 1
        if done[0] == 3:
            state = sampler.state_dict()
    prefetcher.stop()
    assert prefetcher.error is None and 0 < peak <= limit
    resumed = BucketBatchSampler(KdataDataset(url, decode="bytes", cache=cache), 2, seed=9, window=1)
    resumed.load_state_dict(state)
    assert [[int(ds._cols["key"][i]) for i in b] for b in resumed] == keys[3:]
    with pytest.raises(Exception, match="window"):
        BucketBatchSampler(ds, 2, seed=9, window=2).load_state_dict(state)


def test_cache_refuses_a_limit_below_one_shard(built, tmp_path):
    with pytest.raises(ReaderError, match="cache limit"):
        ShardCache(built, tmp_path / "c", limit_bytes=1000)


def test_window_needs_the_shard_column_only_when_set():
    frame = pl.DataFrame({"key": [1, 2, 3, 4], "bucket": ["a", "a", "b", "b"]})
    assert len(BucketBatchSampler(frame, 2)) == 2


def test_loader_prefetches_through_the_cache_with_workers(built, remote, tmp_path):
    """KdataLoader runs the Prefetcher itself: an epoch over S3 with 2 workers reads each shard
    about once (<= 2 GETs per shard), gives the local batches, and the prefetcher drops shards
    the loop has finished with (without it, every shard would stay in the cache)."""
    from kohaku_data.train import KdataLoader

    url, proxy = remote
    local = KdataDataset(built, decode="numpy")
    expected = [[int(local._cols["key"][i]) for i in b] for b in BucketBatchSampler(local, 2, seed=4, window=2)]
    cache = ShardCache(url, tmp_path / "cache", limit_bytes=20 << 20)
    ds = KdataDataset(url, decode="numpy", cache=cache)
    loader = KdataLoader(ds, BucketBatchSampler(ds, 2, seed=4, window=2), num_workers=2)
    assert loader.prefetch
    proxy.log.clear()
    keys = [batch["key"].tolist() for batch in loader]
    assert keys == expected
    gets = _tar_gets(proxy)
    assert set(gets) == set(ds._shard_names) and sum(gets.values()) <= 2 * len(ds._shard_names), gets
    assert loader.prefetcher is None  # stopped with the epoch
    assert len(cache.cached()) < len(ds._shard_names)  # finished shards were dropped
    with pytest.raises(ReaderError, match="ShardCache"):
        KdataLoader(local, BucketBatchSampler(local, 2), prefetch=True)
