"""KdataMix and KdataCurriculum: weighted mixtures of builds and stage switches, planned as pure
functions, with exact resume through KdataLoader (real builds, real DataLoader workers)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.train import BucketBatchSampler, KdataCurriculum, KdataLoader, KdataMix
from kohaku_data.train.errors import SamplerError
from test_train_support import built_dataset

pytest.importorskip("torch")


# -- the plan (pure, on manifest frames) -------------------------------------------------------------
def _frame(n: int, buckets: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"bucket": [f"b{v}" for v in rng.integers(0, buckets, n)],
                         "shard": [f"s-{i // 50:06d}.tar" for i in range(n)]})


def _binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """The central `level` interval of Binomial(n, p), from its exact pmf."""
    ks = np.arange(n + 1)
    logpmf = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in ks])
    logpmf += ks * math.log(p) + (n - ks) * math.log1p(-p)
    cdf = np.cumsum(np.exp(logpmf))
    tail = (1 - level) / 2
    return int(np.searchsorted(cdf, tail)), int(np.searchsorted(cdf, 1 - tail))


FRAMES = (_frame(900, 3, 0), _frame(150, 2, 1), _frame(400, 4, 2), _frame(300, 2, 3))
WEIGHTS = (3.0, 1.0, 0.5, 0.0)


def _mix(**kw) -> KdataMix:
    return KdataMix(list(zip(FRAMES, WEIGHTS)), batch_size=4, world_size=2, rank=kw.pop("rank", 0), seed=11,
                    steps_per_epoch=kw.pop("steps_per_epoch", 1500), **kw)


def test_shares_follow_the_weights_and_every_batch_is_one_dataset_and_bucket():
    mix = _mix()
    steps = np.concatenate([mix.sampler.steps(e) for e in range(4)])
    n, total = len(steps), sum(WEIGHTS)
    counts = np.bincount(steps[:, 0], minlength=len(FRAMES))
    assert counts[3] == 0  # weight 0: never drawn
    for d, w in enumerate(WEIGHTS[:3]):
        lo, hi = _binomial_interval(n, w / total)
        assert lo <= counts[d] <= hi, (d, counts[d], lo, hi)
    ends = np.cumsum([f.height for f in FRAMES])
    for epoch in range(4):
        mix.sampler.set_epoch(epoch)
        for (d, _, _), batch in zip(mix.sampler.steps(epoch), mix.sampler):
            assert len(batch) == 4
            owner = np.searchsorted(ends, batch, side="right")
            assert (owner == d).all()  # one dataset
            local = np.asarray(batch) - mix.offsets[d]
            assert FRAMES[d]["bucket"].gather(local).n_unique() == 1  # one bucket


def test_each_dataset_gives_its_own_epochs_in_order_and_the_plan_is_pure():
    mix = _mix()
    again = _mix()
    for epoch in (0, 3, 1):  # any order: no state carried between epochs
        assert np.array_equal(mix.sampler.steps(epoch), again.sampler.steps(epoch))
    # dataset d's global batches, step after step across mix epochs, are its own sampler's epochs 0, 1, ...
    world = [_mix(rank=r) for r in range(2)]
    got: dict[int, list[list[int]]] = {d: [] for d in range(3)}
    for epoch in range(3):
        for m in world:
            m.sampler.set_epoch(epoch)
        for (d, _, _), *ranks in zip(mix.sampler.steps(epoch), *(m.sampler for m in world)):
            got[int(d)].append([v - int(mix.offsets[d]) for part in ranks for v in part])
    for d in range(3):
        own = BucketBatchSampler(FRAMES[d], 8, seed=11)
        expected = []
        for e in range(100):
            own.set_epoch(e)
            expected += list(own)
            if len(expected) >= len(got[d]):
                break
        assert got[d] == expected[:len(got[d])] and got[d]


def test_a_state_from_another_mix_is_refused():
    state = _mix().sampler.state_dict()
    other = KdataMix(list(zip(FRAMES, (1.0, 1.0, 1.0, 0.0))), batch_size=4, world_size=2, seed=11,
                     steps_per_epoch=1500)
    with pytest.raises(SamplerError, match="weights"):
        other.sampler.load_state_dict(state)
    with pytest.raises(SamplerError, match="weights"):
        KdataMix([(FRAMES[0], -1.0)], batch_size=4)


# -- real builds through the loader ----------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    return built_dataset(root / "a", n_posts=24), built_dataset(root / "b", n_posts=40)


def _run(loader: KdataLoader, epochs: range, stop_after: int | None = None):
    """(epoch, dataset index, stage, keys) of every batch; with `stop_after`, also the state
    after that many batches (and the run stops there)."""
    seen = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["image"].ndim == 4  # one bucket: stacked
            assert len(set(batch["dataset_index"])) == 1
            seen.append((epoch, batch["dataset_index"][0], batch.get("stage", [0])[0], batch["key"].tolist()))
            if stop_after is not None and len(seen) == stop_after:
                return seen, loader.state_dict()
    return seen, None


@pytest.mark.parametrize("workers", [0, 2])
def test_mix_of_two_builds_resumes_at_the_exact_next_batch(builds, workers):
    a, b = builds

    def make() -> KdataLoader:
        mix = KdataMix([(a, 2.0), (str(b), 1.0)], batch_size=2, seed=3, decode="numpy", steps_per_epoch=12)
        return KdataLoader(mix, num_workers=workers)

    full, _ = _run(make(), range(3))
    assert len(full) == 36 and {d for _, d, _, _ in full} == {0, 1}
    keys = {d: set(pl.read_parquet(path / "manifest.parquet")["key"]) for d, path in enumerate((a, b))}
    assert all(set(k) <= keys[d] for _, d, _, k in full)
    for cut in (5, 12, 19):  # mid-epoch, at an epoch's end, mid-epoch of the next
        head, state = _run(make(), range(3), stop_after=cut)
        resumed = make()
        resumed.load_state_dict(state)
        tail, _ = _run(resumed, range(state["epoch"], 3))
        assert head + tail == full, cut


def test_curriculum_switches_at_its_step_and_replays_across_the_switch(builds):
    a, b = builds
    switch = 14  # in epoch 1 (10 steps an epoch)

    def make(workers: int) -> KdataLoader:
        first = KdataMix([(a, 1.0)], batch_size=2, seed=5, decode="numpy")
        second = KdataMix([(a, 1.0), (b, 3.0)], batch_size=2, seed=5, decode="numpy")
        return KdataLoader(KdataCurriculum([(0, first), (switch, second)], steps_per_epoch=10), num_workers=workers)

    full, _ = _run(make(0), range(3))
    assert [s for *_, s, _ in full] == [0] * switch + [1] * (30 - switch)
    assert {d for _, d, s, _ in full if s == 0} == {0} and {d for _, d, s, _ in full if s == 1} == {0, 1}
    # the second stage starts at its own first batch
    second = KdataMix([(a, 1.0), (b, 3.0)], batch_size=2, seed=5, decode="numpy")
    d0 = int(second.sampler.steps(0)[0, 0])
    first_keys = [second[i]["key"] for i in second.sampler.batch(0)]
    assert full[switch][1:] == (d0, 1, first_keys)
    for cut in (11, 14, 17):  # before, at and after the switch
        head, state = _run(make(2), range(3), stop_after=cut)
        resumed = make(2)
        resumed.load_state_dict(state)
        tail, _ = _run(resumed, range(state["epoch"], 3))
        assert head + tail == full, cut


def test_curriculum_refuses_bad_stages(builds):
    a, _ = builds
    mix = KdataMix([(a, 1.0)], batch_size=2)
    with pytest.raises(SamplerError, match="first must start at 0"):
        KdataCurriculum([(5, mix)])
    with pytest.raises(SamplerError, match="batch_size"):
        KdataCurriculum([(0, mix), (3, KdataMix([(a, 1.0)], batch_size=3))])
