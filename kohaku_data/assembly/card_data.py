"""The numbers behind a dataset's card, computed from its files with polars (no image opened).

    facts = card_facts(Path("datasets/demo-1"), lock)

Inputs: `manifest.parquet` (one row per sample), `rejects.parquet`, `stats.json`, `index.json`
and the lock dict (passed in: the card is written *before* `dataset.lock`, which stays the
build's last write). Tags per category are the one thing the manifest lacks; they come from the
samples' `.json` members, read at the byte offsets the manifest records (no image is read).
Every frame is sorted on fixed keys, so the same folder gives the same facts (and card bytes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.manifest import (
    INDEX_NAME, MANIFEST_NAME, REJECTS_NAME, STATS_NAME, dataset_levels, manifest_levels)
from kohaku_data.assembly.sample_schema import TAG_CATEGORIES
from kohaku_data.captions.thresholds import RATING_NAMES

CARD_COLUMNS = ("key", "shard", "bucket", "rating", "quality", "year", "score", "fav_count", "created_at",
                "json_offset", "json_size")
NONE_LABEL = "(none)"  # a sample without a quality / year tag (tag off, broken date, cutoff)
TOP_TAGS = 15
REJECT_EXAMPLES = 3


@dataclass(frozen=True)
class CardFacts:
    """Everything the card's text and pictures show; plain frames and dicts."""

    lock: dict[str, Any]
    index: dict[str, Any]
    stats: dict[str, Any]
    manifest: pl.DataFrame  # the columns the card uses
    buckets: pl.DataFrame  # bucket, width, height, aspect, n, share (by aspect ratio)
    shares: dict[str, pl.DataFrame]  # quality / year / rating -> value, n, share (fixed order)
    year_quality: pl.DataFrame  # year (calendar, from created_at), quality, n
    tags: pl.DataFrame  # category, tag, n: the TOP_TAGS of each category
    rejects: pl.DataFrame  # reason, n, examples (list of "key: detail")
    date_range: tuple[str | None, str | None]
    artifacts: dict[str, Any] = field(default_factory=dict)  # artifact_facts; {} for an older manifest
    level_buckets: dict[str, pl.DataFrame] = field(default_factory=dict)  # `[image] levels`: name -> bucket_counts
    tokens: dict[str, pl.Series] = field(default_factory=dict)  # caption variant -> CLIP tokens per sample
    latents: list[dict[str, Any]] = field(default_factory=list)  # latent_facts: the finished latent sets

    @property
    def recipe(self) -> dict[str, Any]:
        return self.lock.get("recipe", {})


