"""sd-scripts' own SDXL latent caches beside the exported images, from a `kdata latents` set.

sd-scripts (library/strategy_sd.py, SdSdxlLatentsCachingStrategy; strategy_base.py) looks for
`<stem>_<W:04d>x<H:04d>_sdxl.npz` beside `<stem>.<ext>` (W, H: the image file's size; a plain
`<stem>.npz` would win, so none is written), and with `--cache_latents_to_disk` skips encoding
an image whose npz has `latents` (SDXL: no resolution suffix). Keys as its
`_default_save_latents_to_disk` writes them: `latents` float32 (C, H/8, W/8), unscaled;
`original_size` int64 [w, h]; `crop_ltrb` int64 [left, top, right, bottom]. Here `original_size` is
the *source* file's size and `crop_ltrb` the crop kdata made, so SDXL is conditioned as on the
original, not on the stored bucket-sized file.

An export of one `[image] levels` level (`--level NAME`) takes that level's latent set
(`DATASET/latents/NAME/`, `kdata latents --level NAME`): its images are the level's, so are the
caches' sizes and crops (`export.source.at_level` puts them in the rows' main columns).

The npz is a zip whose member times are fixed (numpy's savez stamps the wall clock), so an
export's bytes do not depend on when it ran.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import polars as pl

from kohaku_data.atomic import write_atomic
from kohaku_data.train.latents import LATENT_LOCK, latent_dir, parse_member


def npz_name(key: int, width: int, height: int) -> str:
    return f"{key}_{width:04d}x{height:04d}_sdxl.npz"


def has_latents(dataset: Path, level: str | None = None) -> bool:
    """Whether `kdata latents` finished a set of these images (`level`: of that level's)."""
    return (dataset / latent_dir(level) / LATENT_LOCK).is_file()


def write_sdxl_caches(dataset: Path, rows: pl.DataFrame, folder: Path, level: str | None = None) -> int:
    """One npz per row beside its image in `folder`, from the latent set of `level` (None: the
    main images); returns how many were written (others were there)."""
    latents_folder = dataset / latent_dir(level)
    latents = pl.read_parquet(latents_folder / "manifest.parquet", columns=["key", "shard", "offset", "size", "image_sha256"])
    joined = rows.select("key", "sha256", "width", "height", "source_width", "source_height",
                         "crop_left", "crop_top", "crop_right", "crop_bottom").join(latents, on="key", how="left")
    written = 0
    for row in joined.iter_rows(named=True):
        if row["image_sha256"] != row["sha256"]:
            from kohaku_data.export.source import ExportError

            again = f"kdata latents {dataset} --vae PATH" + (f" --level {level}" if level else "")
            raise ExportError(f"sample {row['key']} has no latent of its current image: run `{again}` again.")
        target = folder / npz_name(row["key"], row["width"], row["height"])
        data = npz_bytes(latents_folder, row)
        if target.is_file() and target.read_bytes() == data:
            continue
        write_atomic(target, data)
        written += 1
    return written


def npz_bytes(latents_folder: Path, row: dict) -> bytes:
    with open(latents_folder / row["shard"], "rb") as f:
        f.seek(row["offset"])
        mean = parse_member(f.read(row["size"]))["mean"]
    arrays = {
        "latents": mean.float().numpy(),
        "original_size": np.array([row["source_width"], row["source_height"]], dtype=np.int64),
        "crop_ltrb": np.array([row["crop_left"], row["crop_top"], row["crop_right"], row["crop_bottom"]], dtype=np.int64),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return out.getvalue()
