"""What curation adds to captions: tag cleanup before the layout, attached data after it.

`curated_thresholds(db, config)` gives captions their thresholds with `caption_curation(db,
config)` attached, which reads everything once (with the thresholds, so a whole build
uses one consistent set and dataset.lock records it): the tag rules, the percentile band of
every post for each `attached_tags` column, and the names of the text fields. Per page,
`CaptionCuration.relations` cleans the (post, tag) arrays before the tags are looked up, and
`finish` adds to the caption frame:

- `attached_<column>`: the band name (or null), appended to the tag caption after the quality tag
  (an empty band name, like the default's middle band, adds nothing);
- `tag_caption`: the tag caption; `text_<field>`: each text field (null when the post has none);
- `caption`: what the `.txt` holds by `caption_mode` — `tags`; `text` (the first text field the
  post has, else its tag caption); `tags_then_text` (tag caption, `text_joiner`, that text).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.captions.summaries import cached_thresholds
from kohaku_data.captions.thresholds import Thresholds
from kohaku_data.config import AttachedTags, CaptionConfig
from kohaku_data.curation.tagrules import TagRules, load_tag_rules
from kohaku_data.db.handle import DanbooruDB

RATING_NAMES = ("general", "sensitive", "questionable", "explicit")


@dataclass(frozen=True)
class AttachedBands:
    """The band of every post that has a value of one numeric column."""

    rule: AttachedTags
    post_ids: np.ndarray  # sorted
    band: np.ndarray  # int8 index into rule.bands, -1 = no band (no threshold for its group)
    thresholds: dict[str, Any]  # what the lock records

    def names_for(self, ids: np.ndarray) -> pl.Series:
        """Band name (or null) of each post id."""
        band = np.full(len(ids), -1, dtype=np.int64)
        if len(self.post_ids):
            at = np.minimum(np.searchsorted(self.post_ids, ids), len(self.post_ids) - 1)
            found = self.post_ids[at] == ids
            band[found] = self.band[at[found]]
        return pl.Series(band).replace_strict(dict(enumerate(self.rule.bands)), default=None, return_dtype=pl.String)


@dataclass(frozen=True)
class CaptionCuration:
    db_path: str
    rules: TagRules | None = None
    attached: tuple[AttachedBands, ...] = ()
    text_fields: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)  # attached column → sha256 of its file

    def relations(self, rel: Any) -> Any:
        """The page's Relations with the tag rules applied (same type, rid kept in step)."""
        if self.rules is None or self.rules.empty or not len(rel.tag_id):
            return rel
        tag, keep = self.rules.apply(rel.post_id, rel.tag_id, rel.rid)
        rid = rel.rid[keep] if rel.rid is not None else None
        return type(rel)(rel.post_id[keep], tag[keep], rid)

    def finish(self, frame: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
        if frame.height == 0 or not (self.attached or self.text_fields or config.caption_mode != "tags"):
            return frame
        ids = frame["id"].to_numpy()
        caption = pl.col("caption")
        for bands in self.attached:
            name = f"attached_{bands.rule.column}"
            frame = frame.with_columns(bands.names_for(ids).alias(name))
            frame = frame.with_columns(caption=_append(caption, pl.col(name), config))
        frame = frame.with_columns(tag_caption=caption)
        if self.text_fields:
            frame = self._with_texts(frame, int(ids.min()), int(ids.max()))
        return frame.with_columns(caption=_txt(config, self.text_fields))

    def _with_texts(self, frame: pl.DataFrame, first: int, last: int) -> pl.DataFrame:
        from kohaku_data.curation.attached import text_values

        conn = sqlite3.connect(f"file:{Path(self.db_path).resolve()}?mode=ro", uri=True)
        try:
            for name in self.text_fields:
                texts = text_values(conn, name, first, last).rename({"text": f"text_{name}"})
                frame = frame.join(texts, on="id", how="left", maintain_order="left")
        finally:
            conn.close()
        return frame

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rules is not None:
            out["tag_rules"] = self.rules.summary()
        if self.attached:
            out["attached_tags"] = {b.rule.column: b.thresholds for b in self.attached}
        if self.sources:
            out["attached_sources"] = dict(sorted(self.sources.items()))
        return out


def _group(rule: AttachedTags, year_min: int) -> pl.Expr:
    """The threshold group of each value: "all", the rating's name, or "rating:year" where that
    cohort holds at least `cohort_min_posts` values (else, and for a date that is not a usable
    written date, the rating's); a post with an unknown rating has no group, hence no band."""
    from kohaku_data.captions.thresholds import written_date

    rating = pl.col("rating").replace_strict(dict(enumerate(RATING_NAMES)), default=None, return_dtype=pl.String)
    if rule.cohort == "all":
        return pl.lit("all")
    if rule.cohort == "rating":
        return rating
    cohort = rating + ":" + written_date(pl.col("created_at"), year_min).str.slice(0, 4)
    return pl.when(cohort.count().over(cohort) >= rule.cohort_min_posts).then(cohort).otherwise(rating)


def _append(caption: pl.Expr, tag: pl.Expr, config: CaptionConfig) -> pl.Expr:
    """`caption, tag` — directly after a trailing keep separator, alone in an empty caption."""
    glue = pl.lit(config.separator)
    if config.keep_separator is not None:
        glue = pl.when(caption.str.ends_with(config.keep_separator)).then(pl.lit("")).otherwise(glue)
    glue = pl.when(caption == "").then(pl.lit("")).otherwise(glue)
    return pl.when(tag.is_null() | (tag == "")).then(caption).otherwise(caption + glue + tag)  # "": a band with no tag


def _txt(config: CaptionConfig, fields: tuple[str, ...]) -> pl.Expr:
    tags = pl.col("tag_caption")
    if config.caption_mode == "tags" or not fields:
        return tags
    text = pl.coalesce([pl.col(f"text_{f}") for f in fields])
    if config.caption_mode == "text":
        return pl.coalesce([text, tags])
    return pl.when(text.is_null()).then(tags).otherwise(tags + pl.lit(config.text_joiner) + text)


# ---------------------------------------------------------------------------------------------
# Building it from the DB
# ---------------------------------------------------------------------------------------------
def curated_thresholds(db: DanbooruDB, config: CaptionConfig) -> Thresholds:
    """The thresholds captions of `config` need: the quantiles and year edges (stored while the
    DB is unchanged: captions/summaries.py), with `caption_curation` attached when `config`
    uses any. Here, not in captions/, because captions do not know who curates them: they only
    call the attached object (`Thresholds.curation`)."""
    thresholds = cached_thresholds(db, config)
    curation = caption_curation(db, config)
    return thresholds if curation is None else replace(thresholds, curation=curation)


def caption_curation(db: DanbooruDB, config: CaptionConfig) -> CaptionCuration | None:
    """Everything the options of `config` need from `db`; None when every option is off."""
    from kohaku_data.curation.attached import require_column

    if not config.uses_curation:
        return None
    rules = None
    if config.wants_tag_rules:
        rules = load_tag_rules(db, aliases=config.resolve_aliases, implications=config.drop_implied,
                               min_general_posts=config.min_general_posts)
    sources = {}
    for name in config.text_fields:
        sources[name] = require_column(db, name, "text")["sha256"]
    attached = []
    for rule in config.attached_tags:
        sources[rule.column] = require_column(db, rule.column, "numeric")["sha256"]
        attached.append(attached_bands(db, rule, year_min=config.year_min))
    return CaptionCuration(str(db.path), rules, tuple(attached), tuple(config.text_fields), sources)


def attached_bands(db: DanbooruDB, rule: AttachedTags, *, year_min: int = 2005) -> AttachedBands:
    """Thresholds ('linear' quantiles per group of posts with a value: rating, (rating, year)
    cohort or all) and the band of every post: the best band whose threshold its value is
    strictly above."""
    from kohaku_data.curation.attached import numeric_values

    values = numeric_values(db, rule.column).with_columns(_g=_group(rule, year_min))
    table = values.drop_nulls("_g").group_by("_g").agg(
        pl.len().alias("_n"),
        *[pl.col("value").quantile(p / 100, interpolation="linear").alias(f"_t{i}")
          for i, p in enumerate(rule.percentiles)],
    ).sort("_g")
    k = len(rule.percentiles)
    joined = values.join(table, on="_g", how="left", maintain_order="left")
    below = [(pl.col("value") <= pl.col(f"_t{i}")).cast(pl.Int8) for i in range(k)]
    index = pl.sum_horizontal(below) if below else pl.lit(0, dtype=pl.Int8)
    band = pl.when(pl.col("_n").is_not_null()).then(index).otherwise(-1).cast(pl.Int8)
    bands = joined.select(band.alias("band"))["band"].to_numpy()
    thresholds = {
        "percentiles": list(rule.percentiles), "bands": list(rule.bands), "cohort": rule.cohort,
        "by_group": {g: [float(row[f"_t{i}"]) for i in range(k)] for g, row in
                     ((r["_g"], r) for r in table.iter_rows(named=True))},
        "counts": {r["_g"]: int(r["_n"]) for r in table.iter_rows(named=True)},
    }
    return AttachedBands(rule, values["post_id"].to_numpy(), bands, thresholds)


def curated_fields(caption: dict[str, Any]) -> dict[str, Any]:
    """The sample `.json` keys curation adds, from a caption row: `tag_caption`, `text_fields`
    and `texts` (the recipe's text fields, names and values in the same order), `attached_tags`."""
    fields_in_order = [k for k in caption if k.startswith("text_")]  # frame columns follow the recipe
    return {
        "tag_caption": caption.get("tag_caption", caption.get("caption")),
        "text_fields": [k[len("text_"):] for k in fields_in_order],
        "texts": [caption[k] or "" for k in fields_in_order],
        "attached_tags": [caption[k] for k in caption if k.startswith("attached_") and caption[k]],
    }