def card_facts(folder: Path, lock: dict[str, Any], json_docs: list[str] | None = None) -> CardFacts:
    """What the card shows, from the dataset's files in `folder`; `json_docs`, the samples'
    `.json` members in manifest order, when the caller has them (a build keeps them in its
    parts: its shards may lie on object storage), else read from the shards in `folder`."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    caption = lock.get("recipe", {}).get("caption", {})
    rejects = pl.read_parquet(folder / REJECTS_NAME)
    dates = manifest["date"].drop_nulls()
    return CardFacts(
        lock=lock, index=_read_json(folder / INDEX_NAME), stats=_read_json(folder / STATS_NAME),
        manifest=manifest, buckets=bucket_counts(manifest),
        shares={
            "quality": shares(manifest, "quality", caption.get("quality_bands", ())),
            "year": shares(manifest, "year", tuple(reversed(caption.get("year_tags", ())))),
            "rating": shares(manifest, "rating", RATING_NAMES),
        },
        year_quality=year_quality(manifest),
        tags=top_tags(folder, manifest, TOP_TAGS, json_docs),
        rejects=reject_summary(rejects, REJECT_EXAMPLES),
        date_range=(dates.min(), dates.max()) if dates.len() else (None, None),
        artifacts=artifact_facts(folder / MANIFEST_NAME, rejects, lock.get("recipe", {}).get("artifacts") or {}),
        level_buckets=level_bucket_counts(folder / MANIFEST_NAME),
        tokens=token_counts(folder / MANIFEST_NAME, lock.get("recipe", {})),
        latents=latent_facts(folder),
    )


def latent_record_names(dataset: storage.Target) -> list[str]:
    """The dataset-relative names of its latent sets' small files (each set's lock, index and
    manifest: what `latent_facts` and the latent readers need besides the shards), found by one
    listing of `latents/`; for fetching them from a bucket into a local folder."""
    from kohaku_data.train.latents import LATENT_DIR, LATENT_LOCK

    return [f"{LATENT_DIR}/{rel}" for rel, _ in storage.list_files(storage.join(dataset, LATENT_DIR))
            if storage.name_of(rel) in (LATENT_LOCK, INDEX_NAME, MANIFEST_NAME)]


def latent_facts(folder: Path) -> list[dict[str, Any]]:
    """Each finished latent set (`kdata latents`; main images first, then the levels in manifest
    order): level (None: main), folder, VAE sha256, dtype, what is stored, samples, and whether
    it was made from the images the dataset holds now (image sha256 of every sample)."""
    from kohaku_data.train.latents import LATENT_LOCK, latent_dir

    path = folder / MANIFEST_NAME
    found = []
    for level in [None, *dataset_levels(folder)]:
        where = latent_dir(level)
        if not (folder / where / LATENT_LOCK).is_file():
            continue
        lock = _read_json(folder / where / LATENT_LOCK)
        sha = "sha256" if level is None else f"sha256@{level}"
        images = pl.read_parquet(path, columns=["key", sha]).rename({sha: "want"})
        made = pl.read_parquet(folder / where / MANIFEST_NAME, columns=["key", "image_sha256"])
        joined = images.join(made, on="key", how="left")
        current = joined.filter(pl.col("image_sha256").is_null() | (pl.col("image_sha256") != pl.col("want"))).height == 0
        found.append({"level": level, "folder": f"{where}/", "vae_sha256": lock.get("vae", {}).get("sha256"),
                      "channels": lock.get("vae", {}).get("latent_channels"), "dtype": lock.get("dtype"),
                      "what": lock.get("what", []), "samples": lock.get("samples", 0), "current": current})
    return found


def read_manifest(folder: Path) -> pl.DataFrame:
    """The manifest columns the card reads (captions stay on disk), plus `date` (YYYY-MM-DD as
    written at the start of created_at)."""
    path = folder / MANIFEST_NAME
    present = set(pl.read_parquet_schema(path))
    frame = pl.read_parquet(path, columns=[c for c in CARD_COLUMNS if c in present])
    created = pl.col("created_at")
    return frame.with_columns(date=pl.when(created.str.contains(r"^\d{4}-\d{2}-\d{2}")).then(created.str.slice(0, 10)))


def level_bucket_counts(path: Path) -> dict[str, pl.DataFrame]:
    """Each extra level's `bucket_counts` (its `bucket@<level>` column), in manifest order."""
    levels = manifest_levels(list(pl.read_parquet_schema(path)))
    if not levels:
        return {}
    frame = pl.read_parquet(path, columns=[f"bucket@{level}" for level in levels])
    return {level: bucket_counts(frame.select(pl.col(f"bucket@{level}").alias("bucket"))) for level in levels}


# sd-scripts' caption windows: 75 tokens, 150 / 225 with max_token_length (between start and end tokens)
TOKEN_WINDOWS = (75, 150, 225)


