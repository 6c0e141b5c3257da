"""Raw sample images for the posts of a sample DB, with the hard cases an image stage must handle.

`write_sample_images(out_dir, db_path)` draws one anime-like picture per post (first
`max_images` posts by id), writes it as `out_dir/raw/<id>.<ext>` (or into danbooru2023-style
tars), and updates each post's width/height/ext/size/md5 (and CDN URLs) to match the file.

The i-th post by id gets `HARD_CASES[i]` (CMYK JPEG, 16-bit PNG, EXIF-rotated, truncated, ...);
the rest are ordinary pictures in varied sizes and formats. Everything is derived from
(seed, post id), so the same seed gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from kohaku_data.atomic import write_atomic
from kohaku_data.runtime import worker_pool
from kohaku_data.sample.drawing import anime_picture, character_alpha, draw_character
from kohaku_data.sample.layout import tar_name, write_folder, write_tars
from kohaku_data.sample.metadata import SampleError, load_tag_table, resolution_tags


@dataclass(frozen=True)
class HardCase:
    """One deliberate difficulty, given to the post at `position` (0 = lowest id)."""

    name: str
    description: str
    decodable: bool = True  # a correct decoder reads it (after EXIF transpose)
    has_file: bool = True  # False: the post has no file at all
    in_db: bool = True  # False: a file whose id is not in the DB (written beside the others)


HARD_CASES: tuple[HardCase, ...] = (
    HardCase("rgba_soft_alpha", "RGBA PNG, character on transparency with blurred alpha edges"),
    HardCase("palette_transparency", "palette (P) PNG with a transparent palette index"),
    HardCase("grayscale_l", "mode L (greyscale) JPEG"),
    HardCase("grayscale_la", "mode LA PNG (grey + soft alpha)"),
    HardCase("cmyk_jpeg", "CMYK JPEG"),
    HardCase("png_16bit", "16-bit greyscale PNG (mode I;16), smooth gradient with > 256 levels"),
    HardCase("exif_rotated", "JPEG stored sideways with EXIF orientation 6; DB size is the displayed one"),
    HardCase("icc_adobe_rgb", "JPEG with an embedded non-sRGB (Adobe RGB-like, gamma 2.2) ICC profile"),
    HardCase("animated_gif", "animated GIF, 4 frames"),
    HardCase("truncated", "JPEG with a valid header, cut at 60% of its bytes", decodable=False),
    HardCase("zero_bytes", "empty .png file", decodable=False),
    HardCase("random_bytes", "random bytes named .jpg", decodable=False),
    HardCase("tiny", "64x64 PNG, smaller than any bucket"),
    HardCase("bmp", "BMP (RGB)"),
    HardCase("tiff", "TIFF (RGB, LZW)"),
    HardCase("webp_lossless", "lossless WebP"),
    HardCase("webp_lossy", "lossy WebP"),
    HardCase("avif", "AVIF"),
    HardCase("large", "large JPEG, long side ~2500 px"),
    HardCase("tall_1x4", "PNG with aspect ratio 1:4"),
    HardCase("wide_4x1", "JPEG with aspect ratio 4:1"),
    HardCase("missing_file", "post in the DB without any file", has_file=False),
    HardCase("missing_file_2", "post in the DB without any file", has_file=False),
    HardCase("nested", "JPEG in a nested subfolder raw/nested/deeper/<id>.jpg"),
)
# Files for ids that are not in the DB (max id + offset), written after the posts' files.
ORPHAN_CASES: tuple[HardCase, ...] = (
    HardCase("orphan_file", "file whose id is not in the DB", in_db=False),
    HardCase("orphan_file_2", "file whose id is not in the DB", in_db=False),
)
_ORPHAN_ID_OFFSET = 1_000_000
_NESTED_DIR = "nested/deeper"


@dataclass(frozen=True)
class Rendered:
    """One post's file: bytes and the facts the DB must record about it."""

    post_id: int
    rel_path: str  # relative to raw/ (or the member name inside its tar)
    data: bytes
    width: int  # displayed size (after EXIF orientation)
    height: int
    ext: str


