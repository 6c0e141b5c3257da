"""`hf`: parquet files with the image bytes, caption and json, and a card whose 🤗 header declares them.

`data/train-NNNNN-of-MMMMM.parquet`, one per source shard that has selected samples, columns
`key` (int64), `image` (🤗 Image: struct of `bytes`, the shard member byte for byte, and `path`,
its member name), `caption` and `json` (the sample's `.json`, a struct in the fixed schema of
`assembly.sample_schema`). Row groups of 100 rows (🤗's recommendation for image data: the
viewer and streaming read one group at a time), nothing compressed (the images already are). The
image bytes go from the shard to the file in the kernel, one data page per image (`parquet.py`):
polars writes the other columns, the json parsed by `read_ndjson` in the parquet schema. `README.md`: the header, then the dataset's own
card text (and its `card/` pictures) when it has them. `datasets.load_dataset(OUT)` reads it; `push_to_hub` uploads it as is.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data.assembly.sample_schema import (
    DEFAULT_VARIANTS, card_header, hf_parquet_features_yaml, json_fields, strip_header,
)
from kohaku_data.atomic import replacing
from kohaku_data.export.files import in_place, write_text
from kohaku_data.export.pool import in_threads
from kohaku_data.export.parquet import Member, write_with_members
from kohaku_data.export.source import Built, ExportError, ExportResult
from kohaku_data.progress import progress_bar

DATA_DIR = "data"
CARD_NAME = "README.md"
PICTURES_DIR = "card"
ROW_GROUP_SIZE = 100
# Files are written on two threads: while one waits in `copy_file_range` (no GIL), the other
# builds its columns and footer in Python (see pool.py).
THREADS = 2


def write(built: Built, rows: pl.DataFrame, out: Path, *, link_from: Path | None, progress: bool) -> ExportResult:
    del link_from  # parquet files hold the bytes: nothing to link
    result = ExportResult(out, "hf", rows.height)
    parts = rows.partition_by("shard", maintain_order=True) if rows.height else []
    folder = out / DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    schema = parquet_schema(_variants(built))
    names = [folder / f"train-{i:05d}-of-{len(parts):05d}.parquet" for i in range(len(parts))]
    todo = [(path, part) for path, part in zip(names, parts) if not path.is_file()]
    result.skipped += len(parts) - len(todo)
    with progress_bar("export", rows.height, progress) as bar:
        bar.advance(rows.height - sum(part.height for _, part in todo))
        for samples in in_threads(partial(_write_file, built, schema), todo, THREADS):
            bar.advance(samples)
            result.written += 1
    result.bytes = int(rows["image_size"].sum()) if rows.height else 0
    write_text(out / CARD_NAME, card_text(built, rows.height, result.bytes))
    _copy_card_pictures(built, out)
    result.files = {"card": str(out / CARD_NAME), "data": str(folder)}
    return result


def _write_file(built: Built, schema: dict[str, pl.DataType], job: tuple[Path, pl.DataFrame]) -> int:
    """One parquet file, atomically (a file under its final name is complete: resume skips it)."""
    path, part = job
    with replacing(path) as tmp:
        _write_part(built, part, schema, tmp)
    return part.height


def _write_part(built: Built, part: pl.DataFrame, schema: dict[str, pl.DataType], target: Path) -> None:
    """One shard's rows as a parquet file: the image bytes copied from the shard in the kernel."""
    src = os.open(built.path / part["shard"][0], os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            members = [Member(src, o, n) for o, n in zip(part["image_offset"], part["image_size"])]
            write_with_members(_frame(src, part, schema), "image.bytes", members, dst, row_group_size=ROW_GROUP_SIZE)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _frame(src: int, part: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Every column but the image bytes (empty placeholders, filled in by `write_with_members`)."""
    lines = b"\n".join(_one_line(_pread(src, o, n)) for o, n in zip(part["json_offset"], part["json_size"]))
    metas = pl.read_ndjson(io.BytesIO(lines), schema=schema["json"].to_schema())
    image = pl.DataFrame({"bytes": pl.repeat(b"", part.height, dtype=pl.Binary, eager=True), "path": part["image"]})
    variants = {f"caption_{v}": metas["captions"].struct.field(v) for v in metas["captions"].struct.fields}
    return pl.DataFrame({"key": part["key"], "image": image.to_struct("image"), "caption": part["caption"],
                         **variants, "json": metas.to_struct("json")}, schema=schema)


def _one_line(member: bytes) -> bytes:
    """A json member as one NDJSON line (kdata writes them compact; an indented one is re-dumped)."""
    member = member.strip()
    return member if b"\n" not in member else json.dumps(json.loads(member), ensure_ascii=False).encode()


def _pread(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ExportError("a shard is shorter than its manifest says; run `kdata verify` on the dataset")
    return data


def parquet_schema(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> dict[str, pl.DataType]:
    """key, image, caption (the .txt), `caption_<variant>` per caption variant, json."""
    return {"key": pl.Int64, "image": pl.Struct({"bytes": pl.Binary, "path": pl.String}),
            "caption": pl.String, **{f"caption_{v}": pl.String for v in variants},
            "json": _dtype(json_fields(variants))}


def _variants(built: Built) -> tuple[str, ...]:
    return tuple(v.name for v in built.recipe.caption.variants.all())


def _dtype(kind: Any) -> pl.DataType:
    if isinstance(kind, dict):
        return pl.Struct({name: _dtype(sub) for name, sub in kind.items()})
    if kind.startswith("list:"):
        return pl.List(_dtype(kind.split(":", 1)[1]))
    return {"int64": pl.Int64, "string": pl.String, "float64": pl.Float64}[kind]


def _copy_card_pictures(built: Built, out: Path) -> None:
    """The card's pictures (`card/*.png` of the build), which its text links to."""
    pictures = built.path / PICTURES_DIR
    if not pictures.is_dir():
        return
    for picture in sorted(p for p in pictures.iterdir() if p.is_file()):
        target = out / PICTURES_DIR / picture.name
        if not in_place(target, picture.stat().st_size):
            with replacing(target) as tmp:
                shutil.copyfile(picture, tmp)


def card_text(built: Built, samples: int, nbytes: int) -> str:
    header = card_header(f"{DATA_DIR}/train-*.parquet", hf_parquet_features_yaml(_variants(built)), samples, nbytes)
    card = built.path / CARD_NAME
    if card.is_file():
        return header + strip_header(card.read_text())
    recipe = built.recipe
    return header + (f"\n# {recipe.dataset_name}\n\n{recipe.description or ''}\n\n"
                     f"Exported by `kdata export --format hf` from the kdata build `{built.path.name}` "
                     f"({samples} samples). Images are stored losslessly, byte for byte as in the build's "
                     "shards; `json` holds each sample's metadata (see kohaku_data/assembly/sample_schema.py).\n")