def token_counts(path: Path, recipe: dict[str, Any]) -> dict[str, pl.Series]:
    """CLIP tokens per sample of each caption variant, from the manifest alone: its
    `tokens_<variant>` columns, else (a build without added variants, or one from before those
    columns) `variant_tokens` by the recipe's variant names; {} for a manifest without counts."""
    from kohaku_data.assembly.manifest import manifest_variants
    from kohaku_data.assembly.sample_schema import variants_of

    present = list(pl.read_parquet_schema(path))
    names = manifest_variants(present)
    if names:
        frame = pl.read_parquet(path, columns=[f"tokens_{n}" for n in names])
        return {n: frame[f"tokens_{n}"].drop_nulls().cast(pl.Int64).alias(n) for n in names}
    if "variant_tokens" not in present:
        return {}
    lists = pl.read_parquet(path, columns=["variant_tokens"])["variant_tokens"]
    names = list(variants_of(recipe))
    if lists.len() and lists.list.len().max() != len(names):
        return {}  # counts that do not match the recipe's variants: show none rather than mislabel
    return {n: lists.list.get(i, null_on_oob=True).drop_nulls().cast(pl.Int64).alias(n) for i, n in enumerate(names)}


def token_summary(values: pl.Series) -> dict[str, Any]:
    """Captions, median, p95 (linear), max and, per window, how many captions are past it."""
    n = values.len()
    return {"captions": n, "median": float(values.quantile(0.5, "linear") or 0) if n else 0.0,
            "p95": float(values.quantile(0.95, "linear") or 0) if n else 0.0, "max": int(values.max() or 0) if n else 0,
            "past": {w: int((values > w).sum()) for w in TOKEN_WINDOWS}}


def bucket_counts(manifest: pl.DataFrame) -> pl.DataFrame:
    """Samples per bucket, ordered from the tallest to the widest aspect ratio (w / h)."""
    size = pl.col("bucket").str.split_exact("x", 1)
    return (
        manifest.group_by("bucket").len("n")
        .with_columns(width=size.struct.field("field_0").cast(pl.Int64),
                      height=size.struct.field("field_1").cast(pl.Int64))
        .with_columns(aspect=pl.col("width") / pl.col("height"), share=pl.col("n") / pl.col("n").sum())
        .sort("aspect", "bucket")
        .select("bucket", "width", "height", "aspect", "n", "share")
    )


def shares(manifest: pl.DataFrame, column: str, order: tuple[str, ...]) -> pl.DataFrame:
    """Counts of `column`'s values in the recipe's order (unknown values after, then none)."""
    counts = (manifest.select(pl.col(column).fill_null("").replace("", NONE_LABEL).alias("value"))
              .group_by("value").len("n"))
    rank = {v: i for i, v in enumerate(order)}
    rank[NONE_LABEL] = len(order) + 1
    return (counts.with_columns(rank=pl.col("value").replace_strict(rank, default=len(order), return_dtype=pl.Int64))
            .sort("rank", "value").drop("rank")
            .with_columns(share=pl.col("n") / pl.col("n").sum()))


def year_quality(manifest: pl.DataFrame) -> pl.DataFrame:
    """Samples per (calendar year of the post, quality band): the per-year quality mix."""
    return (manifest.select(year=pl.col("date").str.slice(0, 4),
                            quality=pl.col("quality").fill_null("").replace("", NONE_LABEL))
            .drop_nulls("year").group_by("year", "quality").len("n").sort("year", "quality"))


def reject_summary(rejects: pl.DataFrame, examples: int) -> pl.DataFrame:
    """Rejects per reason (most first) with the first few keys and details of each."""
    shown = pl.concat_str(pl.col("key").cast(pl.String).fill_null("-"), pl.lit(": "), pl.col("detail").fill_null(""))
    return (rejects.sort("key", "source").group_by("reason", maintain_order=True)
            .agg(n=pl.len(), examples=shown.head(examples))
            .sort(["n", "reason"], descending=[True, False]))


# (label, low, high): JPEG quality and upscale factor bins, each from low up to just below high
JPEG_QUALITY_BINS = (("<50", 0, 50), ("50-59", 50, 60), ("60-69", 60, 70), ("70-79", 70, 80), ("80-89", 80, 90),
                     ("90-94", 90, 95), ("95-99", 95, 100), ("100", 100, 101))
