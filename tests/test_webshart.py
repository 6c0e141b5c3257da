"""SimpleTuner's `webshart` backend reads a kdata build as it is: bghira/webshart (from PyPI)
lists every sample of every shard with its stored size, aspect and caption from the per-shard
JSON alone. To show no image is read, every image's bytes are zeroed in the tars first (a size
sniffed from the image header would then be garbage); the JSON beside each tar is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kohaku_data.assembly.shards import read_member_index, tar_member_index
from test_train_support import built_dataset

webshart = pytest.importorskip("webshart")


@pytest.fixture(scope="module")
def blanked(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """A real build whose image bytes are all zeros (same sizes, same offsets)."""
    out = built_dataset(tmp_path_factory.mktemp("webshart"), n_posts=30)
    manifest = pl.read_parquet(out / "manifest.parquet")
    for shard, rows in manifest.group_by("shard"):
        with open(out / shard[0], "r+b") as f:
            for offset, size in rows.select("image_offset", "image_size").iter_rows():
                f.seek(offset)
                f.write(bytes(size))
    return out, manifest


def _expected(manifest: pl.DataFrame) -> dict[str, tuple[int, int, str]]:
    return {row["image"]: (row["width"], row["height"], row["caption"].replace("|||", "").strip())
            for row in manifest.iter_rows(named=True)}


def test_webshart_lists_every_sample_with_size_and_caption_without_images(blanked):
    out, manifest = blanked
    assert manifest["caption"].str.contains("|||", literal=True).any()  # the separator is taken out
    dataset = webshart.discover_dataset(str(out))
    shards = sorted(manifest["shard"].unique().to_list())
    assert dataset.num_shards == len(shards)
    loader = webshart.TarDataLoader(dataset, load_file_data=False)
    seen: dict[str, tuple[int, int, str]] = {}
    for i in range(dataset.num_shards):
        for name, entry in loader.get_metadata(i).items():
            if name.endswith((".txt", ".json")):
                continue
            assert entry["aspect"] == pytest.approx(entry["width"] / entry["height"], rel=1e-6)
            seen[name] = (entry["width"], entry["height"], entry["captions"])
    assert seen == _expected(manifest)


def test_webshart_aspect_buckets_cover_every_sample(blanked):
    out, manifest = blanked
    loader = webshart.TarDataLoader(webshart.discover_dataset(str(out)), load_file_data=False)
    found = {}
    for shard in loader.list_shard_sample_aspect_buckets(list(range(loader.num_shards)), key="geometry-tuple"):
        for files in shard["buckets"].values():
            found.update({f["filename"]: (f["width"], f["height"]) for f in files})
    assert found == {k: v[:2] for k, v in _expected(manifest).items()}


def test_member_index_fields_match_what_verify_reads_back(tmp_path):
    """verify compares the recorded index with one read back from the tar: equal, new fields too."""
    out = built_dataset(tmp_path, n_posts=12)
    for tar in sorted(out.glob("*.tar")):
        recorded = read_member_index(tar)
        assert recorded["includes_image_geometry"] is True
        actual = tar_member_index(tar)
        actual.pop("md5sum")
        assert actual == recorded
        assert json.loads(tar.with_suffix(".json").read_bytes())["files"]  # hfutils form kept
