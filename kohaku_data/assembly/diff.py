"""What changed between two built datasets, from their manifests, locks and indexes only.

    report = diff_datasets(Path("datasets/kxl-1"), Path("datasets/kxl-2"))
    report["identical"], report["summary"]       # False, "captions changed (812), images identical"

Samples are matched by key with one outer join of the two manifests; every compared column is
checked in one vectorised pass (`ne_missing`, so null == null). A sample's image counts as
changed when its stored bytes differ (the manifest's sha256), its caption when the `.txt` text
differs, its metadata when any of the `.json` fields kept in the manifest differ. Recipe and
threshold changes come from the two `dataset.lock`s, flattened to dotted keys; bucket and
quality shifts from the manifests' counts. No image and no shard is ever opened; either side may be
an fsspec URL (`s3://…`), read through `kohaku_data.storage`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.card import flatten
from kohaku_data.assembly.card_data import NONE_LABEL
from kohaku_data.assembly.lock import LOCK_NAME
from kohaku_data.assembly.manifest import INDEX_NAME, MANIFEST_NAME, OFFSET_COLUMNS
from kohaku_data.errors import KdataError

EXAMPLES = 5
# Manifest columns by what they say about a sample.
IMAGE_COLUMNS = ("sha256", "image_bytes", "format", "width", "height", "bucket",
                 "crop_left", "crop_top", "crop_right", "crop_bottom")
CAPTION_COLUMNS = ("caption", "tokens", "variant_tokens")  # token counts follow the caption text


def caption_columns(columns) -> tuple[str, ...]:
    """CAPTION_COLUMNS and the per-variant token counts (`tokens_<variant>`) among `columns`."""
    return CAPTION_COLUMNS + tuple(c for c in columns if c.startswith("tokens_"))


# Where a sample sits (shard, member name, byte offsets and sizes inside the tar) is not what it
# is: a longer caption moves every later member. Reported apart, never a "changed sample".
PLACEMENT_COLUMNS = ("shard", "image", *OFFSET_COLUMNS)
# Lock keys that describe the tools, not the data: reported, but two builds that differ only
# there (and in nothing else) are identical data.
TOOL_KEYS = ("kdata_version", "toolchain.")


class DiffError(KdataError):
    """A side of `kdata diff` is not a finished dataset."""


def diff_datasets(a: str | Path, b: str | Path) -> dict[str, Any]:
    """The differences between datasets `a` and `b` as a JSON-ready dict (see module doc)."""
    left, right = _Side.open(a), _Side.open(b)
    samples, columns = _sample_changes(left.manifest, right.manifest)
    lock_changes = _lock_changes(left.lock, right.lock)
    shards = _shard_changes(left.index, right.index)
    report = {
        "a": str(a), "b": str(b),
        "samples": samples, "columns": columns,
        "images": _group(columns, IMAGE_COLUMNS), "captions": _group(columns, caption_columns(columns)),
        "metadata": _group(columns, tuple(c for c in columns if c not in IMAGE_COLUMNS + caption_columns(columns)
                                          + PLACEMENT_COLUMNS)),
        "placement": _group(columns, PLACEMENT_COLUMNS),
        "lock": lock_changes, "shards": shards,
        "buckets": shift(left.manifest, right.manifest, "bucket"),
        "quality": shift(left.manifest, right.manifest, "quality"),
    }
    report["identical"] = _identical(report)
    report["summary"] = summary_line(report)
    return report


class _Side:
    """One dataset folder's manifest, lock and index."""

    def __init__(self, manifest: pl.DataFrame, lock: dict[str, Any], index: dict[str, Any]) -> None:
        self.manifest, self.lock, self.index = manifest, lock, index

    @classmethod
    def open(cls, where: str | Path) -> "_Side":
        """Read through `kohaku_data.storage`: a local folder or an fsspec URL (three small files
        and the manifest, one GET each)."""
        try:
            lock = json.loads(storage.read_bytes(storage.join(where, LOCK_NAME)))
            manifest = pl.read_parquet(io.BytesIO(storage.read_bytes(storage.join(where, MANIFEST_NAME))))
        except FileNotFoundError:
            raise DiffError(f"{where} is not a finished dataset (no dataset.lock or manifest.parquet); "
                            "give the folder of a `kdata build` output") from None
        except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
            raise DiffError(f"{where} has an unreadable file ({exc}); rebuild it or run `kdata verify` on it") from exc
        try:
            index = json.loads(storage.read_bytes(storage.join(where, INDEX_NAME)))
        except FileNotFoundError:
            index = {}
        return cls(manifest, lock, index)