UPSCALE_BINS = (("none", 0.0, 1.05), ("<1.5", 1.05, 1.5), ("1.5-2", 1.5, 2.0), ("2-3", 2.0, 3.0), ("3+", 3.0, 1e9))
ARTIFACT_REASONS = ("jpeg_quality", "jpeg_history", "upscaled")
PALETTE_COLOURS = 256  # a sample with this many distinct colours or fewer counts as palette art


def artifact_facts(manifest_path: Path, rejects: pl.DataFrame, rules: dict[str, Any]) -> dict[str, Any]:
    """The source artifact measures of the kept samples (histograms, shares) and what the
    recipe's `[artifacts]` rules did (rejects by reason, tags added); {} for a manifest without
    the measure columns (a build before they existed)."""
    present = set(pl.read_parquet_schema(manifest_path))
    columns = ("jpeg_quality", "jpeg_history", "upscale_factor", "colours", "artifact_tags")
    if not set(columns) <= present:
        return {}
    m = pl.read_parquet(manifest_path, columns=list(columns))
    threshold = float(rules.get("history_threshold", 0.3))
    history = m["jpeg_history"].drop_nulls()
    tagged = m["artifact_tags"].explode().drop_nulls().value_counts(name="n").sort("n", "artifact_tags",
                                                                                    descending=[True, False])
    return {
        "samples": m.height, "jpeg_sources": int(m["jpeg_quality"].is_not_null().sum()),
        "jpeg_quality": _binned(m["jpeg_quality"].drop_nulls(), JPEG_QUALITY_BINS),
        "lossless_tested": history.len(), "history_threshold": threshold,
        "jpeg_history": int((history >= threshold).sum()),
        "upscale": _binned(m["upscale_factor"].drop_nulls(), UPSCALE_BINS),
        "palette": int((m["colours"].drop_nulls() <= PALETTE_COLOURS).sum()), "colours_known": m["colours"].count(),
        "rejected": {r: int((rejects["reason"] == r).sum()) for r in ARTIFACT_REASONS},
        "tagged": dict(zip(tagged["artifact_tags"].to_list(), tagged["n"].to_list())),
    }


def _binned(values: pl.Series, bins: tuple[tuple[str, float, float], ...]) -> list[tuple[str, int]]:
    return [(label, int(((values >= low) & (values < high)).sum())) for label, low, high in bins]


def top_tags(folder: Path, manifest: pl.DataFrame, top: int, docs: list[str] | None = None) -> pl.DataFrame:
    """The `top` most frequent tags of each category over the samples' `.json` members (`docs`,
    or read from the shards in `folder`)."""
    empty = pl.DataFrame(schema={"category": pl.String, "tag": pl.String, "n": pl.UInt32})
    if docs is None:
        docs = [doc.decode("utf-8") for doc in json_members(folder, manifest)]
    if not docs:
        return empty
    dtype = pl.Struct({"tags": pl.Struct({c: pl.List(pl.String) for c in TAG_CATEGORIES})})
    tags = pl.Series(docs).str.json_decode(dtype).struct.unnest().unnest("tags")
    long = pl.concat([tags.select(category=pl.lit(c), tag=pl.col(c)).explode("tag") for c in TAG_CATEGORIES])
    return (long.drop_nulls("tag").group_by("category", "tag").len("n")
            .sort(["category", "n", "tag"], descending=[False, True, False])
            .group_by("category", maintain_order=True).head(top))


def json_members(folder: Path, manifest: pl.DataFrame) -> list[bytes]:
    """Every sample's `.json` member, in manifest order, by one `pread` at the offset the manifest
    records (never a tar scan, never an image byte): ~1 s for 1M samples from the page cache."""
    if "json_offset" not in manifest.columns:
        return []  # a manifest without member offsets (older kdata): the card shows no tags
    out: list[bytes] = []
    for (shard,), rows in manifest.select("shard", "json_offset", "json_size").group_by("shard", maintain_order=True):
        fd = os.open(folder / shard, os.O_RDONLY)
        try:
            out += [os.pread(fd, size, offset) for offset, size in zip(rows["json_offset"], rows["json_size"])]
        finally:
            os.close(fd)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
