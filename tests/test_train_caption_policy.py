"""The reader's caption policy: replayable across workers, resumes and world sizes; frequencies."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kohaku_data.train import BucketBatchSampler, KdataDataset, KdataLoader  # noqa: E402
from kohaku_data.train.captions import CaptionPolicy, drop_order, rng_for, split_tags  # noqa: E402
from test_build_support import build, make_inputs, small_recipe  # noqa: E402

VARIANTS = {"add": [{"name": "noob", "kind": "ordered", "order": "noobai"}]}
POLICY = dict(seed=7, variants={"kohaku": 3.0, "noob": 1.0}, tag_dropout=0.2, group_dropout={"meta": 0.5})


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    inputs = make_inputs(root, n_posts=24)
    out = root / "ds"
    build(inputs, out, small_recipe(caption={"variants": VARIANTS}))
    return out


def _captions(dataset_dir, workers: int, epoch: int, *, world: int = 1, batch: int = 4,
              stop_after: int | None = None, state=None) -> list:
    out: list = []
    for rank in range(world):
        ds = KdataDataset(str(dataset_dir), decode="bytes", caption_policy=CaptionPolicy(**POLICY))
        sampler = BucketBatchSampler(ds, batch_size=batch // world, world_size=world, rank=rank, seed=1)
        loader = KdataLoader(ds, sampler, num_workers=workers, collate_fn=lambda s: s)
        if state is not None:
            loader.load_state_dict(state)
        loader.set_epoch(epoch)
        for n, samples in enumerate(loader):
            out += [(s["key"], s["caption"]) for s in samples]
            if stop_after is not None and n + 1 == stop_after:
                return [*out, loader.state_dict()]
    return sorted(out) if world > 1 else out


def test_same_captions_whatever_workers_world_size_and_resume(dataset_dir):
    base = _captions(dataset_dir, 0, epoch=3)  # (key, caption) in loader order
    assert len(base) > 10
    assert _captions(dataset_dir, 2, epoch=3) == base
    assert _captions(dataset_dir, 4, epoch=3) == base
    assert _captions(dataset_dir, 2, epoch=3, world=2) == sorted(base)  # same global batch on 2 ranks
    *first, state = _captions(dataset_dir, 2, epoch=3, stop_after=2)
    rest = _captions(dataset_dir, 2, epoch=3, state=state)
    assert first + rest == base  # a mid-epoch resume replays the very same captions
    other = dict(_captions(dataset_dir, 0, epoch=4))
    both = [(other[k], c) for k, c in base if k in other]
    assert len(both) > 5 and sum(a != b for a, b in both) >= len(both) // 2  # other epoch, other captions


def test_kept_part_never_shuffled_dropped_or_cut(dataset_dir):
    ds = KdataDataset(str(dataset_dir), decode="bytes")
    policy = CaptionPolicy(seed=1, tag_dropout=0.9, group_dropout={"general": 0.5, "special": 0.5},
                           max_tokens=20, count=lambda t: len(t.split(", ")))
    for i in range(len(ds)):
        item = ds[i]
        kept, rest = split_tags(item["captions"]["kohaku"])
        for epoch in range(5):
            out = policy(item, epoch).split(", ") if kept else policy(item, epoch).split(", ")
            assert out[:len(kept)] == kept
            assert set(out[len(kept):]) <= set(rest)


def _interval(n: int, p: float) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 2.576 * sd, n * p + 2.576 * sd  # binomial 99% (normal approximation, n large)


def test_frequencies_within_binomial_99_interval():
    sample = {"key": 0, "caption": "1girl, |||a, b, c, d",
              "captions": {"kohaku": "1girl, |||a, b, c, d", "noob": "NOOB"},
              "tags": {"general": ["a", "b", "c"], "meta": ["d"]}}
    policy = CaptionPolicy(seed=3, variants={"kohaku": 3.0, "noob": 1.0}, tag_dropout=0.25, group_dropout={"meta": 0.4})
    n = 100_000
    noob = a_kept = d_kept = full = a_first = 0
    for key in range(n):
        out = policy({**sample, "key": key}, epoch=0)
        if out == "NOOB":
            noob += 1
            continue
        tags = out.split(", ")
        assert tags[0] == "1girl"
        a_kept += "a" in tags
        d_kept += "d" in tags
        if len(tags) == 5:
            full += 1
            a_first += tags[1] == "a"
    kohaku = n - noob

    def inside(count: int, trials: int, p: float) -> bool:
        sd = math.sqrt(trials * p * (1 - p))
        return trials * p - 2.576 * sd <= count <= trials * p + 2.576 * sd  # binomial 99%

    assert inside(noob, n, 0.25)  # weighted variant choice
    assert inside(a_kept, kohaku, 0.75)  # tag dropout 0.25
    assert inside(d_kept, kohaku, 0.6 * 0.75)  # meta group dropout 0.4, then tag dropout
    assert inside(a_first, full, 0.25)  # the shuffle puts each tag first equally often


def test_drop_order_and_rng():
    assert drop_order(["long hair", "highres", "solo", "safe", "masterpiece"], ["highres"], ["solo", "long_hair"]) \
        == [1, 2, 0, 4, 3]
    assert rng_for(1, 2, 3).random() == rng_for(1, 2, 3).random() != rng_for(1, 3, 3).random()


def test_ordered_variant_augmented_within_its_groups(dataset_dir):
    """An ordered variant named in `ordered`: meta/general tags dropped and shuffled, each only
    among its own group's places; the kept tags and the group order never change; replayable."""
    import json

    from kohaku_data.train.captions import ordered_variants

    lock = json.loads((dataset_dir / "dataset.lock").read_text())
    ordered = ordered_variants(lock["recipe"])
    assert ordered == {"noob": ""}
    ds = KdataDataset(str(dataset_dir), decode="bytes")
    plain = CaptionPolicy(seed=2, variants={"noob": 1.0}, shuffle=False, ordered=ordered)
    policy = CaptionPolicy(seed=2, variants={"noob": 1.0}, tag_dropout=0.3, group_dropout={"meta": 0.5},
                           ordered=ordered)
    budget = CaptionPolicy(seed=2, variants={"noob": 1.0}, ordered=ordered, shuffle=False, max_tokens=8,
                           count=lambda t: len(t.split(", ")))
    moved = dropped = 0
    for i in range(len(ds)):
        item = ds[i]
        stored = item["captions"]["noob"].split(", ")
        kept = split_tags(item["captions"]["kohaku"])[0]
        assert plain(item, 0) == item["captions"]["noob"]  # nothing asked: as stored
        group = {t: ("meta" if t.replace(" ", "_") in item["tags"]["meta"] else
                     "general" if t.replace(" ", "_") in item["tags"]["general"] and t not in kept else t)
                 for t in stored}  # fixed tags are their own group

        def labels(tags):
            return [group[t] for t in tags]

        for epoch in range(4):
            out = policy(item, epoch).split(", ")
            assert out == policy(item, epoch).split(", ")  # replayable
            assert out[:len(kept)] == stored[:len(kept)] == kept  # noobai starts with the kept part, untouched
            # group order kept: the labels of the output are those of the stored caption, minus the dropped
            survivors = [t for t in stored if t in out]
            assert labels(out) == labels(survivors)
            special = {item["quality"], item["year_tag"], item["rating_tag"]} - {""}
            assert all(group[t] in ("meta", "general") or t in special for t in stored if t not in out)  # rest only
            moved += out != survivors
            dropped += len(out) < len(stored)
        fit = budget(item, 0).split(", ")
        assert len(fit) <= max(8, len(kept))
        assert [t for t in stored if t in fit] == fit and set(kept) <= set(fit)
    assert moved and dropped
