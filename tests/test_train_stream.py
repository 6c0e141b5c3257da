"""Shard-local streaming: the window plan (train/window.py) and the shard cache
(train/shard_cache.py), on a real build served by moto's S3 server behind a fault proxy."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.train import BucketBatchSampler, KdataDataset, KdataMix
from kohaku_data.train.errors import ReaderError
from kohaku_data.train.plan import Layout, plan_epoch
from kohaku_data.train.shard_cache import Prefetcher, ShardCache, fetch_queue
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
    (url,), proxy = _uploaded(s3, monkeypatch, {"ds": built})
    return url, proxy


def _uploaded(s3, monkeypatch, builds: dict[str, Path]) -> tuple[list[str], FaultProxy]:
    """Each build (its files) under PREFIX/ of a fresh bucket, this test pointed at the proxy
    (its log, faults and stalls cleared): the builds' URLs and the proxy."""
    import s3fs

    use_endpoint(monkeypatch, s3[1].url)
    fs = s3fs.S3FileSystem()
    name = f"kdata-stream-{next(_buckets)}"
    fs.mkdir(name)
    for prefix, root in builds.items():
        for path in sorted(root.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                fs.pipe_file(f"{name}/{prefix}/{path.name}", path.read_bytes())
    proxy = s3[1]
    proxy.log.clear()
    proxy.fail_next(0)
    proxy.stall_next(0, 0)
    return [f"s3://{name}/{prefix}" for prefix in builds], proxy


def _tar_gets(proxy: FaultProxy) -> Counter:
    return Counter(r.path.split("?")[0].rsplit("/", 1)[-1] for r in proxy.log
                   if r.method == "GET" and r.path.split("?")[0].endswith(".tar"))


def _epoch_members(ds: KdataDataset, sampler: BucketBatchSampler) -> list[list[bytes]]:
    return [[ds.read_members(i)["image"] for i in batch] for batch in sampler]


def test_a_remote_manifest_is_read_by_the_column_chunks_the_reader_needs(built, remote, tmp_path):
    """The reader's columns of a remote parquet by range (pyarrow; polars would read the file
    whole): a manifest-like file whose captions are most of its bytes, as at scale, gives the
    local columns and its caption chunks are never fetched; the reader's index is the local one."""
    import numpy as np
    import polars as pl
    import s3fs

    from kohaku_data.train.ranges import RangeFiles

    url, proxy = remote
    assert KdataDataset(url, decode="bytes")._index.equals(KdataDataset(built, decode="bytes")._index)
    rng = np.random.default_rng(0)
    n = 20_000
    frame = pl.DataFrame({"key": np.arange(n), "shard": [f"t-{i // 500:06d}.tar" for i in range(n)],
                          "image_offset": rng.integers(0, 1 << 30, n),
                          "caption": [" ".join(f"tag_{t}" for t in rng.integers(0, 50_000, 40)) for _ in range(n)]})
    frame.write_parquet(tmp_path / "big.parquet", row_group_size=5_000)
    s3fs.S3FileSystem().put_file(str(tmp_path / "big.parquet"), f"{url.removeprefix('s3://')}/big.parquet")
    size = (tmp_path / "big.parquet").stat().st_size
    captions = pl.read_parquet(tmp_path / "big.parquet", columns=["caption"]).estimated_size()
    proxy.log.clear()
    got = RangeFiles(url).read_parquet("big.parquet", ["key", "shard", "image_offset"])
    assert got.equals(frame.drop("caption"))
    gets = [r.range for r in proxy.log if r.method == "GET" and r.path.split("?")[0].endswith("/big.parquet")]
    fetched = sum(int(b) - int(a) + 1 for a, b in (r.split("=")[1].split("-") for r in gets))
    assert captions > size / 2 and fetched < size / 3, (fetched, size, gets)
    assert RangeFiles(url).parquet_schema("big.parquet") == frame.schema


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


# -- mixes and curricula over S3: one prefetcher for all their datasets' caches --------------------------
class PrefetchedOnly(ShardCache):
    """A real ShardCache whose DataLoader workers never fetch: a worker that finds a shard missing
    waits for the loader's prefetcher (in the main process) to bring it and fails after `wait_s`.
    A run through it shows the prefetcher fetched every shard the workers read, and the store's
    request log is then the prefetcher's own fetch order."""

    def __init__(self, *args, wait_s: float = 60.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.owner, self.wait_s = os.getpid(), wait_s

    def fetch(self, name: str, *, evict: bool = True) -> bool:
        if os.getpid() == self.owner:
            return super().fetch(name, evict=evict)
        deadline = time.monotonic() + self.wait_s
        while not self.holds(name):
            if time.monotonic() > deadline:
                raise ReaderError(f"a worker had to fetch {name} from {self.location}: it was not prefetched")
            time.sleep(0.005)
        return True


@pytest.fixture(scope="module")
def built_small(tmp_path_factory) -> Path:
    """A second build of the same recipe: its shards have the same names as `built`'s."""
    return built_dataset(tmp_path_factory.mktemp("stream-small"), n_posts=24)


@pytest.fixture
def remote_pair(s3, built, built_small, monkeypatch) -> tuple[str, str, FaultProxy]:
    """`built_small` at s3://B/a/ds and `built` at s3://B/b/ds, through the proxy."""
    (small, large), proxy = _uploaded(s3, monkeypatch, {"a/ds": built_small, "b/ds": built})
    return small, large, proxy


def _tar_get_order(proxy: FaultProxy) -> list[str]:
    """'a/t-000003.tar' for each GET of a shard, in the order the store saw them."""
    paths = [r.path.split("?")[0] for r in proxy.log if r.method == "GET" and r.path.split("?")[0].endswith(".tar")]
    return [f"{p.split('/')[-3]}/{p.split('/')[-1]}" for p in paths]


def _queue_order(schedules) -> list[str]:
    return [f"{cache.location.split('/')[-2]}/{name}" for cache, name, _, _ in fetch_queue(schedules)]


def _batches(loader, epochs=(0,), stop_after: int | None = None, watch=None):
    """(dataset, stage, keys, image checksum) of every batch; with `stop_after` also the state
    after that many batches. `watch(batch)` runs after each batch (the cache's size)."""
    seen = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in loader:
            image = batch["image"].numpy()
            seen.append((int(batch["dataset_index"][0]), int(batch.get("stage", [0])[0]),
                         batch["key"].tolist(), int(image.astype(np.int64).sum())))
            if watch is not None:
                watch(batch)
            if stop_after is not None and len(seen) == stop_after:
                return seen, loader.state_dict()
    return seen, None


def _pair_mix(a, b, cache=None, directory=None, limit=None, **kw):
    """KdataMix of two builds (a: weight 2, b: weight 1); `cache`: a ShardCache class, one per
    dataset, sharing `directory` (and its limit); None: read the builds as they are."""
    if cache is None:
        parts = [(a, 2.0), (b, 1.0)]
    else:
        parts = [(KdataDataset(u, decode="numpy", cache=cache(u, directory, limit_bytes=limit)), w)
                 for u, w in ((a, 2.0), (b, 1.0))]
    return KdataMix(parts, batch_size=2, seed=3, window=1, steps_per_epoch=24, decode="numpy", **kw)


def _plan_limit(sampler, epochs=(0,)) -> int:
    """The most bytes the plan's shards hold at one step (each from its first use to its last):
    the smallest cache limit with which the prefetcher alone keeps the loop going (it never
    evicts; below it, the workers would fetch with eviction themselves)."""
    most, keep = 0, sampler.epoch
    for epoch in epochs:
        sampler.set_epoch(epoch)
        queue = fetch_queue(sampler.shard_schedules(0))
        for step in range(sampler.steps_per_epoch):
            most = max(most, sum(c.entries[n].size for c, n, first, last in queue if first <= step <= last))
    sampler.set_epoch(keep)
    return most


def test_mix_prefetches_its_datasets_in_plan_order_and_workers_only_read(built, built_small, remote_pair, tmp_path):
    """Two builds of one recipe (same shard names) on S3, each through its own ShardCache on one
    shared directory: KdataLoader fetches every shard before the workers read it, in the mix's
    first-use order across both datasets, once each, keeps the directory under its limit by
    dropping finished shards, and gives the local mix's batches (bytes included); so does
    prefetch=False."""
    from kohaku_data.train import KdataLoader

    url_a, url_b, proxy = remote_pair
    expected, _ = _batches(KdataLoader(_pair_mix(built_small, built), num_workers=0))
    assert {d for d, *_ in expected} == {0, 1}
    limit = _plan_limit(_pair_mix(url_a, url_b, ShardCache, tmp_path / "probe", 1 << 30).sampler)
    mix = _pair_mix(url_a, url_b, PrefetchedOnly, tmp_path / "cache", limit)
    loader = KdataLoader(mix, num_workers=2)
    assert loader.prefetch
    queue = _queue_order(mix.sampler.shard_schedules(0))
    caches = mix.sampler.shard_caches()
    peak = [0, 0]

    def watch(_):
        peak[0] = max(peak[0], caches[0].used_bytes())
        peak[1] = max(peak[1], len(caches[0].cached()) + len(caches[1].cached()))

    proxy.log.clear()
    got, _ = _batches(loader, watch=watch)
    assert got == expected
    assert _tar_get_order(proxy) == queue  # only the prefetcher fetched, in the plan's order, once each
    assert {q.split("/")[0] for q in queue} == {"a", "b"} and len(set(queue)) == len(queue)
    assert 0 < peak[0] <= limit and peak[1] < len(queue)  # finished shards were dropped
    plain = KdataLoader(_pair_mix(url_a, url_b, ShardCache, tmp_path / "plain", limit), num_workers=0,
                        prefetch=False)
    assert not plain.prefetch and _batches(plain)[0] == expected


def test_mix_resumes_mid_epoch_with_the_prefetch_from_the_resumed_step(built, built_small, remote_pair, tmp_path):
    from kohaku_data.train import KdataLoader

    url_a, url_b, proxy = remote_pair
    full, _ = _batches(KdataLoader(_pair_mix(built_small, built), num_workers=0), epochs=(0, 1))
    limit = _plan_limit(_pair_mix(url_a, url_b, ShardCache, tmp_path / "probe", 1 << 30).sampler, (0, 1))
    # (the head in the loop's process: its state is the same with any num_workers, and forked
    # workers of a run stopped early would wait on shards nobody prefetches any more)
    head, state = _batches(KdataLoader(_pair_mix(url_a, url_b, ShardCache, tmp_path / "c1", limit),
                                       num_workers=0), epochs=(0, 1), stop_after=31)
    assert state["epoch"] == 1 and state["batches_done"] == 7
    mix = _pair_mix(url_a, url_b, PrefetchedOnly, tmp_path / "c2", limit)  # a fresh node: nothing cached
    resumed = KdataLoader(mix, num_workers=2)
    resumed.load_state_dict(state)
    queue = _queue_order(mix.sampler.shard_schedules())  # where the next iteration starts
    assert queue != _queue_order(mix.sampler.shard_schedules(0))
    proxy.log.clear()
    tail, _ = _batches(resumed, epochs=(1,))
    assert head + tail == full
    assert _tar_get_order(proxy) == queue  # only the shards of the steps left, in their order
    off = KdataLoader(_pair_mix(url_a, url_b, ShardCache, tmp_path / "c3", limit), num_workers=0, prefetch=False)
    off.load_state_dict(state)
    assert _batches(off, epochs=(1,))[0] == tail


def test_curriculum_prefetches_across_its_switch_and_resumes_there(built, built_small, remote_pair, tmp_path):
    """A curriculum whose stages share a dataset (one ShardCache object): the epoch holding the
    switch is prefetched from the plan of both stages (the shared shards once, kept to their
    last use), the workers only read, and a resume just before the switch gives the same batches
    as a run without prefetch."""
    from kohaku_data.train import KdataCurriculum, KdataLoader

    url_a, url_b, proxy = remote_pair
    switch = 14  # epoch 1 (10 steps an epoch), its step 4

    def make(a, b, cache=None, directory=None, limit=1 << 30, **kw) -> KdataLoader:
        if cache is not None:
            a = KdataDataset(a, decode="numpy", cache=cache(a, directory, limit_bytes=limit))
            b = KdataDataset(b, decode="numpy", cache=cache(b, directory, limit_bytes=limit))
        first = KdataMix([(a, 1.0)], batch_size=2, seed=5, window=1, decode="numpy")
        second = KdataMix([(a, 1.0), (b, 3.0)], batch_size=2, seed=5, window=1, decode="numpy")
        return KdataLoader(KdataCurriculum([(0, first), (switch, second)], steps_per_epoch=10), **kw)

    expected, _ = _batches(make(built_small, built, num_workers=0), epochs=(1,))
    assert [s for _, s, _, _ in expected] == [0] * 4 + [1] * 6
    probe = make(url_a, url_b, ShardCache, tmp_path / "probe")
    limit = _plan_limit(probe.sampler, (1,))
    loader = make(url_a, url_b, PrefetchedOnly, tmp_path / "c1", limit, num_workers=2)
    loader.set_epoch(1)
    schedules = loader.sampler.shard_schedules(0)
    stage_a = loader.sampler.mixes[0].datasets[0].shards
    assert stage_a is loader.sampler.mixes[1].datasets[0].shards
    assert len(loader.sampler.shard_caches()) == 2 and {id(c) for c, _ in schedules} <= {id(stage_a), id(
        loader.sampler.mixes[1].datasets[1].shards)}
    queue = _queue_order(schedules)
    proxy.log.clear()
    assert _batches(loader, epochs=(1,))[0] == expected
    assert _tar_get_order(proxy) == queue and len(set(queue)) == len(queue)
    head, state = _batches(make(url_a, url_b, ShardCache, tmp_path / "c2", limit, num_workers=0), epochs=(1,),
                           stop_after=3)
    for cache, directory, prefetch, workers in ((PrefetchedOnly, "c3", None, 2), (ShardCache, "c4", False, 0)):
        resumed = make(url_a, url_b, cache, tmp_path / directory, limit, num_workers=workers, prefetch=prefetch)
        resumed.load_state_dict(state)
        assert head + _batches(resumed, epochs=(1,))[0] == expected


def test_a_cache_of_another_build_is_refused_and_prefetch_true_without_any(built, built_small, tmp_path):
    from kohaku_data.train import KdataLoader

    cache = ShardCache(built_small, tmp_path / "cache", limit_bytes=10 << 20)
    own = KdataDataset(built_small, decode="numpy", cache=cache)
    with pytest.raises(ReaderError, match="its own location"):  # its shard names are in `cache` too
        KdataDataset(built, decode="numpy", cache=cache)
    plain = KdataMix([(built_small, 1.0), (built, 1.0)], batch_size=2, decode="numpy")
    with pytest.raises(ReaderError, match="KdataMix / KdataCurriculum"):
        KdataLoader(plain, prefetch=True)
    assert not KdataLoader(plain).prefetch
    shared = KdataMix([(own, 1.0), (built, 1.0)], batch_size=2, decode="numpy")  # one dataset cached
    assert KdataLoader(shared, prefetch=True).prefetch


def test_shared_cache_directory_keeps_same_named_shards_of_two_builds_apart(built, built_small, tmp_path):
    name = sorted(p.name for p in built_small.glob("*.tar"))[0]
    assert (built / name).read_bytes() != (built_small / name).read_bytes()
    small = ShardCache(built_small, tmp_path / "cache", limit_bytes=10 << 20)
    large = ShardCache(built, tmp_path / "cache", limit_bytes=10 << 20)
    assert small.read(name, 0, 2048) == (built_small / name).read_bytes()[:2048]
    assert large.read(name, 0, 2048) == (built / name).read_bytes()[:2048]
    assert small.cached() == [name] and large.cached() == [name]
    assert small.drop(name) and not small.holds(name) and large.holds(name)


def test_mix_schedule_is_each_steps_shards_from_the_plan(built, built_small, tmp_path):
    """shard_schedules against a step-by-step walk of the batches (both datasets cycle their
    epochs; one dataset twice over one shared cache: its shards merged), from any start."""
    cache_a = ShardCache(built_small, tmp_path / "a", limit_bytes=10 << 20)
    cache_b = ShardCache(built, tmp_path / "b", limit_bytes=10 << 20)
    parts = [(KdataDataset(built_small, decode="bytes", cache=cache_a), 2.0),
             (KdataDataset(built, decode="bytes", cache=cache_b), 1.0),
             (KdataDataset(built_small, decode="bytes", cache=cache_a), 1.0)]
    mix = KdataMix(parts, batch_size=2, seed=7, window=2, steps_per_epoch=40)
    for epoch, start in ((0, 0), (3, 0), (3, 17)):
        mix.sampler.set_epoch(epoch)
        uses: dict[tuple[int, str], list[int]] = {}
        for b in range(start, 40):
            for i in mix.sampler.batch(epoch * 40 + b):
                d, local = mix.locate(i)
                ds = mix.datasets[d]
                key = (id(ds.shards), ds._shard_names[ds._shard_code[int(local)]])
                uses.setdefault(key, [b, b])[1] = b
        got = {(id(c), n): [f, l] for c, n, f, l in fetch_queue(mix.sampler.shard_schedules(start))}
        assert got == uses
        firsts = [f for _, _, f, _ in fetch_queue(mix.sampler.shard_schedules(start))]
        assert firsts == sorted(firsts)
