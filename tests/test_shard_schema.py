"""Shards every reader takes: one fixed `.json` schema, 🤗 `datasets` and wids read a real build,
the hfutils member index, index.json md5sums and the manifest's member offsets agree with the tars."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import polars as pl
import pytest
import yaml

from kohaku_data.assembly.sample_schema import (
    JSON_FIELDS, TAG_CATEGORIES, conform, hf_features, hf_yaml_header, readme_with_header, schema_problems,
)
from kohaku_data.assembly.verify import verify_dataset
from test_export_support import SPARSE_FIRST, sparse_build


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return sparse_build(tmp_path_factory.mktemp("schema"))[1]


def _samples(built: Path) -> list[dict]:
    """Every sample's parsed .json, in shard order, read with tarfile (no kdata code)."""
    out = []
    index = json.loads((built / "index.json").read_text())
    for entry in index["shardlist"]:
        with tarfile.open(built / entry["url"]) as tar:
            out += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return out


def test_every_json_has_the_one_schema_and_the_first_ones_are_sparse(built):
    samples = _samples(built)
    assert samples and all(schema_problems(s) == [] for s in samples)
    first, later = samples[:SPARSE_FIRST], samples[SPARSE_FIRST:]
    # The case that broke 🤗's inference: empty lists and no quality first, values later.
    assert all(s["tags"][c] == [] for s in first for c in TAG_CATEGORIES if c != "general")
    assert all(s["quality"] == "" for s in first)
    assert any(s["tags"]["artist"] for s in later) and any(s["quality"] for s in later)
    assert all(s["year_tag"] == "newest" for s in first)  # dated 2030 by the fixture


def test_conform_fills_every_missing_value_with_its_typed_default():
    obj = conform({"id": 5, "score": None, "tags": {"general": ["a"], "artist": None}, "stray": 1})
    assert schema_problems(obj) == []
    assert obj["score"] == 0 and obj["quality"] == "" and obj["tags"]["artist"] == [] and "stray" not in obj
    bad = dict(obj, score="7", quality=None)
    del bad["md5"]
    assert sorted(schema_problems(bad)) == ["md5 is missing", "quality is not string", "score is not int64"]


def test_yaml_header_parses_to_the_same_features(built):
    import datasets

    index = json.loads((built / "index.json").read_text())
    header = hf_yaml_header(index)
    meta = yaml.safe_load(header.split("---\n")[1])
    assert meta["configs"][0]["data_files"][0]["path"] == f"{index['name']}-*.tar"
    assert meta["dataset_info"]["splits"][0]["num_examples"] == sum(s["nsamples"] for s in index["shardlist"])
    from_yaml = datasets.Features._from_yaml_list(meta["dataset_info"]["features"])
    assert from_yaml == datasets.Features.from_dict(hf_features())
    assert set(from_yaml["json"]) == set(JSON_FIELDS)


