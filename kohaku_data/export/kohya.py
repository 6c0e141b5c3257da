"""`kohya`: sd-scripts' DreamBooth layout and a stand-alone `dataset.toml`.

What sd-scripts (library/train_util.py, config_util.py) does with the options written here:

- `enable_bucket = true`, `bucket_no_upscale = true`: `BucketManager.select_bucket` then keeps an
  image whose area is at most `resolution[0] * resolution[1]` at its own size and makes its
  bucket `(w - w % bucket_reso_steps, h - h % bucket_reso_steps)`. kdata's images are already
  multiples of the preset's `step` on both sides, so with `bucket_reso_steps = step` and a
  `resolution` whose area covers the preset's `max_area` (and every exported image) the bucket
  *is* the image: `trim_and_resize_if_required` neither resizes nor crops.
- `min_bucket_reso` / `max_bucket_reso` are unused with `bucket_no_upscale` except for the checks
  `min(resolution) >= min_bucket_reso`, `max(resolution) <= max_bucket_reso` (and sd-scripts'
  defaults, 256 / 1024, would fail them for kohaku-xl); they are the preset's side limits,
  widened to cover `resolution` and every exported image.
- `keep_tokens_separator = "|||"` is honoured only inside `process_caption`'s shuffling branch,
  which runs when `shuffle_caption` (or token warm-up or tag dropout) is on; without it the
  literal `|||` reaches the text encoder. So a recipe with a keep separator gets
  `shuffle_caption = true`: the kept part stays first, in order, and the rest is shuffled each
  step (the Kohaku-XL way). `caption_separator` is the recipe's separator without spaces
  (sd-scripts strips each tag). A recipe without a keep separator gets no shuffling.
- Paths are absolute (the trainer may start anywhere); move the export and export again (a
  rerun with `--link-from` of the old folder links every image instead of copying).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data.export.files import write_text
from kohaku_data.export.images import place_images
from kohaku_data.export.source import Built, ExportError, ExportResult
from kohaku_data.export.sd_latents import has_latents, write_sdxl_caches

TOML_NAME = "dataset.toml"


def write(built: Built, rows: pl.DataFrame, out: Path, *, link_from: Path | None, progress: bool) -> ExportResult:
    result = ExportResult(out, "kohya", rows.height)
    general = sd_scripts_options(built, rows)
    folder = place_images(built, rows, out, result, link_from=link_from, captions=True, progress=progress)
    general["caption_extension"] = ".txt"
    subset = {"image_dir": str(folder.absolute()), "num_repeats": 1}
    write_text(out / TOML_NAME, toml_text(general, subset, _header(built, "DreamBooth layout (<key>.txt captions)")))
    result.files = {"dataset_config": str((out / TOML_NAME).absolute()), "image_dir": str(folder.absolute())}
    if has_latents(built.path, built.level):  # kdata latents made a set of these images: sd-scripts' npz caches (--cache_latents_to_disk)
        result.written += write_sdxl_caches(built.path, rows, folder, built.level)
        result.files["latent_caches"] = f"{folder.absolute()}/<key>_<W>x<H>_sdxl.npz"
    return result


def sd_scripts_options(built: Built, rows: pl.DataFrame) -> dict[str, Any]:
    """The `[general]` options: buckets equal to the images, and the caption handling."""
    preset = built.recipe.image.bucket_preset()
    step = preset.step
    widths, heights = rows["width"].to_numpy(), rows["height"].to_numpy()
    off_grid = int(((widths % step != 0) | (heights % step != 0)).sum()) if rows.height else 0
    if off_grid:
        raise ExportError(f"{off_grid} images are not multiples of the bucket step {step}: sd-scripts would crop "
                          "them; rebuild with a recipe whose image sizes follow its bucket preset")
    largest_area = int((widths.astype("int64") * heights).max()) if rows.height else 0
    side = _ceil_to(math.isqrt(max(preset.max_area, largest_area) - 1) + 1, step)
    smallest = int(min(widths.min(), heights.min())) if rows.height else preset.min_side
    biggest = int(max(widths.max(), heights.max())) if rows.height else preset.max_side
    caption = built.recipe.caption
    options: dict[str, Any] = {
        "enable_bucket": True, "bucket_no_upscale": True, "bucket_reso_steps": step,
        "resolution": [side, side],
        "min_bucket_reso": min(preset.min_side, smallest, side) // step * step,
        "max_bucket_reso": _ceil_to(max(preset.max_side, biggest, side), step),
        # an ordered .txt variant (no separator) keeps its group order: no shuffle
        "shuffle_caption": caption.keep_separator is not None and _txt_kind(caption) == "kohaku",
        "caption_separator": caption.separator.strip() or caption.separator,
    }
    if caption.keep_separator is not None:
        options["keep_tokens_separator"] = caption.keep_separator
    return options


def _txt_kind(caption: Any) -> str:
    """The kind of the caption variant the .txt holds (captions/variants.py)."""
    return next(v.kind for v in caption.variants.all() if v.name == caption.variants.txt)


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


def _header(built: Built, what: str) -> str:
    return (f"# sd-scripts dataset config written by `kdata export` from {built.path.absolute()}\n"
            f"# ({built.recipe.dataset_name}; {what}). Train with --dataset_config <this file>; it holds\n"
            "# every dataset option (buckets equal to the stored image sizes: no resize, no crop).\n")


def toml_text(general: dict[str, Any], subset: dict[str, Any], header: str = "") -> str:
    """A TOML document: `[general]`, then one `[[datasets]]` with one `[[datasets.subsets]]`."""
    lines = [header.rstrip("\n")] if header else []
    lines += ["[general]", *(f"{k} = {_toml_value(v)}" for k, v in general.items()), "",
              "[[datasets]]", "", "  [[datasets.subsets]]", *(f"  {k} = {_toml_value(v)}" for k, v in subset.items())]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a valid TOML basic string (same escapes; \uXXXX for control characters).
    return json.dumps(str(value), ensure_ascii=False)
