"""`kohya-ft`: the images with sd-scripts' fine-tuning metadata, and a `dataset.toml` using it.

`metadata.jsonl` is the current form (one `{"image_path", "caption", "image_size": [w, h]}` per
line, `FineTuningDataset` reads it when the file name ends in `.jsonl`); `metadata.json` is the
older form (`{image_path: {"caption", "image_size"}}`) for older sd-scripts and tools. Image
paths are relative to `images/`, which the toml names as `image_dir` (absolute), so the metadata
itself moves with the folder. `image_size` lets sd-scripts skip opening every image for its size.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kohaku_data.export.files import write_text
from kohaku_data.export.images import place_images
from kohaku_data.export.kohya import TOML_NAME, _header, sd_scripts_options, toml_text
from kohaku_data.export.source import Built, ExportResult

JSONL_NAME = "metadata.jsonl"
JSON_NAME = "metadata.json"


def write(built: Built, rows: pl.DataFrame, out: Path, *, link_from: Path | None, progress: bool) -> ExportResult:
    result = ExportResult(out, "kohya-ft", rows.height)
    general = sd_scripts_options(built, rows)
    folder = place_images(built, rows, out, result, link_from=link_from, captions=False, progress=progress)
    entries = [(name, {"caption": caption, "image_size": [w, h]})
               for name, caption, w, h in rows.select("image", "caption", "width", "height").iter_rows()]
    write_text(out / JSONL_NAME, "".join(
        json.dumps({"image_path": name, **entry}, ensure_ascii=False) + "\n" for name, entry in entries))
    write_text(out / JSON_NAME, json.dumps(dict(entries), ensure_ascii=False, indent=1) + "\n")
    subset = {"image_dir": str(folder.absolute()), "metadata_file": str((out / JSONL_NAME).absolute()),
              "num_repeats": 1}
    write_text(out / TOML_NAME, toml_text(general, subset, _header(built, "fine-tuning metadata")))
    result.files = {"dataset_config": str((out / TOML_NAME).absolute()), "metadata_jsonl": str(out / JSONL_NAME),
                    "metadata_json": str(out / JSON_NAME), "image_dir": str(folder.absolute())}
    return result