def test_load_dataset_webdataset_with_the_features(built, tmp_path):
    import datasets

    manifest = pl.read_parquet(built / "manifest.parquet")
    tars = sorted(str(p) for p in built.glob("*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                               features=datasets.Features.from_dict(hf_features()), cache_dir=str(tmp_path / "c"))
    assert len(ds) == manifest.height
    rows = {r["key"]: r for r in manifest.iter_rows(named=True)}
    for sample in ds:
        row = rows[int(sample["__key__"])]
        image = sample[row["format"]]
        assert (image.width, image.height) == (row["width"], row["height"])
        assert sample["txt"] == row["caption"] == sample["json"]["caption"]
        assert sample["json"]["id"] == row["key"] and schema_problems(sample["json"]) == []


def test_load_dataset_reads_the_folder_through_its_card(built, tmp_path):
    """`load_dataset(FOLDER)`: the card's header alone tells 🤗 the files and the types."""
    import datasets

    folder = tmp_path / "ds"
    shutil.copytree(built, folder)
    index = json.loads((folder / "index.json").read_text())
    card = folder / "README.md"
    if not card.is_file():  # the card writer (assembly/card.py) puts it there in every build
        card.write_text(readme_with_header(index))
    assert card.read_text().startswith(hf_yaml_header(index))
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == sum(s["nsamples"] for s in index["shardlist"])
    assert [int(k) for k in ds["__key__"]] == sorted(pl.read_parquet(folder / "manifest.parquet")["key"])


def test_wids_reads_the_index_and_checks_md5sums(built, tmp_path, monkeypatch):
    import wids

    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids"))
    index = json.loads((built / "index.json").read_text())
    manifest = pl.read_parquet(built / "manifest.parquet")
    ds = wids.ShardListDataset(str(built / "index.json"), transformations=[])
    assert len(ds) == manifest.height
    keys = [int(ds[i]["__key__"]) for i in range(len(ds))]
    assert keys == manifest["key"].to_list()
    assert json.loads(ds[len(ds) - 1][".json"].read())["id"] == keys[-1]
    for entry in index["shardlist"]:  # wids' own md5 check (it raises on a mismatch)
        samples = wids.wids.IndexedTarSamples(path=str(built / entry["url"]), md5sum=entry["md5sum"],
                                              expected_size=entry["nsamples"])
        samples.close()


def test_member_index_is_the_hfutils_form(built):
    index = json.loads((built / "index.json").read_text())
    for entry in index["shardlist"]:
        tar_path = built / entry["url"]
        member_index = json.loads(tar_path.with_suffix(".json").read_text())
        data = tar_path.read_bytes()
        git_sha1 = subprocess.run(["git", "hash-object", str(tar_path)], capture_output=True, text=True,
                                  check=True).stdout.strip()
        assert member_index["filesize"] == len(data) == entry["filesize"]
        assert member_index["hash"] == git_sha1
        assert member_index["hash_lfs"] == hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["md5sum"] == hashlib.md5(data).hexdigest()
        with tarfile.open(tar_path) as tar:
            members = {m.name: (m.offset_data, m.size) for m in tar}
        assert {k: (v["offset"], v["size"]) for k, v in member_index["files"].items()} == members
        for name, info in member_index["files"].items():
            piece = data[info["offset"]:info["offset"] + info["size"]]
            assert hashlib.sha256(piece).hexdigest() == info["sha256"], name


def test_manifest_offsets_fetch_each_member_by_byte_range(built):
    manifest = pl.read_parquet(built / "manifest.parquet")
    for col in ("image_offset", "image_size", "txt_offset", "txt_size", "json_offset", "json_size"):
        assert manifest.schema[col] == pl.Int64 and manifest[col].null_count() == 0
    for row in manifest.iter_rows(named=True):
        with open(built / row["shard"], "rb") as f:
            f.seek(row["image_offset"])
            assert hashlib.sha256(f.read(row["image_size"])).hexdigest() == row["sha256"]
            f.seek(row["txt_offset"])
            assert f.read(row["txt_size"]).decode() == row["caption"]
            f.seek(row["json_offset"])
            assert json.loads(f.read(row["json_size"]))["id"] == row["key"]


def test_verify_catches_a_wrong_member_index_md5sum_or_offset(built, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(built, copy)
    assert verify_dataset(copy).ok
    index = json.loads((copy / "index.json").read_text())
    first = copy / index["shardlist"][0]["url"]
    member_index = json.loads(first.with_suffix(".json").read_text())
    name = next(iter(member_index["files"]))
    member_index["files"][name]["offset"] += 512
    first.with_suffix(".json").write_text(json.dumps(member_index))
    index["shardlist"][1]["md5sum"] = "0" * 32
    (copy / "index.json").write_text(json.dumps(index))
    manifest = pl.read_parquet(copy / "manifest.parquet")
    manifest.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("json_offset") + 1)
                          .otherwise(pl.col("json_offset")).alias("json_offset")).write_parquet(copy / "manifest.parquet")
    problems = verify_dataset(copy).problems
    assert any(f"member index {first.with_suffix('.json').name}: offset of {name} do not match the tar" in p
               for p in problems)
    assert any(index["shardlist"][1]["url"] in p and "md5sum differs" in p for p in problems)
    assert any("manifest offset/size" in p and f"{manifest['key'][0]}.json" in p for p in problems)


@pytest.mark.parametrize("chunk", [512, 700, 1 << 22])
def test_verify_reads_the_member_index_back_in_one_pass_for_any_block_size(built, chunk):
    """Blocks that cut members anywhere (700 bytes: never on a 512-byte boundary) give the same
    per-member sha256s as the index written with the shard."""
    from kohaku_data.assembly.shards import read_member_index, tar_member_index

    for tar in sorted(built.glob("*.tar")):
        got = tar_member_index(tar, chunk)
        assert got.pop("md5sum") == hashlib.md5(tar.read_bytes()).hexdigest()
        assert got == read_member_index(tar)
