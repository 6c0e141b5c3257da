"""The epoch plan and BucketBatchSampler on manifests made here (no build needed).

Each property is checked on a manifest with buckets of very different sizes, including buckets
smaller than one global batch, so carry/pad/drop all have leftovers to deal with.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from kohaku_data.train import BucketBatchSampler, PadIndex, SamplerError
from kohaku_data.train.plan import Layout, plan_epoch

# bucket sizes: large, medium, smaller than a global batch of 8, one sample
SIZES = {"1024x1024": 53, "832x1216": 21, "1216x832": 5, "640x1536": 1}


def manifest(sizes: dict[str, int] = SIZES, seed: int = 0) -> pl.DataFrame:
    buckets = np.concatenate([np.full(n, name) for name, n in sizes.items()])
    np.random.default_rng(seed).shuffle(buckets)  # buckets interleaved in key order, as in a real build
    return pl.DataFrame({"key": np.arange(buckets.size) * 3 + 1, "bucket": buckets,
                         "weight": np.random.default_rng(seed + 1).uniform(0, 3, buckets.size)})


def layout(frame: pl.DataFrame, weights=None) -> Layout:
    names = tuple(sorted(frame["bucket"].unique().to_list()))
    codes = np.searchsorted(np.array(names), frame["bucket"].to_numpy())
    return Layout.build(names, codes, weights)


@pytest.mark.parametrize("remainder", ["carry", "drop", "pad"])
def test_every_global_batch_is_one_bucket_and_ranks_get_equal_slices(remainder):
    frame = manifest()
    bucket = frame["bucket"].to_numpy()
    samplers = [BucketBatchSampler(frame, 4, world_size=2, rank=r, seed=3, remainder=remainder) for r in range(2)]
    for epoch in range(3):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len(per_rank[0]) == len(per_rank[1]) == samplers[0].report.batches > 0
        for a, b in zip(*per_rank):
            assert len(a) == len(b) == 4
            assert len({bucket[i] for i in a + b}) == 1
        plan = samplers[0].plan()
        assert [a + b for a, b in zip(*per_rank)] == plan.batches.tolist()


def test_drop_covers_every_sample_but_what_it_reports():
    frame = manifest()
    plan = plan_epoch(layout(frame), seed=0, epoch=0, global_batch=8, remainder="drop")
    seen = plan.batches.ravel()
    assert np.unique(seen).size == seen.size  # no repeats
    assert plan.report.dropped == frame.height - seen.size > 0
    # the dropped ones are exactly each bucket's leftover count
    assert plan.report.dropped == sum(n % 8 for n in SIZES.values())


def test_pad_repeats_within_the_bucket_and_flags_the_repeats():
    frame = manifest()
    plan = plan_epoch(layout(frame), seed=0, epoch=0, global_batch=8, remainder="pad")
    real = plan.batches[~plan.padded]
    assert np.sort(real).tolist() == list(range(frame.height))  # every sample once, unflagged
    assert plan.report.padded == int(plan.padded.sum()) == sum(-n % 8 for n in SIZES.values())
    bucket = frame["bucket"].to_numpy()
    for row, pad in zip(plan.batches, plan.padded):
        assert len(set(bucket[row])) == 1  # repeats come from the batch's own bucket
        assert not pad.any() or pad[-int(pad.sum()):].all()  # and only fill its end


def test_carry_sees_every_sample_and_accounts_for_every_draw():
    frame = manifest()
    lay = layout(frame)
    counts = np.zeros(frame.height, int)
    for epoch in range(12):
        plan = plan_epoch(lay, seed=1, epoch=epoch, global_batch=8, remainder="carry")
        np.add.at(counts, plan.batches.ravel(), 1)
        r = plan.report
        assert r.padded == r.dropped == 0
        # everything drawn so far is either trained or waiting (carried out), nothing lost
        assert counts.sum() + r.carried_out == (epoch + 1) * frame.height
    assert (counts > 0).all()  # the one-sample bucket too
    big = frame["bucket"].to_numpy() == "1024x1024"
    assert set(counts[big]) <= {11, 12}  # a big bucket lags by at most one epoch


def test_carry_small_bucket_fills_across_epochs():
    frame = manifest({"a": 3, "b": 16})
    lay = layout(frame)
    small = set(np.flatnonzero(frame["bucket"].to_numpy() == "a").tolist())
    reports = [plan_epoch(lay, 0, e, 8, "carry") for e in range(3)]
    small_batches = [[row for row in p.batches.tolist() if set(row) <= small] for p in reports]
    assert [len(b) for b in small_batches] == [0, 0, 1]  # 3, 6, then 9 draws: one batch of 8
    assert reports[2].report.carried_in == 6 and reports[2].report.carried_out == 1


def test_plan_is_a_pure_function_of_its_inputs():
    frame = manifest()
    a = plan_epoch(layout(frame), 5, 2, 8, "carry").digest()
    assert plan_epoch(layout(frame), 5, 2, 8, "carry").digest() == a
    assert plan_epoch(layout(frame), 6, 2, 8, "carry").digest() != a
    assert plan_epoch(layout(frame), 5, 3, 8, "carry").digest() != a
    # another interpreter with another hash seed computes the same plan
    code = ("import numpy as np, polars as pl, sys; sys.path.insert(0, 'tests');"
            "from test_train_plan import manifest, layout; from kohaku_data.train.plan import plan_epoch;"
            "print(plan_epoch(layout(manifest()), 5, 2, 8, 'carry').digest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=_repo_root())
    assert out.stdout.strip() == a


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def test_weights_bias_draws_exactly_floor_or_ceil_and_zero_is_never_drawn():
    frame = manifest({"a": 40, "b": 24})
    w = frame["weight"].to_numpy().copy()
    w[:5] = 0.0
    plan = plan_epoch(layout(frame, w), 0, 0, 8, "pad")
    counts = np.bincount(plan.batches[~plan.padded].ravel(), minlength=frame.height)
    expect = w / w.mean()
    assert (counts >= np.floor(expect - 1e-9)).all() and (counts <= np.ceil(expect + 1e-9)).all()
    assert (counts[:5] == 0).all() and plan.report.excluded == 5
    heavy, light = expect > 2, (expect > 0) & (expect < 0.5)
    assert counts[heavy].mean() > counts[light].mean()


def test_weights_from_a_column_name_and_bad_weights_are_refused():
    frame = manifest()
    by_name = BucketBatchSampler(frame, 4, weights="weight").plan().digest()
    by_array = BucketBatchSampler(frame, 4, weights=frame["weight"].to_numpy()).plan().digest()
    assert by_name == by_array != BucketBatchSampler(frame, 4).plan().digest()
    with pytest.raises(SamplerError, match="nulls"):
        BucketBatchSampler(frame.with_columns(pl.lit(None, pl.Float64).alias("weight")), 4, weights="weight")
    with pytest.raises(SamplerError, match=">= 0"):
        BucketBatchSampler(frame, 4, weights=-frame["weight"].to_numpy())
    with pytest.raises(SamplerError, match="one weight per"):
        BucketBatchSampler(frame, 4, weights=[1.0, 2.0])


def test_pad_entries_are_flagged_pad_indices():
    frame = manifest()
    flagged = [i for batch in BucketBatchSampler(frame, 4, world_size=2, remainder="pad") for i in batch
               if isinstance(i, PadIndex)]
    assert flagged and all(i.padded for i in flagged)


def _drain(sampler, n=None):
    out = []
    for batch in sampler:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize("remainder", ["carry", "pad"])
def test_resume_mid_epoch_continues_at_the_next_batch(remainder):
    frame = manifest()
    full = BucketBatchSampler(frame, 4, seed=2, remainder=remainder)
    full.set_epoch(1)
    expected = _drain(full)
    first = BucketBatchSampler(frame, 4, seed=2, remainder=remainder)
    first.set_epoch(1)
    head = _drain(first, 7)
    state = first.state_dict()
    assert state["batches_done"] == 7 and state["epoch"] == 1
    resumed = BucketBatchSampler(frame, 4, seed=2, remainder=remainder)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the usual loop calls set_epoch for the resumed epoch: it keeps the position
    assert head + _drain(resumed) == expected
    resumed.set_epoch(2)
    assert len(_drain(resumed)) == resumed.report.batches  # next epoch starts at its beginning


def test_resume_after_world_size_change_keeps_global_batches():
    frame = manifest()
    two = [BucketBatchSampler(frame, 2, world_size=2, rank=r, seed=4) for r in range(2)]
    done = [_drain(s, 5) for s in two]
    state = two[0].state_dict()
    assert state == two[1].state_dict()
    one = BucketBatchSampler(frame, 4, world_size=1, seed=4)
    one.load_state_dict(state)
    tail = _drain(one)
    assert [a + b for a, b in zip(*done)] + tail == one.plan().batches.tolist()


def test_state_that_does_not_fit_is_refused():
    frame = manifest()
    state = BucketBatchSampler(frame, 4, world_size=2).state_dict()
    with pytest.raises(SamplerError, match="global_batch"):
        BucketBatchSampler(frame, 4, world_size=1).load_state_dict(state)
    with pytest.raises(SamplerError, match="seed"):
        BucketBatchSampler(frame, 2, world_size=4, seed=1).load_state_dict(state)


def test_bad_arguments_are_one_sentence_errors():
    frame = manifest()
    with pytest.raises(SamplerError, match="remainder"):
        BucketBatchSampler(frame, 4, remainder="wrap")
    with pytest.raises(SamplerError, match="rank"):
        BucketBatchSampler(frame, 4, world_size=2, rank=2)


def test_weighted_carry_accounts_for_every_draw():
    frame = manifest()
    lay = layout(frame, frame["weight"].to_numpy())
    trained = drawn = 0
    for epoch in range(6):
        plan = plan_epoch(lay, seed=2, epoch=epoch, global_batch=8, remainder="carry")
        trained += plan.batches.size
        drawn += plan.report.drawn
        assert trained + plan.report.carried_out == drawn
        assert abs(plan.report.drawn - frame.height) <= len(SIZES)  # about one draw per sample per epoch


def test_epoch_counts_are_logged(caplog):
    frame = manifest()
    with caplog.at_level("INFO", logger="kohaku_data.train"):
        report = BucketBatchSampler(frame, 4, world_size=2, remainder="drop").report
    assert report.dropped > 0
    assert f"dropped {report.dropped}" in caplog.text and f"{report.batches} batches" in caplog.text
