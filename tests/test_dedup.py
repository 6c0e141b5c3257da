"""Duplicates: the multi-index search against brute force, the keep rule, families, and a real
build with dedup on (rejects `duplicate` naming the kept post, same bytes for any worker count,
hashes cached)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageEnhance

from kohaku_data.config import DedupConfig
from kohaku_data.curation.groups import components, family_labels, near_pairs
from kohaku_data.curation.phash import hash_image, phash_of_thumbs
from kohaku_data.sample.drawing import anime_picture
from kohaku_data.sample.metadata import write_sample_db


def _brute_labels(h: np.ndarray, radius: int) -> np.ndarray:
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= radius, 1))
    return components(len(h), i, j)


@pytest.mark.parametrize("radius,blocks", [(0, None), (3, None), (8, None), (10, 4), (12, 3), (6, 7)])
def test_multi_index_finds_every_near_pair(radius: int, blocks: int | None) -> None:
    rng = np.random.default_rng(radius)
    n = 1500
    h = rng.integers(0, 1 << 63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    src, dst = rng.integers(0, n, n // 3), rng.integers(0, n, n // 3)
    flips = np.zeros(len(src), dtype=np.uint64)
    for _ in range(radius + 1):  # some planted pairs land just outside the radius
        flips |= np.uint64(1) << rng.integers(0, 64, len(src)).astype(np.uint64)
    h[dst] = h[src] ^ flips
    h[:20] = h[20]  # repeated values
    i, j, d = near_pairs(h, radius, blocks)
    assert (i < j).all() and (np.bitwise_count(h[i] ^ h[j]) == d).all() and (d <= radius).all()
    assert np.array_equal(components(n, i, j), _brute_labels(h, radius))


def test_components_and_families() -> None:
    labels = components(6, np.array([4, 1, 3]), np.array([5, 2, 4]))
    assert labels.tolist() == [0, 1, 1, 3, 3, 3]
    ids = np.array([10, 11, 12, 13, 20, 21])
    parents = np.array([0, 10, 99, 99, 0, 0])  # 12 and 13 are siblings under a parent not in the set
    assert family_labels(ids, parents).tolist() == [10, 10, 12, 12, 20, 21]


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_phash_survives_copies_and_separates_drawings() -> None:
    base = [anime_picture(np.random.default_rng(s), 400, 520, texture=True) for s in range(4)]

    def ph(data: bytes) -> int:
        hashes, thumb = hash_image(data, exact_pixels=False, perceptual=True, max_pixels=1 << 30)
        return int(phash_of_thumbs(thumb[None])[0])

    for k, im in enumerate(base):
        h = np.uint64(ph(_png(im)))
        for copy in (_jpeg(im, 75), _png(im.resize((200, 260), Image.Resampling.LANCZOS)),
                     _jpeg(ImageEnhance.Color(im).enhance(1.2), 90)):
            assert np.bitwise_count(h ^ np.uint64(ph(copy))) <= 10
        for other in base[k + 1:]:
            assert np.bitwise_count(h ^ np.uint64(ph(_png(other)))) > 10
    broken = hash_image(b"not an image", exact_pixels=True, perceptual=True, max_pixels=1 << 30)[0]
    assert broken.error == "unidentified" and broken.md5 == hashlib.md5(b"not an image").hexdigest()


# -- a real build -------------------------------------------------------------------------------
def _dedup_inputs(root: Path) -> tuple[Path, Path, list[int], dict[str, tuple[int, int]]]:
    """8 distinct drawings + copies: (copy key, original key) per kind of copy."""
    db_path = root / "danbooru.db"
    write_sample_db(db_path, 14, seed=3)
    src = root / "raw"
    src.mkdir()
    conn = sqlite3.connect(db_path)
    # Every post live: a deleted one would leave the selection (as Danbooru's search hides it)
    # and this fixture is about which copy dedup keeps.
    conn.execute("UPDATE post SET is_deleted = 0")
    ids = [r[0] for r in conn.execute("SELECT id FROM post ORDER BY id")]
    pictures = {k: anime_picture(np.random.default_rng(100 + n), 420, 500, texture=True) for n, k in enumerate(ids[:8])}
    files = {k: (_png(im), "png") for k, im in pictures.items()}
    copies = {"bytes": (ids[8], ids[0]), "jpeg": (ids[9], ids[1]), "resized": (ids[10], ids[2]),
              "pixels": (ids[11], ids[3]), "family": (ids[12], ids[4]), "chain": (ids[13], ids[10])}
    files[ids[8]] = files[ids[0]]
    files[ids[9]] = (_jpeg(pictures[ids[1]], 80), "jpg")
    files[ids[10]] = (_png(pictures[ids[2]].resize((300, 357), Image.Resampling.LANCZOS)), "png")
    buf = io.BytesIO()
    pictures[ids[3]].save(buf, format="PNG", compress_level=1)  # same pixels, other bytes
    files[ids[11]] = (buf.getvalue(), "png")
    files[ids[12]] = (_jpeg(pictures[ids[4]].crop((0, 0, 420, 425)), 80), "jpg")  # a re-cropped revision
    files[ids[13]] = (_jpeg(pictures[ids[2]].resize((330, 393)), 85), "jpg")
    for n, key in enumerate(ids):
        data, ext = files[key]
        w, h = Image.open(io.BytesIO(data)).size
        conn.execute("UPDATE post SET md5=?, file_size=?, file_ext=?, image_width=?, image_height=?, fav_count=?, "
                     "parent_id=? WHERE id=?", (hashlib.md5(data).hexdigest() if n != 8 else f"{n:032x}", len(data),
                                                ext, w, h, 100 - n, ids[4] if key == ids[12] else None, key))
        (src / f"{key}.{ext}").write_bytes(data)
    conn.commit()
    conn.close()
    return db_path, src, ids, copies


@pytest.fixture(scope="module")
def dedup_inputs(tmp_path_factory):
    return _dedup_inputs(tmp_path_factory.mktemp("dedup"))


def _build(db_path: Path, src: Path, out: Path, workers: int, **dedup):
    from kohaku_data.assembly import build_dataset
    from kohaku_data.db import DanbooruDB
    from test_build_support import small_recipe

    recipe = small_recipe(dedup=dedup, shard_max_bytes=10_000_000)
    with DanbooruDB.open(db_path, readonly=True) as db:
        return build_dataset(src, out, recipe, db, workers=workers)


def _ph(src: Path, key: int) -> int:
    data = next(src.glob(f"{key}.*")).read_bytes()
    return int(phash_of_thumbs(hash_image(data, exact_pixels=False, perceptual=True, max_pixels=1 << 30)[1][None])[0])


def _duplicates(out: Path) -> dict[int, str]:
    rejects = pl.read_parquet(out / "rejects.parquet").filter(pl.col("reason") == "duplicate")
    return dict(rejects.select("key", "detail").iter_rows())


def test_build_exact_policy(dedup_inputs, tmp_path: Path) -> None:
    db_path, src, ids, copies = dedup_inputs
    _build(db_path, src, tmp_path / "ex", 1, policy="exact")
    found = _duplicates(tmp_path / "ex")
    # same bytes (md5 in the DB differs: the bytes decide) and same pixels; lossy copies stay
    assert found == {copies["bytes"][0]: f"duplicate of post {ids[0]} (same md5)",
                     copies["pixels"][0]: f"duplicate of post {ids[3]} (same pixels)"}


def test_build_near_policy_keeps_the_favourite_and_is_worker_independent(dedup_inputs, tmp_path: Path) -> None:
    from test_build_support import folder_bytes

    db_path, src, ids, copies = dedup_inputs
    family_distance = int(np.bitwise_count(np.uint64(_ph(src, ids[4])) ^ np.uint64(_ph(src, ids[12]))))
    assert 8 < family_distance <= 20  # the fixture: a revision farther than copies, nearer than strangers
    _build(db_path, src, tmp_path / "a", 1, policy="near", threshold=8, family_threshold=20)
    found = _duplicates(tmp_path / "a")
    kept_for = {k: int(d.split("post ")[1].split(" ")[0]) for k, d in found.items()}
    # fav_count falls with the id here, so the original (lower id, more favourites) is kept
    want = {copy: orig for kind, (copy, orig) in copies.items() if kind != "chain"}
    want[copies["chain"][0]] = ids[2]  # a copy of a copy joins the original's group
    assert kept_for == want
    assert "phash distance" in found[copies["jpeg"][0]]
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["dedup"]["duplicates"] == len(want) and stats["rejects"]["duplicate"] == len(want)
    manifest = pl.read_parquet(tmp_path / "a" / "manifest.parquet")
    assert set(manifest["key"]) == set(ids) - set(want)
    # 2 workers: byte for byte the same dataset; the hash cache is there for reruns
    _build(db_path, src, tmp_path / "b", 2, policy="near", threshold=8, family_threshold=20)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    cache = next((tmp_path / "a" / ".dedup").glob("hashes-near-*.parquet"))
    assert pl.read_parquet(cache).height == len(ids)
    # without the family threshold the re-cropped revision is not a duplicate
    _build(db_path, src, tmp_path / "c", 1, policy="near", threshold=8)
    assert copies["family"][0] not in _duplicates(tmp_path / "c")


def test_cached_hashes_are_reused(dedup_inputs, tmp_path: Path) -> None:
    from kohaku_data.assembly.executor import LocalExecutor
    from kohaku_data.assembly.plan import make_plan
    from kohaku_data.curation.dedup import compute_hashes
    from kohaku_data.db import DanbooruDB
    from kohaku_data.sources import open_source
    from test_build_support import small_recipe

    db_path, src, ids, _ = dedup_inputs

    with DanbooruDB.open(db_path, readonly=True) as db:
        plan = make_plan(db, open_source(src), small_recipe())
    config = DedupConfig(policy="near")
    executor = LocalExecutor(1)
    a = compute_hashes(plan, config, executor, tmp_path, 1 << 30)
    b = compute_hashes(plan, config, None, tmp_path, 1 << 30)  # all cached: no executor is needed
    assert sum(executor.placements.values()) == -(-len(ids) // 64) and a.equals(b) and a.height == len(ids)
    # a changed file (another size) is hashed again, the others come from the cache
    copy = tmp_path / "raw"
    shutil.copytree(src, copy)
    changed = copy / f"{ids[0]}.png"
    changed.write_bytes(_png(Image.open(changed).convert("RGB").rotate(90)))
    with DanbooruDB.open(db_path, readonly=True) as db:
        plan = make_plan(db, open_source(copy), small_recipe())
    again = LocalExecutor(1)
    c = compute_hashes(plan, config, again, tmp_path, 1 << 30)
    assert sum(again.placements.values()) == 1
    assert c.filter(pl.col("key") != ids[0]).equals(a.filter(pl.col("key") != ids[0]))
    assert c.filter(pl.col("key") == ids[0])["phash"][0] != a.filter(pl.col("key") == ids[0])["phash"][0]


def test_cli_dedup_writes_groups(dedup_inputs, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kohaku_data.cli import app

    db_path, src, ids, copies = dedup_inputs
    out = tmp_path / "groups.parquet"
    args = ["dedup", "--src", str(src), "--db", str(db_path), "--out", str(out), "--policy", "exact", "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["duplicates"] == 2 and summary["by_link"] == {"md5": 1, "pixels": 1}
    groups = pl.read_parquet(out)
    assert set(groups.filter(~pl.col("kept"))["key"]) == {copies["bytes"][0], copies["pixels"][0]}
    assert (tmp_path / ".dedup").is_dir()


def test_colour_rule_widens_the_phash_distance_only_when_colours_agree() -> None:
    from kohaku_data.curation.dedup import HASH_SCHEMA, group_duplicates

    base = 0x0F0F_0F0F_0F0F_0F0F
    far, other = base ^ 0b11_1111_1111, base ^ (0b11_1111_1111 << 20)  # 10 bits from base, 20 apart
    grey = bytes([255] + [0] * 63)
    red = bytes([0] * 48 + [255] + [0] * 15)
    hashes = pl.DataFrame({
        "key": [1, 2, 3], "container": [0, 0, 0], "member": [None, None, None], "size": [1, 1, 1],
        "md5": ["a", "b", "c"], "pixels": [None, None, None], "phash": [base, far, other],
        "colour": [grey, grey, red], "error": [None, None, None]}, schema=HASH_SCHEMA)
    facts = pl.DataFrame({"key": [1, 2, 3], "metric": [5, 1, 1], "area": [1, 1, 1], "parent_id": [0, 0, 0]})
    plain = group_duplicates(hashes, facts, DedupConfig(policy="near", threshold=8))
    assert plain.height == 0
    coloured = group_duplicates(hashes, facts, DedupConfig(policy="near", threshold=8, colour_threshold=10))
    assert dict(coloured.select("key", "group").iter_rows()) == {1: 1, 2: 1}  # 3 has other colours
