"""kohaku_data.train on a real small build: the reader, the collate, real DataLoaders and resume."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from kohaku_data.train import (
    BucketBatchSampler, BucketCollate, KdataDataset, KdataLoader, ReaderError, SamplerError, split_caption,
)
from test_train_support import built_dataset, tar_offsets


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory) -> Path:
    return built_dataset(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def manifest(ds_path) -> pl.DataFrame:
    return pl.read_parquet(ds_path / "manifest.parquet")


def _tar_members(ds_path: Path, shard: str) -> dict[str, bytes]:
    with tarfile.open(ds_path / shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_manifest_offsets_point_at_the_members(ds_path, manifest):
    for shard in manifest["shard"].unique().to_list():
        where = tar_offsets(ds_path / shard)
        for row in manifest.filter(pl.col("shard") == shard).iter_rows(named=True):
            assert where[row["image"]] == (row["image_offset"], row["image_size"])
            assert where[f"{row['key']}.json"] == (row["json_offset"], row["json_size"])


def test_items_are_the_shard_members_with_true_sizes(ds_path, manifest):
    ds = KdataDataset(ds_path, decode="bytes")
    assert len(ds) == manifest.height and ds.manifest["key"].to_list() == manifest["key"].to_list()
    members: dict[str, bytes] = {}
    for shard in manifest["shard"].unique().to_list():
        members.update(_tar_members(ds_path, shard))
    for i, row in enumerate(manifest.iter_rows(named=True)):
        item = ds[i]
        assert item["key"] == row["key"]
        assert item["image"] == members[row["image"]]
        assert item["caption"] == members[f"{row['key']}.txt"].decode() == row["caption"]
        assert item["original_size"] == (row["source_height"], row["source_width"])
        assert item["crop_top_left"] == (row["crop_top"], row["crop_left"])
        assert item["target_size"] == (row["height"], row["width"])
        assert item["id"] == row["key"] and "tags" in item  # the json's own fields come along
        assert item["padded"] is False


def test_decodes_agree(ds_path, manifest):
    raw = KdataDataset(ds_path, decode="bytes")[3]["image"]
    pixels = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    pil = KdataDataset(ds_path, decode="pil")[3]["image"]
    arr = KdataDataset(ds_path, decode="numpy")[3]["image"]
    ten = KdataDataset(ds_path, decode="torch")[3]["image"]
    row = manifest.row(3, named=True)
    assert pil.size == (row["width"], row["height"]) and pil.mode == "RGB"
    assert arr.shape == (row["height"], row["width"], 3) and (arr == pixels).all()
    assert ten.dtype == torch.uint8 and ten.shape == (3, row["height"], row["width"])
    assert (ten.permute(1, 2, 0).numpy() == pixels).all()


def test_fsspec_url_reads_the_same_bytes(ds_path):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in ds_path.iterdir():
        if path.is_file():
            memory.pipe_file(f"/train-ds/{path.name}", path.read_bytes())
    local, url = KdataDataset(ds_path, decode="bytes"), KdataDataset("memory://train-ds", decode="bytes")
    assert url.manifest.equals(local.manifest)
    for i in (0, len(local) // 2, len(local) - 1):
        assert url[i]["image"] == local[i]["image"] and url[i]["caption"] == local[i]["caption"]
    assert KdataDataset(f"file://{ds_path}", decode="bytes")[1]["image"] == local[1]["image"]
    memory.rm_file(f"/train-ds/{local.manifest['shard'][0]}")
    with pytest.raises(ReaderError, match="missing"):
        url[0]


def test_caption_parts_split_at_the_keep_separator():
    assert split_caption("1girl, miku, |||long hair, smile") == ("1girl, miku", "long hair, smile")
    assert split_caption("|||long hair") == ("", "long hair")
    assert split_caption("a, b") == ("", "a, b")
    assert split_caption("a, |||b", None) == ("", "a, |||b")


def test_unreadable_datasets_are_clear_errors(ds_path, tmp_path):
    with pytest.raises(ReaderError, match="no manifest.parquet"):
        KdataDataset(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(ds_path, old)
    pl.read_parquet(old / "manifest.parquet").drop("image_offset").write_parquet(old / "manifest.parquet")
    with pytest.raises(ReaderError, match="image_offset"):
        KdataDataset(old)
    cut = tmp_path / "cut"
    shutil.copytree(ds_path, cut)
    last = pl.read_parquet(cut / "manifest.parquet").row(-1, named=True)
    with open(cut / last["shard"], "r+b") as f:
        f.truncate(last["image_offset"] + 10)
    with pytest.raises(ReaderError, match="cut short"):
        KdataDataset(cut)[len(KdataDataset(cut)) - 1]
    (cut / last["shard"]).unlink()
    with pytest.raises(ReaderError, match="missing"):
        KdataDataset(cut)[len(KdataDataset(cut)) - 1]
    with pytest.raises(ReaderError, match="decode"):
        KdataDataset(ds_path, decode="jpeg")


def test_collate_stacks_one_bucket_with_sdxl_conditioning(ds_path, manifest):
    ds = KdataDataset(ds_path, decode="torch")
    sampler = BucketBatchSampler(ds, 3, remainder="pad")
    batch_idx = next(iter(sampler))
    batch = BucketCollate()([ds[i] for i in batch_idx])
    rows = [manifest.row(int(i), named=True) for i in batch_idx]
    assert batch["image"].shape == (3, 3, rows[0]["height"], rows[0]["width"]) and batch["image"].dtype == torch.uint8
    assert batch["original_size"].tolist() == [[r["source_height"], r["source_width"]] for r in rows]
    assert batch["time_ids"].shape == (3, 6)
    assert batch["time_ids"][:, 4:].tolist() == [[r["height"], r["width"]] for r in rows]
    floats = BucketCollate(torch.float32)([ds[i] for i in batch_idx])["image"]
    assert floats.min() >= -1 and floats.max() <= 1
    assert torch.allclose((floats + 1) * 127.5, batch["image"].float(), atol=1e-3)
    two_buckets = [manifest["bucket"].to_list().index(b) for b in manifest["bucket"].unique().to_list()[:2]]
    with pytest.raises(SamplerError, match="one bucket"):
        BucketCollate()([ds[i] for i in two_buckets])


def _keys(batches) -> list[list[int]]:
    return [b["key"].tolist() for b in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_epoch_covers_every_key_one_bucket_per_batch(ds_path, manifest, workers):
    ds = KdataDataset(ds_path, decode="torch")
    ds[len(ds) - 1]  # the parent holds open shard handles when the workers fork
    loader = KdataLoader(ds, BucketBatchSampler(ds, 2, world_size=2, rank=1, remainder="drop"), num_workers=workers)
    bucket_of = dict(zip(manifest["key"].to_list(), manifest["bucket"].to_list()))
    seen = []
    for batch in loader:
        assert len({bucket_of[k] for k in batch["key"].tolist()}) == 1
        seen += batch["key"].tolist()
    other = BucketBatchSampler(ds, 2, world_size=2, rank=0, remainder="drop")
    seen += [manifest["key"][i] for batch in other for i in batch]
    assert len(seen) == len(set(seen)) == manifest.height - other.report.dropped


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_the_uninterrupted_tail(ds_path, workers):
    ds = KdataDataset(ds_path, decode="torch")

    def loader():
        return KdataLoader(ds, BucketBatchSampler(ds, 2, seed=7, remainder="carry"), num_workers=workers)

    whole = loader()
    whole.set_epoch(1)
    expected = _keys(list(whole))
    interrupted = loader()
    interrupted.set_epoch(1)
    head = []
    for batch in interrupted:
        head.append(batch)
        if len(head) == 4:
            state = interrupted.state_dict()  # with workers, the sampler itself is ahead by now
            break
    assert state["batches_done"] == 4
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert _keys(head) + _keys(list(resumed)) == expected


def test_stateful_dataloader_resumes_with_workers(ds_path):
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    ds = KdataDataset(ds_path, decode="torch")

    def loader():
        return sdl.StatefulDataLoader(ds, batch_sampler=BucketBatchSampler(ds, 2, seed=1), num_workers=2,
                                      collate_fn=BucketCollate())

    expected = _keys(list(loader()))
    first = loader()
    head = []
    for batch in first:
        head.append(batch)
        if len(head) == 5:
            state = first.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    assert _keys(head) + _keys(list(resumed)) == expected


def test_members_that_lie_apart_are_read_one_by_one(ds_path, manifest, tmp_path):
    """A tar written by another tool may put other members between a sample's members."""
    row = manifest.row(0, named=True)
    members = _tar_members(ds_path, row["shard"])
    names = [row["image"], f"{row['key']}.txt", f"{row['key']}.json"]
    with tarfile.open(tmp_path / "apart.tar", "w") as tar:
        for name, data in ((names[0], members[names[0]]), ("filler.bin", b"\0" * 50_000),
                           (names[1], members[names[1]]), (names[2], members[names[2]])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    where = tar_offsets(tmp_path / "apart.tar")
    offsets = {f"{m}_{k}": v for m, name in zip(("image", "txt", "json"), names)
               for k, v in zip(("offset", "size"), where[name])}
    manifest.head(1).with_columns(shard=pl.lit("apart.tar"), **{k: pl.lit(v, pl.Int64) for k, v in offsets.items()}
                                  ).write_parquet(tmp_path / "manifest.parquet")
    item = KdataDataset(tmp_path, decode="bytes")[0]
    assert item["image"] == members[names[0]] and item["caption"] == members[names[1]].decode()


def test_the_builds_weight_column_drives_the_sampler(ds_path, manifest):
    if "weight" not in manifest.columns:
        pytest.skip("this build writes no weight column yet")
    ds = KdataDataset(ds_path)
    sampler = BucketBatchSampler(ds, 2, weights="weight")
    equal = manifest["weight"].n_unique() == 1  # a recipe without [weights]: all 1.0
    assert (sampler.plan().digest() == BucketBatchSampler(ds, 2).plan().digest()) == equal
    assert sampler.report.drawn == pytest.approx(manifest.height, abs=len(sampler.layout.names))
