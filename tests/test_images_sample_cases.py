"""The image stage over the hard cases that `kdata sample` writes: each one ends as a correct
output or a clear rejection (issue 3), checked against what the DB says the picture is."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from kohaku_data.config import ImageConfig
from kohaku_data.images.buckets import bucket_resolutions, choose_bucket
from kohaku_data.images.resize import plan_cover
from kohaku_data.images.stage import process_image
from kohaku_data.sample import read_hard_cases, write_sample

CONFIG = ImageConfig(bucket="demo-256")
REJECTED = {"truncated": "truncated", "zero_bytes": "empty_file", "random_bytes": "unidentified", "tiny": "too_small"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    write_sample(out, posts=30, seed=3)
    cases = {name: rec for name, rec in read_hard_cases(out).items() if rec["has_file"]}
    with sqlite3.connect(out / "danbooru.db") as conn:
        sizes = {pid: (w, h) for pid, w, h in conn.execute("SELECT id, image_width, image_height FROM post")}
    conn.close()
    results = {name: process_image((out / rec["path"]).read_bytes(), CONFIG, name=name) for name, rec in cases.items()}
    return out, cases, sizes, results


def _stored(result) -> Image.Image:
    im = Image.open(io.BytesIO(result.data))
    im.load()
    return im


def test_every_case_is_an_output_or_the_expected_rejection(sample):
    _, cases, _, results = sample
    assert len(cases) >= 20
    for name, result in results.items():
        if name in REJECTED:
            assert (result.status, result.reason) == ("rejected", REJECTED[name]), name
            assert result.detail and name in result.detail
        else:
            assert result.status == "ok", (name, result.reason, result.detail)


def test_outputs_match_the_displayed_picture_of_the_db(sample):
    """Bucket chosen from the DB's (displayed) size: EXIF-rotated files must come out upright."""
    _, cases, sizes, results = sample
    buckets = bucket_resolutions(CONFIG.bucket_preset())
    for name, result in results.items():
        if result.ok and name != "orphan_file" and cases[name]["in_db"]:
            expected = choose_bucket(sizes[cases[name]["post_id"]], buckets)
            assert result.bucket == expected, name
            assert _stored(result).size == expected, name


def test_alpha_cases_keep_their_transparency(sample):
    results = sample[3]
    for name in ("rgba_soft_alpha", "palette_transparency", "grayscale_la"):
        alpha = np.asarray(_stored(results[name]))[..., 3]
        assert results[name].mode == "RGBA", name
        assert alpha.min() == 0 and alpha.max() == 255, name
    soft = np.asarray(_stored(results["rgba_soft_alpha"]))[..., 3]
    assert ((soft > 0) & (soft < 255)).sum() > 50  # soft edges survive the resize


def test_16bit_gradient_keeps_its_levels(sample):
    out, cases, _, results = sample
    grey = np.asarray(_stored(results["png_16bit"]))[..., 0]
    source = Image.open(out / cases["png_16bit"]["path"])
    naive = np.asarray(source.convert("L"))  # Pillow clips I;16 into 8 bits: a few levels left
    assert len(np.unique(grey)) > 4 * len(np.unique(naive))
    assert len(np.unique(grey)) > 100


def _reference(path, result, convert) -> np.ndarray:
    im = convert(ImageOps.exif_transpose(Image.open(path)))
    plan = plan_cover(im.size, result.bucket)
    return np.asarray(im.resize(plan.bucket, Image.Resampling.LANCZOS, box=plan.source_box), dtype=np.int16)


def test_cmyk_and_rotated_jpegs_equal_a_direct_pillow_reference(sample):
    out, cases, _, results = sample
    for name in ("cmyk_jpeg", "exif_rotated"):
        ref = _reference(out / cases[name]["path"], results[name], lambda im: im.convert("RGB"))
        got = np.asarray(_stored(results[name]), dtype=np.int16)
        assert np.abs(got - ref).max() <= 1, name


def test_icc_profile_is_converted_to_srgb(sample):
    out, cases, _, results = sample
    path = out / cases["icc_adobe_rgb"]["path"]
    profile = Image.open(path).info["icc_profile"]
    srgb = ImageCms.createProfile("sRGB")
    to_srgb = lambda im: ImageCms.profileToProfile(  # noqa: E731
        im, ImageCms.ImageCmsProfile(io.BytesIO(profile)), srgb, outputMode="RGB")
    got = np.asarray(_stored(results["icc_adobe_rgb"]), dtype=np.int16)
    converted = _reference(path, results["icc_adobe_rgb"], to_srgb)
    ignored = _reference(path, results["icc_adobe_rgb"], lambda im: im.convert("RGB"))
    assert np.abs(got - converted).mean() < 1.0
    assert np.abs(got - ignored).mean() > 2.0  # the profile really changed the pixels