# --------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _adobe_rgb_like_icc() -> bytes:
    """A synthetic ICC v2 RGB display profile: Adobe RGB (1998) primaries, gamma 2.2.

    ImageCms.createProfile only builds sRGB/LAB/XYZ, so the profile is assembled by hand
    (header, tag table, desc/cprt/wtpt/rXYZ/gXYZ/bXYZ/rTRC/gTRC/bTRC), with a fixed date.
    """
    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + struct.pack(">3i", *(round(v * 65536) for v in (x, y, z)))

    text = b"kdata synthetic Adobe RGB-like"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" + bytes(4 + 4 + 2 + 1 + 67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 563)  # u8Fixed8 2.2 (563/256 = 2.199)
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0public domain\0"),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.6097, 0.3111, 0.0195)),
            (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)), (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(24) + struct.pack(">I", 0)
              + struct.pack(">3i", round(0.9642 * 65536), 65536, round(0.8249 * 65536)) + bytes(4))
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


# --------------------------------------------------------------------------------------------
# Ordinary posts
# --------------------------------------------------------------------------------------------
_FORMATS = ("jpg", "png", "webp", "webp_lossless", "avif", "gif")
_FORMAT_P = (0.55, 0.24, 0.08, 0.04, 0.05, 0.04)
_RATIOS = (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 1.414, 5 / 4, 3.0, 4.0)
_RATIO_P = (0.14, 0.22, 0.2, 0.14, 0.07, 0.12, 0.06, 0.03, 0.02)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly 300–1600 px sides, a few ~2500 px; aspect ratios 1:4 .. 4:1, portrait-heavy."""
    ratio = float(rng.choice(_RATIOS, p=_RATIO_P))
    long = 2400 + rng.random() * 200 if rng.random() < 0.015 else np.clip(rng.lognormal(np.log(950), 0.3), 400, 1600)
    short = max(96, long / ratio)
    w, h = (short, long) if rng.random() < 0.65 else (long, short)
    return int(round(w)), int(round(h))


def _encode_as(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    if kind == "jpg":
        return _encode(img, "JPEG", quality=int(rng.integers(85, 96))), "jpg"
    if kind == "png":
        return _encode(img, "PNG"), "png"
    if kind == "webp":
        return _encode(img, "WEBP", quality=int(rng.integers(80, 95))), "webp"
    if kind == "webp_lossless":
        return _encode(img, "WEBP", lossless=True, method=2), "webp"
    if kind == "avif":
        return _encode(img, "AVIF", quality=80, speed=8), "avif"
    if kind == "gif":
        return _encode(img.quantize(256), "GIF"), "gif"
    raise ValueError(kind)


def _ordinary(rng: np.random.Generator, post_id: int) -> Rendered:
    w, h = _size(rng)
    kind = str(rng.choice(_FORMATS, p=_FORMAT_P))
    img = anime_picture(rng, w, h, texture=kind in ("jpg", "webp", "avif"))
    data, ext = _encode_as(img, kind, rng)
    return Rendered(post_id, f"{post_id}.{ext}", data, w, h, ext)


# --------------------------------------------------------------------------------------------
# Hard cases: each returns (bytes, displayed width, height, ext)
# --------------------------------------------------------------------------------------------
def _hard_rgba(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return _encode(character_alpha(rng, 720, 960), "PNG"), 720, 960, "png"


def _hard_palette(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    img = Image.new("RGB", (640, 800), (0, 255, 0))
    draw_character(ImageDraw.Draw(img), rng, 640, 800)
    pal = img.quantize(64)
    bg = pal.getpixel((0, 0))  # the green background's palette index becomes transparent
    return _encode(pal, "PNG", transparency=bg), 640, 800, "png"


def _hard_l(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return _encode(anime_picture(rng, 800, 1000).convert("L"), "JPEG", quality=90), 800, 1000, "jpg"


def _hard_la(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return _encode(character_alpha(rng, 700, 700).convert("LA"), "PNG"), 700, 700, "png"


def _hard_cmyk(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return _encode(anime_picture(rng, 900, 1200).convert("CMYK"), "JPEG", quality=90), 900, 1200, "jpg"


def _hard_16bit(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    w, h = 768, 1024
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    # Smooth diagonal + radial ramp across the full 16-bit range: thousands of levels.
    ramp = 0.6 * (x / w + y / h) / 2 + 0.4 * np.hypot(x - w / 2, y - h / 2) / np.hypot(w, h) * 2
    ramp = ramp / ramp.max() * (0.9 + 0.1 * rng.random())
    arr = (ramp * 65535).astype("<u2")
    return _encode(Image.fromarray(arr), "PNG"), w, h, "png"  # uint16 → mode I;16


def _hard_exif(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    shown = anime_picture(rng, 720, 1080, texture=True)
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # viewers rotate 90° clockwise back
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=90, exif=exif.tobytes()), 720, 1080, "jpg"


def _hard_icc(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    img = anime_picture(rng, 1000, 800, texture=True)
    return _encode(img, "JPEG", quality=92, icc_profile=_adobe_rgb_like_icc()), 1000, 800, "jpg"


def _hard_gif(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    w, h = 480, 600
    base = anime_picture(rng, w, h)
    frames = []
    for k in range(4):
        frame = base.copy()
        ImageDraw.Draw(frame).ellipse((40 + k * 90, 40, 100 + k * 90, 100), fill=(255, 250, 200))
        frames.append(frame.quantize(128))
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)
    return buf.getvalue(), w, h, "gif"


def _hard_truncated(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    data = _encode(anime_picture(rng, 900, 1200, texture=True), "JPEG", quality=92)
    return data[: int(len(data) * 0.6)], 900, 1200, "jpg"


def _hard_zero(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return b"", 800, 1000, "png"


def _hard_random(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return b"\x00kdata-not-an-image" + rng.bytes(20_000), 800, 1000, "jpg"


def _hard_tiny(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return _encode(anime_picture(rng, 64, 64), "PNG"), 64, 64, "png"


def _simple(fmt: str, ext: str, w: int, h: int, **options: object) -> Callable:
    def render(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
        return _encode(anime_picture(rng, w, h, texture=fmt in ("JPEG", "WEBP")), fmt, **options), w, h, ext
    return render


def _hard_large(rng: np.random.Generator) -> tuple[bytes, int, int, str]:
    return _encode(anime_picture(rng, 1800, 2500, texture=True), "JPEG", quality=90), 1800, 2500, "jpg"


_HARD_RENDER: dict[str, Callable[[np.random.Generator], tuple[bytes, int, int, str]]] = {
    "rgba_soft_alpha": _hard_rgba, "palette_transparency": _hard_palette,
    "grayscale_l": _hard_l, "grayscale_la": _hard_la, "cmyk_jpeg": _hard_cmyk,
    "png_16bit": _hard_16bit, "exif_rotated": _hard_exif, "icc_adobe_rgb": _hard_icc,
    "animated_gif": _hard_gif, "truncated": _hard_truncated, "zero_bytes": _hard_zero,
    "random_bytes": _hard_random, "tiny": _hard_tiny,
    "bmp": _simple("BMP", "bmp", 600, 800), "tiff": _simple("TIFF", "tiff", 800, 600, compression="tiff_lzw"),
    "webp_lossless": _simple("WEBP", "webp", 900, 1200, lossless=True, method=2),
    "webp_lossy": _simple("WEBP", "webp", 1200, 900, quality=88),
    "avif": _simple("AVIF", "avif", 1000, 1000, quality=80, speed=8),
    "large": _hard_large,
    "tall_1x4": _simple("PNG", "png", 400, 1600), "wide_4x1": _simple("JPEG", "jpg", 1600, 400, quality=90),
    "nested": _simple("JPEG", "jpg", 800, 1100, quality=90),
    "orphan_file": _simple("JPEG", "jpg", 600, 800, quality=90),
    "orphan_file_2": _simple("PNG", "png", 500, 500),
}


def render_post(seed: int, post_id: int, case: str | None) -> Rendered | None:
    """The file of one post (None for a post that has no file). Pure: (seed, id, case) → bytes."""
    rng = np.random.default_rng([seed, post_id, 7])
    if case is None:
        return _ordinary(rng, post_id)
    if case.startswith("missing_file"):
        return None
    data, w, h, ext = _HARD_RENDER[case](rng)
    rel = f"{_NESTED_DIR}/{post_id}.{ext}" if case == "nested" else f"{post_id}.{ext}"
    return Rendered(post_id, rel, data, w, h, ext)


def _render_task(task: tuple[int, int, str | None]) -> Rendered | None:
    return render_post(*task)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def _post_ids(db_path: Path, max_images: int | None) -> list[int]:
    if not Path(db_path).is_file():
        raise SampleError(f"database {db_path} does not exist: write one first with `kdata sample OUT`")
    with sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True) as conn:
        sql = 'SELECT id FROM "post" ORDER BY id' + (" LIMIT ?" if max_images is not None else "")
        rows = conn.execute(sql, (max_images,) if max_images is not None else ()).fetchall()
        top = conn.execute('SELECT max(id) FROM "post"').fetchone()[0] or 0
    ids = [r[0] for r in rows]
    return ids + [top + _ORPHAN_ID_OFFSET + k for k in range(1, len(ORPHAN_CASES) + 1)]


def _tasks(seed: int, ids: list[int]) -> list[tuple[int, int, str | None]]:
    posts, orphans = ids[: -len(ORPHAN_CASES)], ids[-len(ORPHAN_CASES):]
    cases = [c.name for c in HARD_CASES]
    tasks = [(seed, pid, cases[i] if i < len(cases) else None) for i, pid in enumerate(posts)]
    return tasks + [(seed, pid, c.name) for pid, c in zip(orphans, ORPHAN_CASES)]


def _render_all(tasks: list[tuple[int, int, str | None]], workers: int) -> list[Rendered | None]:
    if workers <= 1 or len(tasks) < 8:
        return [_render_task(t) for t in tasks]
    with worker_pool(workers) as pool:
        return list(pool.map(_render_task, tasks, chunksize=4))


def _update_db(db_path: Path, files: list[Rendered]) -> None:
    """Make each post's width/height/ext/size/md5 and CDN URLs describe the file written."""
    cdn = "https://cdn.donmai.us"
    rows = []
    for f in files:
        md5 = hashlib.md5(f.data).hexdigest()
        d = f"{md5[:2]}/{md5[2:4]}"
        large = f"{cdn}/sample/{d}/sample-{md5}.jpg" if f.width > 850 else f"{cdn}/original/{d}/{md5}.{f.ext}"
        rows.append((f.width, f.height, f.ext, len(f.data), md5, int(f.width > 850),
                     f"{cdn}/original/{d}/{md5}.{f.ext}", large, f"{cdn}/180x180/{d}/{md5}.jpg", f.post_id))
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            _retag_resolution(conn, files)
            conn.executemany(
                'UPDATE "post" SET image_width = ?, image_height = ?, file_ext = ?, file_size = ?, '
                "md5 = ?, has_large = ?, "
                # Banned posts keep their NULL URLs (no public files), as on Danbooru.
                "file_url = iif(file_url IS NULL, NULL, ?), "
                "large_file_url = iif(large_file_url IS NULL, NULL, ?), "
                "preview_file_url = iif(preview_file_url IS NULL, NULL, ?) WHERE id = ?",
                rows,
            )
    finally:
        conn.close()