# -- samples --------------------------------------------------------------------------------------
def _sample_changes(a: pl.DataFrame, b: pl.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    """Added / removed / changed keys, and per compared column the keys whose value differs."""
    common = [c for c in a.columns if c in b.columns and c != "key"]
    joined = a.select("key", *common).join(b.select("key", *common), on="key", how="full",
                                           suffix="_b", coalesce=False, maintain_order="left_right")
    in_a, in_b = pl.col("key").is_not_null(), pl.col("key_b").is_not_null()
    both = joined.filter(in_a & in_b)
    flags = both.select("key", *[pl.col(c).ne_missing(pl.col(f"{c}_b")).alias(c) for c in common])
    compared = [c for c in common if c not in PLACEMENT_COLUMNS]
    changed_any = flags.filter(pl.any_horizontal(compared)) if compared else flags.clear()
    added = joined.filter(~in_a)["key_b"].sort()
    removed = joined.filter(~in_b)["key"].sort()
    samples = {
        "a": a.height, "b": b.height, "common": both.height,
        "added": added.len(), "removed": removed.len(), "changed": changed_any.height,
        "added_examples": added.head(EXAMPLES).to_list(), "removed_examples": removed.head(EXAMPLES).to_list(),
        "changed_examples": changed_any["key"].sort().head(EXAMPLES).to_list(),
    }
    counts = flags.select(pl.col(c).sum() for c in common).row(0, named=True) if common else {}
    columns = {c: {"changed": int(counts[c]), "examples": _examples(both, flags, c)} for c in common if counts[c]}
    return samples, columns


def _examples(both: pl.DataFrame, flags: pl.DataFrame, column: str) -> list[dict[str, Any]]:
    rows = both.filter(flags[column]).sort("key").head(EXAMPLES).select("key", column, f"{column}_b")
    return [{"key": k, "a": _jsonable(x), "b": _jsonable(y)} for k, x, y in rows.iter_rows()]


def _group(columns: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    hit = {c: columns[c]["changed"] for c in names if c in columns}
    return {"changed": max(hit.values(), default=0), "columns": hit}


# -- locks and shards ------------------------------------------------------------------------------
def _lock_changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Every dotted key of the two locks whose value differs (recipe, thresholds, DB, tools)."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    return [{"key": k, "a": fa.get(k), "b": fb.get(k), "tool": k.startswith(TOOL_KEYS)} for k in keys]


def _shard_changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    sa = [(s.get("url"), s.get("sha256")) for s in a.get("shardlist", [])]
    sb = [(s.get("url"), s.get("sha256")) for s in b.get("shardlist", [])]
    hashes_b = {h for _, h in sb}
    return {"a": len(sa), "b": len(sb), "identical": [h for _, h in sa] == [h for _, h in sb],
            "same_bytes": sum(h in hashes_b for _, h in sa)}


# -- shifts ----------------------------------------------------------------------------------------
def shift(a: pl.DataFrame, b: pl.DataFrame, column: str) -> list[dict[str, Any]]:
    """Counts and shares of each value of `column` in a and b, largest change first."""
    def counts(frame: pl.DataFrame, side: str) -> pl.DataFrame:
        value = pl.col(column).cast(pl.String).fill_null(NONE_LABEL).replace("", NONE_LABEL)
        return frame.select(value.alias("value")).group_by("value").len(side)

    table = (counts(a, "a").join(counts(b, "b"), on="value", how="full", coalesce=True)
             .with_columns(pl.col("a", "b").fill_null(0).cast(pl.Int64))
             .with_columns(share_a=pl.col("a") / max(a.height, 1), share_b=pl.col("b") / max(b.height, 1))
             .with_columns(delta=pl.col("b") - pl.col("a"), share_delta=pl.col("share_b") - pl.col("share_a"))
             .sort([pl.col("share_delta").abs(), pl.col("value")], descending=[True, False]))
    return table.to_dicts()


# -- verdict ---------------------------------------------------------------------------------------
def _identical(report: dict[str, Any]) -> bool:
    s = report["samples"]
    data_locks = [c for c in report["lock"] if not c["tool"]]
    return not (s["added"] or s["removed"] or s["changed"] or data_locks or report["placement"]["changed"]
                or not report["shards"]["identical"])


def summary_line(report: dict[str, Any]) -> str:
    """One line a person reads first: `identical`, or what changed (`captions changed, images identical`)."""
    if report["identical"]:
        return "identical"
    s, parts = report["samples"], []
    if s["added"]:
        parts.append(f"{s['added']:,} samples added")
    if s["removed"]:
        parts.append(f"{s['removed']:,} removed")
    for name in ("captions", "metadata"):
        if report[name]["changed"]:
            parts.append(f"{name} changed ({report[name]['changed']:,})")
    images = report["images"]["changed"]
    parts.append(f"images changed ({images:,})" if images else "images identical")
    moved = report["placement"]["columns"].get("shard", 0)
    if moved:
        parts.append(f"{moved:,} samples in other shards")
    recipe = [c["key"] for c in report["lock"] if c["key"].startswith("recipe.") and c["key"] != "recipe_sha256"]
    if recipe:
        parts.append("recipe keys changed: " + ", ".join(k.removeprefix("recipe.") for k in recipe[:6])
                     + (" …" if len(recipe) > 6 else ""))
    if any(c["key"].startswith("caption_thresholds.") for c in report["lock"]):
        parts.append("thresholds changed")
    return ", ".join(parts)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
