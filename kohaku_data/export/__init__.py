"""`kdata export`: a built dataset into the layouts trainers read, without re-encoding anything.

    result = export_dataset(Path("datasets/kxl-1"), Path("exports/kxl-kohya"), "kohya")

Formats (one module each, each a pure function of the built dataset and the selection):

- `kohya` (`kohya.py`): sd-scripts' DreamBooth layout, `images/<key>.<webp|png>` + `<key>.txt`,
  and a stand-alone `dataset.toml` whose bucket options make sd-scripts put every image in a
  bucket of its own size (no resize, no crop) and honour the `|||` keep separator.
- `kohya-ft` (`kohya_ft.py`): the same images with sd-scripts' fine-tuning metadata,
  `metadata.jsonl` (`image_path`, `caption`, `image_size`) and the older `metadata.json`, plus a
  `dataset.toml` pointing at the JSONL.
- `hf` (`hf.py`): `data/train-NNNNN-of-MMMMM.parquet` with the image bytes, caption and json,
  and a `README.md` card whose 🤗 header declares them (`push_to_hub`-style).

Images are the shard members byte for byte (copied out of the tars by offset with
`os.copy_file_range`, in the kernel, on a few threads: `pool.py`; the hf parquet files take them
the same way, `parquet.py`); `link_from` names an earlier export whose identical files are
hard-linked instead (a copy when it lies on another file system). A subset is chosen by keys (a
`--query`) and/or a deterministic `fraction` split. A rerun skips what is already in place, so an
interrupted export resumes: images and captions are written under their final names and count
as in place only at their exact size / bytes (`files.py` says why that is safe), parquet files
and the metadata files are written atomically; `kdata-export.json` records what the folder holds
(`complete: false` until the end), and another export into it is refused unless `force`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kohaku_data.export.source import ExportError, ExportResult, open_built
from kohaku_data.export.state import begin_export, finish_export

FORMATS = ("kohya", "kohya-ft", "hf")

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_dataset"]


def export_dataset(
    dataset: Path, out: Path, fmt: str, *, keys: Sequence[int] | None = None, query: str | None = None,
    fraction: float | None = None, seed: int = 0, link_from: Path | None = None, force: bool = False,
    progress: bool = False, level: str | None = None,
) -> ExportResult:
    """Write the `fmt` export of the built `dataset` (or of its subset) into `out`; `level`: the
    images of one of its `[image] levels` instead of the main ones (`source.at_level`)."""
    from kohaku_data.export import hf, kohya, kohya_ft
    from kohaku_data.export.select import select_rows

    writers = {"kohya": kohya.write, "kohya-ft": kohya_ft.write, "hf": hf.write}
    if fmt not in writers:
        raise ExportError(f"unknown export format {fmt!r}; pick one of {', '.join(FORMATS)}")
    built = open_built(Path(dataset))
    out = Path(out).absolute()
    if out.resolve() == built.path.resolve() or built.path.resolve() in out.resolve().parents:
        raise ExportError("export into a folder outside the dataset (the dataset folder is only read)")
    rows = select_rows(built.manifest, keys, fraction, seed)
    if rows.height == 0:
        raise ExportError(f"the selection (query / fraction) matches no sample of {dataset}; widen it")
    selection = {"query": query, "keys_sha256": _keys_sha256(rows), "fraction": fraction,
                 "seed": seed if fraction is not None else None}
    if level is not None:
        from kohaku_data.export.source import at_level

        built, rows = at_level(built, rows, level)
        selection["level"] = level  # only then: an export without levels records what it did before
    state = begin_export(out, built, fmt, selection, rows, force)
    result = writers[fmt](built, rows, out, link_from=None if link_from is None else Path(link_from),
                          progress=progress)
    finish_export(out, state, result)
    return result


def _keys_sha256(rows) -> str:
    """Which samples the export holds (a query's answer changes with the DB: its text is not enough)."""
    import hashlib

    return hashlib.sha256(rows["key"].to_numpy().astype("<i8").tobytes()).hexdigest()
