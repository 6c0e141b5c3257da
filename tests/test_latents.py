"""`kdata latents` on a real build: a real diffusers AutoencoderKL (random weights, saved locally),
latents equal to the model's own encode of the stored pixels, byte-identical for any worker count
and after an interrupted run, kept across a captions-only rebuild, read by the reader, verified."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from kohaku_data.assembly.executor import LocalExecutor  # noqa: E402
from kohaku_data.cli import app  # noqa: E402
from kohaku_data.latents import SDXL_VAE_CONFIG, LatentSpec, make_latents, vae_sha256  # noqa: E402
from kohaku_data.latents import tasks as latent_tasks  # noqa: E402
from kohaku_data.train import BucketCollate, KdataDataset, ReaderError  # noqa: E402
from kohaku_data.train.latents import parse_member  # noqa: E402
from latents_support import save_tiny_vae  # noqa: E402
from test_build_support import build, make_inputs, small_recipe  # noqa: E402

# 64x64-ish buckets: the real SDXL VAE encodes them in well under a second each on a CPU.
TINY_BUCKETS = {"name": "tiny-64", "step": 32, "min_area": 48 * 64, "max_area": 64 * 96, "min_side": 32, "max_side": 128}


def _recipe(**kw):
    return small_recipe(image={"bucket": TINY_BUCKETS}, shard_max_bytes=60_000, **kw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("latent-inputs"), n_posts=14)


@pytest.fixture(scope="module")
def dataset(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "ds"
    build(inputs, out, _recipe(), workers=1)
    assert len(list(out.glob("t-*.tar"))) >= 2
    return out


@pytest.fixture(scope="module")
def sdxl_vae(tmp_path_factory) -> Path:
    """The SDXL VAE architecture with random weights, as one .safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**SDXL_VAE_CONFIG)
    path = tmp_path_factory.mktemp("vae") / "sdxl_vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """A small AutoencoderKL as a diffusers folder (save_pretrained), for byte-level tests."""
    return save_tiny_vae(tmp_path_factory.mktemp("tiny") / "vae")


def _spec(vae: Path, **kw) -> LatentSpec:
    return LatentSpec(str(vae), vae_sha256(vae), None, **{"device": "cpu", **kw})


def _latent_files(ds: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((ds / "latents").iterdir()) if p.is_file()}


def _copy(ds: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(ds, to, ignore=shutil.ignore_patterns("latents"))
    return to


def _stored_pixels(ds: Path, row: dict) -> np.ndarray:
    with open(ds / row["shard"], "rb") as f:
        f.seek(row["image_offset"])
        data = f.read(row["image_size"])
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_sdxl_vae_latents_are_the_models_own_encode_of_the_stored_pixels(dataset, sdxl_vae, tmp_path):
    ds = _copy(dataset, tmp_path / "ds")
    result = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(sdxl_vae), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    lock = __import__("json").loads((ds / "latents" / "latents.lock").read_text())
    assert lock["vae"]["sha256"] == hashlib.sha256(sdxl_vae.read_bytes()).hexdigest()
    assert lock["vae"]["scaling_factor"] == 0.13025 and lock["devices"] == ["cpu"] and lock["dtype"] == "fp16"
    assert set(lock["versions"]) == {"torch", "diffusers", "safetensors"}
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**SDXL_VAE_CONFIG).eval()
    manifest = pl.read_parquet(ds / "manifest.parquet").sort("key")
    latents = pl.read_parquet(ds / "latents" / "manifest.parquet").sort("key")
    assert latents["key"].to_list() == manifest["key"].to_list()
    worst = 0.0
    for row, lat in zip(manifest.iter_rows(named=True), latents.iter_rows(named=True)):
        pixels = torch.from_numpy(_stored_pixels(ds, row)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            ref = vae.encode(pixels).latent_dist.mean[0]
        with open(ds / "latents" / lat["shard"], "rb") as f:
            f.seek(lat["offset"])
            mean = parse_member(f.read(lat["size"]))["mean"]
        assert mean.dtype == torch.float16 and mean.shape == (4, row["height"] // 8, row["width"] // 8)
        worst = max(worst, (mean.float() - ref).abs().max().item())
    print(f"max abs error vs diffusers encode(...).latent_dist.mean (fp16 storage): {worst:.2e}")
    assert worst < 2e-2
    assert CliRunner().invoke(app, ["verify", str(ds)]).exit_code == 0


def test_any_worker_count_gives_the_same_bytes_and_an_interrupted_run_resumes_to_them(dataset, tiny_vae, tmp_path, monkeypatch):
    one, two, cut = (_copy(dataset, tmp_path / n) for n in ("one", "two", "cut"))
    make_latents(one, _spec(tiny_vae, std=True), LocalExecutor(1))
    make_latents(two, _spec(tiny_vae, std=True), LocalExecutor(2))
    assert _latent_files(one) == _latent_files(two)

    real, calls = latent_tasks.run_latent_task, []

    def dies_on_the_second(task):
        calls.append(task.url)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill: the first shard is done, nothing else
        return real(task)

    monkeypatch.setattr("kohaku_data.latents.build.run_latent_task", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        make_latents(cut, _spec(tiny_vae, std=True), LocalExecutor(1))
    assert not (cut / "latents" / "latents.lock").exists()
    monkeypatch.setattr("kohaku_data.latents.build.run_latent_task", real)
    resumed = make_latents(cut, _spec(tiny_vae, std=True), LocalExecutor(1))
    assert resumed.kept_shards == 1 and resumed.encoded + resumed.reused > 0
    assert _latent_files(cut) == _latent_files(one)


def test_reader_gives_latent_batches_with_the_true_sizes(dataset, tiny_vae, tmp_path):
    ds = _copy(dataset, tmp_path / "ds")
    with pytest.raises(ReaderError, match="kdata latents"):
        KdataDataset(str(ds), payload="latents")
    make_latents(ds, _spec(tiny_vae, dtype="bf16"), LocalExecutor(1))
    reader = KdataDataset(str(ds), payload="latents")
    images = KdataDataset(str(ds), decode="torch")
    item = reader[0]
    assert "image" not in item and item["latents"]["mean"].dtype == torch.bfloat16
    assert item["original_size"] == images[0]["original_size"] and item["key"] == images[0]["key"]
    same = [i for i in range(len(reader)) if reader[i]["target_size"] == item["target_size"]][:2]
    batch = BucketCollate()([reader[i] for i in same])
    assert batch["latents"].shape[0] == len(same) and batch["time_ids"].shape == (len(same), 6)


def test_a_captions_only_rebuild_keeps_every_latent(inputs, tiny_vae, tmp_path):
    ds = tmp_path / "ds"
    build(inputs, ds, _recipe(), workers=1)
    make_latents(ds, _spec(tiny_vae), LocalExecutor(1))
    before = pl.read_parquet(ds / "latents" / "manifest.parquet").select("key", "sha256")
    build(inputs, ds, _recipe(caption={"quality": False}), workers=1, force=True)
    again = make_latents(ds, _spec(tiny_vae), LocalExecutor(1))
    assert again.encoded == 0 and again.samples == before.height
    assert pl.read_parquet(ds / "latents" / "manifest.parquet").select("key", "sha256").equals(before)
    KdataDataset(str(ds), payload="latents")[0]


def test_verify_finds_a_changed_latent_shard_and_bad_input_is_one_sentence(dataset, tiny_vae, tmp_path):
    ds = _copy(dataset, tmp_path / "ds")
    make_latents(ds, _spec(tiny_vae), LocalExecutor(1))
    assert CliRunner().invoke(app, ["verify", str(ds)]).exit_code == 0
    shard = sorted((ds / "latents").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1024] ^= 1
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", str(ds)])
    assert result.exit_code == 1 and "latents/" in result.output
    missing = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(tmp_path / "nope.safetensors"), "--device", "cpu"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    unbuilt = CliRunner().invoke(app, ["latents", str(tmp_path), "--vae", str(tiny_vae), "--device", "cpu", "--level", "all"])
    assert unbuilt.exit_code == 1 and "not a finished kdata build" in unbuilt.output


def test_kohya_export_writes_sd_scripts_latent_caches_with_the_true_original_size(dataset, tiny_vae, tmp_path):
    from kohaku_data.export import export_dataset

    ds = _copy(dataset, tmp_path / "ds")
    make_latents(ds, _spec(tiny_vae), LocalExecutor(1))
    out = tmp_path / "kohya"
    export_dataset(ds, out, "kohya")
    manifest = pl.read_parquet(ds / "manifest.parquet")
    reader = KdataDataset(str(ds), payload="latents")
    by_key = {reader[i]["key"]: reader[i]["latents"]["mean"] for i in range(len(reader))}
    for row in manifest.iter_rows(named=True):
        image = out / "images" / row["image"]
        with Image.open(image) as im:
            w, h = im.size  # what sd-scripts reads (imagesize) to name the cache
        npz = image.parent / (image.stem + f"_{w:04d}x{h:04d}" + "_sdxl.npz")  # SdSdxlLatentsCachingStrategy
        assert not (image.parent / f"{image.stem}.npz").exists()  # the old name would win
        with np.load(npz) as cache:
            assert set(cache.files) == {"latents", "original_size", "crop_ltrb"}
            assert cache["latents"].dtype == np.float32 and cache["latents"].shape == (4, h // 2, w // 2)  # tiny VAE: stride 2
            assert np.array_equal(cache["latents"], by_key[row["key"]].float().numpy())
            assert cache["original_size"].tolist() == [row["source_width"], row["source_height"]]
            assert cache["crop_ltrb"].tolist() == [row["crop_left"], row["crop_top"], row["crop_right"], row["crop_bottom"]]
    again = tmp_path / "again"
    export_dataset(ds, again, "kohya")
    assert all(p.read_bytes() == (again / "images" / p.name).read_bytes() for p in (out / "images").glob("*.npz"))


# -- `[image] levels`: a latent set per level ------------------------------------------------------
LO = {"name": "lo", "step": 16, "min_area": 24 * 32, "max_area": 32 * 32, "min_side": 16, "max_side": 64}
MID = {"name": "mid", "step": 16, "min_area": 40 * 48, "max_area": 48 * 48, "min_side": 32, "max_side": 96}


@pytest.fixture(scope="module")
def ladder(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent-ladder") / "ds"
    build(inputs, out, small_recipe(image={"bucket": TINY_BUCKETS, "levels": [LO, MID]}, shard_max_bytes=60_000),
          workers=1)
    return out


def _member_at(folder: Path, row: dict) -> bytes:
    with open(folder / row["shard"], "rb") as f:
        f.seek(row["offset"])
        return f.read(row["size"])


def test_each_level_gets_its_own_set_the_vaes_encode_of_that_levels_stored_pixels(ladder, tiny_vae, tmp_path):
    import json

    ds = _copy(ladder, tmp_path / "ds")
    readme = (ds / "README.md").read_text()
    result = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(tiny_vae), "--level", "all", "--device", "cpu",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    vae = diffusers.AutoencoderKL.from_pretrained(tiny_vae).eval()
    manifest = pl.read_parquet(ds / "manifest.parquet").sort("key")
    for level in (None, "lo", "mid"):
        at, folder = ("", ds / "latents") if level is None else (f"@{level}", ds / "latents" / level)
        lock = json.loads((folder / "latents.lock").read_text())
        assert lock["vae"]["sha256"] == vae_sha256(tiny_vae) and lock["samples"] == manifest.height
        latents = pl.read_parquet(folder / "manifest.parquet").sort("key")
        assert latents["key"].to_list() == manifest["key"].to_list()
        assert latents["image_sha256"].to_list() == manifest[f"sha256{at}"].to_list()
        reader = KdataDataset(str(ds), payload="latents", level=level)
        worst = 0.0
        for i, (row, lat) in enumerate(zip(manifest.iter_rows(named=True), latents.iter_rows(named=True))):
            stored = {"shard": row["shard"], "image_offset": row[f"image_offset{at}"], "image_size": row[f"image_size{at}"]}
            pixels = torch.from_numpy(_stored_pixels(ds, stored)).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                ref = vae.encode(pixels).latent_dist.mean[0]
            mean = parse_member(_member_at(folder, lat))["mean"]
            assert mean.shape == (4, row[f"height{at}"] // 2, row[f"width{at}"] // 2)  # tiny VAE: stride 2
            worst = max(worst, (mean.float() - ref).abs().max().item())
            item = reader[i]
            assert item["key"] == row["key"] and torch.equal(item["latents"]["mean"], mean)
            assert item["target_size"] == (row[f"height{at}"], row[f"width{at}"])
        assert worst < 2e-3, (level, worst)
    assert {p.name for p in (ds / "latents").iterdir() if p.is_dir()} == {".parts", "lo", "mid"}
    assert CliRunner().invoke(app, ["verify", str(ds)]).exit_code == 0

    # the card: a `## Latents` section (one row a set) before `## Files`, nothing else changed; again: same bytes
    card = (ds / "README.md").read_text()
    section = card[card.index("## Latents"):card.index("## Files")]
    assert section.count(f"`{vae_sha256(tiny_vae)}`") == 3 and "level `lo`" in section and "level `mid`" in section
    assert card.replace(section, "") == readme
    from kohaku_data.latents.card import refresh_card

    assert refresh_card(ds) is False
    from kohaku_data.assembly.card import write_card

    write_card(ds, json.loads((ds / "dataset.lock").read_text()))  # what a rebuild's card writer says
    again = (ds / "README.md").read_text()
    assert again[again.index("## Latents"):again.index("## Files")] == section

    shard = sorted((ds / "latents" / "lo").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[1024] ^= 1
    shard.write_bytes(bytes(data))
    broken = CliRunner().invoke(app, ["verify", str(ds)])
    assert broken.exit_code == 1 and f"latents/lo/{shard.name}" in broken.output and "latents/mid" not in broken.output


def test_one_level_alone_leaves_the_main_set_alone_and_an_unknown_level_is_one_sentence(ladder, tiny_vae, tmp_path):
    ds = _copy(ladder, tmp_path / "ds")
    make_latents(ds, _spec(tiny_vae), LocalExecutor(1))
    main = _latent_files(ds)
    make_latents(ds, _spec(tiny_vae), LocalExecutor(2), level="mid")
    assert _latent_files(ds) == main and not (ds / "latents" / "lo").exists()
    with pytest.raises(ReaderError, match="--level lo"):
        KdataDataset(str(ds), payload="latents", level="lo")
    only = _copy(ladder, tmp_path / "only")
    make_latents(only, _spec(tiny_vae), LocalExecutor(1), level="mid")
    files = lambda folder: {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}  # noqa: E731
    assert files(only / "latents" / "mid") == files(ds / "latents" / "mid")  # any worker count, with or without main
    assert CliRunner().invoke(app, ["verify", str(only)]).exit_code == 0
    bad = CliRunner().invoke(app, ["latents", str(ds), "--vae", str(tiny_vae), "--level", "nope", "--device", "cpu"])
    assert bad.exit_code == 1 and "not a level of" in bad.output and "lo, mid" in bad.output


def test_kohya_export_of_a_level_writes_that_levels_latent_caches(ladder, tiny_vae, tmp_path):
    """`kdata export --level lo` as a user runs it: npz caches from `latents/lo/` named by the
    level's image sizes; a level without a latent set of its own gets no caches (not the main set's)."""
    import subprocess
    import sys

    from cli_support import checked

    ds = _copy(ladder, tmp_path / "ds")
    make_latents(ds, _spec(tiny_vae), LocalExecutor(1))
    make_latents(ds, _spec(tiny_vae), LocalExecutor(1), level="lo")
    kdata = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "export", str(ds)]
    run = checked(subprocess.run([*kdata, str(tmp_path / "lo"), "--format", "kohya", "--level", "lo"],
                                 capture_output=True, text=True, timeout=120))
    assert run.returncode == 0, run.stderr
    assert "latent_caches" in run.stdout, run.stdout
    manifest = pl.read_parquet(ds / "manifest.parquet")
    latents = {r["key"]: r for r in pl.read_parquet(ds / "latents" / "lo" / "manifest.parquet").iter_rows(named=True)}
    images = tmp_path / "lo" / "images"
    for row in manifest.iter_rows(named=True):
        w, h = row["width@lo"], row["height@lo"]
        with Image.open(images / f"{row['key']}.{row['format@lo']}") as im:
            assert im.size == (w, h)  # what sd-scripts reads to name the cache
        with np.load(images / f"{row['key']}_{w:04d}x{h:04d}_sdxl.npz") as cache:
            mean = parse_member(_member_at(ds / "latents" / "lo", latents[row["key"]]))["mean"]
            assert np.array_equal(cache["latents"], mean.float().numpy())
            assert cache["original_size"].tolist() == [row["source_width"], row["source_height"]]
            crop = [row[f"crop_{side}@lo"] for side in ("left", "top", "right", "bottom")]
            assert cache["crop_ltrb"].tolist() == crop
    assert len(list(images.glob("*.npz"))) == manifest.height

    run = checked(subprocess.run([*kdata, str(tmp_path / "mid"), "--format", "kohya", "--level", "mid"],
                                 capture_output=True, text=True, timeout=120))
    assert run.returncode == 0 and "latent_caches" not in run.stdout, run.stdout + run.stderr
    assert not list((tmp_path / "mid" / "images").glob("*.npz")), "the main set's latents are not the level's"


@pytest.mark.parametrize("workers", [0, 2])
def test_training_from_latents_resumes_at_the_exact_next_batch(dataset, tiny_vae, tmp_path, workers):
    """The latent reader keeps the image reader's plan: a loader stopped after 3 batches and
    resumed from its state gives the uninterrupted epoch's batches, latents bit for bit."""
    from kohaku_data.train import BucketBatchSampler, KdataLoader

    ds_path = _copy(dataset, tmp_path / "ds")
    make_latents(ds_path, _spec(tiny_vae), LocalExecutor(1))
    reader = KdataDataset(str(ds_path), payload="latents")

    def loader():
        return KdataLoader(reader, BucketBatchSampler(reader, 1, seed=3, remainder="carry"), num_workers=workers)

    whole = loader()
    whole.set_epoch(1)
    expected = [([str(k) for k in b["key"]], b["latents"].clone()) for b in whole]
    assert len(expected) > 3
    interrupted = loader()
    interrupted.set_epoch(1)
    head = []
    for batch in interrupted:
        head.append(([str(k) for k in batch["key"]], batch["latents"].clone()))
        if len(head) == 3:
            state = interrupted.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    got = head + [([str(k) for k in b["key"]], b["latents"].clone()) for b in resumed]
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, expected))