def _retag_resolution(conn: sqlite3.Connection, files: list[Rendered]) -> None:
    """Keep highres/absurdres/lowres/... true to the new sizes, and their popularity exact."""
    table = load_tag_table()
    idx = table.index()
    flags = resolution_tags(np.array([f.width for f in files]), np.array([f.height for f in files]))
    names = [n for n in flags if n in idx]
    tag_ids = {n: idx[n] + 1 for n in names}  # sample DBs use CSV row + 1 as tag id
    marks = ", ".join("?" * len(names))
    conn.executemany(
        f'DELETE FROM "posttagrelation" WHERE post_id = ? AND tag_id IN ({marks})',
        [(f.post_id, *tag_ids.values()) for f in files],
    )
    conn.executemany(
        'INSERT INTO "posttagrelation" (post_id, tag_id) VALUES (?, ?)',
        [(f.post_id, tag_ids[n]) for n in names for f, on in zip(files, flags[n].tolist()) if on],
    )
    for n in names:
        conn.execute('INSERT OR IGNORE INTO "tag" (id, name, type, popularity) VALUES (?, ?, ?, 0)',
                     (tag_ids[n], n, int(table.types[idx[n]])))
    conn.execute(
        f'UPDATE "tag" SET popularity = (SELECT count(*) FROM "posttagrelation" r WHERE r.tag_id = "tag".id) '
        f"WHERE id IN ({marks})", tuple(tag_ids.values()),
    )
    conn.execute(f'DELETE FROM "tag" WHERE popularity = 0 AND id IN ({marks})', tuple(tag_ids.values()))


