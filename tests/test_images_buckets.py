"""Bucket list properties, nearest-ratio choice and minimal centre crops."""

from __future__ import annotations

import math

import pytest

from kohaku_data.config import BUCKET_PRESETS, BucketPreset
from kohaku_data.images import bucket_resolutions, choose_bucket
from kohaku_data.images.resize import plan_cover


@pytest.mark.parametrize("name", list(BUCKET_PRESETS))
def test_bucket_list_properties(name: str) -> None:
    p = BUCKET_PRESETS[name]
    buckets = bucket_resolutions(p)
    assert buckets, "a preset yields buckets"
    assert len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert w % p.step == 0 and h % p.step == 0
        assert p.min_area <= w * h <= p.max_area
        assert p.min_side <= min(w, h) and max(w, h) <= p.max_side
        assert max(w, h) / min(w, h) <= p.max_aspect
        assert (h, w) in buckets  # both orientations
    assert any(w == h for w, h in buckets)


def test_kohaku_xl_matches_kohya_rule() -> None:
    p = BucketPreset()
    buckets = bucket_resolutions(p)
    # kohya: for each width, the tallest multiple of 64 within max_area
    for w in range(512, 2049, 64):
        h = min(2048, p.max_area // w) // 64 * 64
        if min(w, h) >= 512 and w * h >= p.min_area and max(w, h) / min(w, h) <= 4:
            assert (w, h) in buckets
    assert (1024, 1280) in buckets and (1280, 1024) in buckets


def test_choose_bucket_nearest_log_ratio() -> None:
    buckets = bucket_resolutions(BucketPreset())
    for size in [(1000, 1000), (1920, 1080), (1080, 1920), (3000, 1000), (800, 3300), (1234, 987)]:
        chosen = choose_bucket(size, buckets)
        r = math.log(size[0] / size[1])
        best = min(abs(r - math.log(w / h)) for w, h in buckets)
        assert abs(abs(r - math.log(chosen[0] / chosen[1])) - best) < 1e-12
    assert choose_bucket((1000, 1000), buckets)[0] == choose_bucket((1000, 1000), buckets)[1]


@pytest.mark.parametrize("size", [(1500, 2000), (2000, 1500), (1111, 3333), (4000, 4000), (1919, 1080)])
def test_cover_crop_is_minimal_and_centred(size: tuple[int, int]) -> None:
    bucket = choose_bucket(size, bucket_resolutions(BucketPreset()))
    plan = plan_cover(size, bucket)
    l, t, r, b = plan.crop_box
    assert (r - l, b - t) == bucket
    assert min(l, t) == 0  # one side is not cropped at all
    scaled = (round(size[0] * plan.scale), round(size[1] * plan.scale))
    assert scaled[0] >= r and scaled[1] >= b
    assert abs(l - (scaled[0] - r)) <= 1 and abs(t - (scaled[1] - b)) <= 1  # centred
    # the crop removes less than one bucket step of ratio mismatch would
    assert plan.scale == pytest.approx(max(bucket[0] / size[0], bucket[1] / size[1]))
    sb = plan.source_box
    assert 0 <= sb[0] < sb[2] <= size[0] and 0 <= sb[1] < sb[3] <= size[1]
