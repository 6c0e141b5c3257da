"""Shared helpers of the build tests: a real sample DB plus real image files and tars.

`make_inputs` writes a folder of PNG/JPEG files for most posts of a `write_sample_db` file,
fixing each post's md5/size/dims to its file (as `kdata sample` does), plus one file of every
kind the build must refuse (corrupt bytes, zero bytes, md5 mismatch, file without post, unsafe
tar member) — `HARD` says which key is which.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kohaku_data.config import Recipe
from kohaku_data.sample.metadata import write_sample_db

N_POSTS = 40
# Which post (by position in id order) gets which refusal.
HARD_POSITIONS = {"corrupt": 4, "zero_byte": 5, "md5_mismatch": 6, "no_file": 7, "too_small": 8}
ORPHAN_KEY = 999_999  # a file whose id is no post


@dataclass(frozen=True)
class Inputs:
    db: Path
    src: Path
    ids: list[int]  # every post id of the DB
    hard: dict[str, int]  # refusal kind -> post id


def small_recipe(**kw) -> Recipe:
    base = {"name": "t", "version": "1", "image": {"bucket": "demo-256"}, "shard_max_bytes": 400_000}
    base.update(kw)
    return Recipe.model_validate(base)


def _image(key: int) -> tuple[bytes, str, tuple[int, int]]:
    rng = np.random.default_rng(key)
    w, h = int(rng.integers(330, 480)), int(rng.integers(330, 480))
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([(xx * (key % 7 + 1)) % 256, (yy * 3 + key) % 256, ((xx + yy) * 2) % 256], -1)
    pixels = (pixels + rng.integers(0, 3, pixels.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    ext = "png" if key % 3 else "jpg"
    Image.fromarray(pixels).save(buf, format="PNG" if ext == "png" else "JPEG", quality=92)
    return buf.getvalue(), ext, (w, h)


def make_inputs(root: Path, n_posts: int = N_POSTS, tar: bool = False) -> Inputs:
    db_path = root / "danbooru.db"
    write_sample_db(db_path, n_posts, seed=0)
    src = root / "raw"
    (src / "sub").mkdir(parents=True)
    files: dict[str, bytes] = {}
    with sqlite3.connect(db_path) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM post ORDER BY id")]
        hard = {kind: ids[pos] for kind, pos in HARD_POSITIONS.items()}
        for key in ids:
            if key == hard["no_file"]:
                continue
            data, ext, (w, h) = _image(key)
            if key == hard["too_small"]:
                buf = io.BytesIO()
                Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
                data, ext, (w, h) = buf.getvalue(), "png", (40, 30)
            conn.execute("UPDATE post SET md5=?, file_size=?, file_ext=?, image_width=?, image_height=? WHERE id=?",
                         (hashlib.md5(data).hexdigest(), len(data), ext, w, h, key))
            if key == hard["corrupt"]:
                data = data[:40] + b"\x00garbage" * 50
                conn.execute("UPDATE post SET md5=NULL WHERE id=?", (key,))
            elif key == hard["zero_byte"]:
                data = b""
            elif key == hard["md5_mismatch"]:
                data = bytes([data[0]]) + bytes([data[1] ^ 0xFF]) + data[2:]  # same size, other bytes
            files[f"{'sub/' if key % 2 else ''}{key}.{ext}"] = data
    files[f"{ORPHAN_KEY}.png"] = _image(3)[0]
    if tar:
        _write_tar(src / "data-0000.tar", files)
    else:
        for name, data in files.items():
            (src / name).write_bytes(data)
    conn.close()
    return Inputs(db_path, src, ids, hard)


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in list(files.items()) + [("../evil.png", b"x" * 10)]:
            info = tarfile.TarInfo(name.split("/")[-1] if not name.startswith("..") else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def build(inputs: Inputs, out: Path, recipe: Recipe | None = None, **kw):
    from kohaku_data.assembly import build_dataset
    from kohaku_data.db import DanbooruDB

    with DanbooruDB.open(inputs.db, readonly=True) as db:
        return build_dataset(inputs.src, out, recipe or small_recipe(), db, **kw)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (the build lock file aside)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".build.lock"}