def _case_records(tasks: list[tuple[int, int, str | None]], results: list[Rendered | None],
                  layout: str) -> list[dict]:
    by_name = {c.name: c for c in HARD_CASES + ORPHAN_CASES}
    records = []
    for (_, pid, name), r in zip(tasks, results):
        if name is None:
            continue
        rec = {"post_id": pid, **asdict(by_name[name])}
        if r is not None and layout == "tar":
            rec.update(tar=f"raw/{tar_name(pid)}", member=r.rel_path, ext=r.ext)
        elif r is not None:
            rec.update(path=f"raw/{r.rel_path}", ext=r.ext)
        records.append(rec)
    return records


def write_sample_images(out_dir: Path, db_path: Path, seed: int = 0, *,
                        layout: Literal["folder", "tar"] = "folder", max_images: int | None = None,
                        workers: int | None = None) -> list[Path]:
    """Write the posts' files under `out_dir/raw/`, update the DB to match, write hard_cases.json.

    Returns the paths written (image files, or tar files for layout="tar").
    """
    if layout not in ("folder", "tar"):
        raise SampleError(f"unknown layout {layout!r}: use 'folder' or 'tar'")
    if max_images is not None and max_images < 0:
        raise SampleError(f"max_images must be >= 0 (got {max_images})")
    out_dir, db_path = Path(out_dir), Path(db_path)
    tasks = _tasks(seed, _post_ids(db_path, max_images))
    results = _render_all(tasks, workers or os.cpu_count() or 1)
    files = [r for r in results if r is not None]
    raw = out_dir / "raw"
    if layout == "tar":
        written = write_tars(raw, {f.rel_path: f.data for f in files}, {f.rel_path: f.post_id for f in files})
    else:
        written = write_folder(raw, {f.rel_path: f.data for f in files})
    orphans = {c.name for c in ORPHAN_CASES}
    in_db = {pid for _, pid, case in tasks if case not in orphans}
    _update_db(db_path, [f for f in files if f.post_id in in_db])
    report = {"seed": seed, "layout": layout, "cases": _case_records(tasks, results, layout)}
    write_atomic(out_dir / "hard_cases.json", (json.dumps(report, indent=1) + "\n").encode())
    return written


def read_hard_cases(out_dir: Path) -> dict[str, dict]:
    """`hard_cases.json` of a sample folder as {case name: record (post_id, path or tar/member, ...)}."""
    report = json.loads((Path(out_dir) / "hard_cases.json").read_text())
    return {rec["name"]: rec for rec in report["cases"]}
