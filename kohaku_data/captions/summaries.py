"""Caption thresholds, caption stats and the prepared tag table as DB summaries
(kohaku_data/db/summary.py).

Thresholds and stats are whole-DB scans (every post's rating, metric and date, held as a narrow
frame: ~14 bytes a post, thresholds.read_metrics; the stats derive the tags a slice of posts at
a time, captions/stats.py); preparing the tag table (caption group, display name, popularity
rank: sorts of every name, then the strings table of layout.PreparedTags) costs ~0.35 s with
Danbooru's ~1M tag names, in every caption run and every worker. All are stored under a name
made from the caption config (and, for stats, the thresholds), served while the DB is
unchanged. After a write, `refresh_caption_summaries` computes them again for the default
recipe and the shipped ones, reading the posts once per quality metric.
"""

from __future__ import annotations

import io
import json
import sqlite3
import struct
from typing import Any

import polars as pl

from kohaku_data.captions.thresholds import Thresholds, read_metrics, thresholds_from_frame
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB
from kohaku_data.db import summary


def thresholds_name(config: CaptionConfig) -> str:
    return summary.config_key("thresholds", config)


def stats_name(config: CaptionConfig, thresholds: Thresholds) -> str:
    return summary.config_key("caption_stats", [config.model_dump(mode="json"), thresholds.to_dict()])


def cached_thresholds(db: DanbooruDB, config: CaptionConfig) -> Thresholds:
    """The stored thresholds of `config` if current, else computed from the posts (and stored)."""
    return summary.cached(db, thresholds_name(config),
                          lambda: thresholds_from_frame(read_metrics(db, config.quality_metric), config),
                          encode=Thresholds.to_dict, decode=Thresholds.from_dict)


def compute_thresholds(db: DanbooruDB, config: CaptionConfig) -> Thresholds:
    """Quantiles of the quality metric per rating (and cohort), and year edges, from `db` (the
    stored summary while the DB is unchanged since it was computed).

    Captions do not know who curates them: a config that uses curation (tag rules, attached
    data, text fields) gets its thresholds, with that curation attached, from
    kohaku_data.curation.captions.curated_thresholds. Refused here rather than returned without
    it, which would caption silently uncurated."""
    if config.uses_curation:
        raise ValueError("this caption config uses curation (tag rules, attached data or text): compute its thresholds "
                         "with kohaku_data.curation.captions.curated_thresholds")
    return cached_thresholds(db, config)


def cached_caption_stats(db: DanbooruDB, config: CaptionConfig, thresholds: Thresholds) -> dict[str, Any]:
    from kohaku_data.captions.stats import stats_from_frame

    return summary.cached(db, stats_name(config, thresholds),
                          lambda: stats_from_frame(read_metrics(db, thresholds.metric), config, thresholds))


def prepared_tags_name(config: CaptionConfig) -> str:
    """The prepared tag table depends on the caption layout, not on the variants a recipe adds:
    a recipe that only adds variants reads the table (and token counts) of its layout."""
    return summary.config_key("prepared_tags", config.model_dump(mode="json", exclude={"variants"}))


# Below this many tags, preparing the table is about as quick as reading it back.
STORE_PREPARED_TAGS_FROM = 20_000
# Summary kinds earlier versions stored and nothing reads any more (`tag_columns`: the per-tag
# columns, prepared again on every read).
RETIRED_KINDS = ("tag_columns",)
_PREPARED_FORMAT = 2  # 2: with the CLIP token counts of the kohaku pieces of the used tags (and,
# as a later part format 2 readers skip, the counts of their xml/`@` forms: variants.ROW_FORMS)
TOKENIZER = "clip"  # the tokenizer whose counts are stored (the bundled, default one)


def stored_prepared_tags(conn: sqlite3.Connection, config: CaptionConfig) -> Any | None:
    """PreparedTags of the whole tag table as stored, if current; else None."""
    blob = summary.read_from(conn, prepared_tags_name(config))
    return decode_prepared_tags(blob) if isinstance(blob, bytes) else None


def encode_prepared_tags(tags: Any, separator: str | None = None) -> bytes:
    """A PreparedTags as bytes: a length-prefixed JSON header (the small fields), then IPC
    files: the per-tag arrays, the strings table and, given the recipe's `separator` and the
    counts on `tags.cache`, the CLIP token counts per caption row of the text + separator and of
    the text alone (captions/variants.py: a run then counts no tag it finds there). Reading it
    back is decompression and array copies only (~0.1 s for Danbooru's ~1M tags, against
    ~0.35 s to prepare the table)."""
    per_tag = pl.DataFrame({
        "tag_id": tags.tag_index.keys, "raw_row": tags.rank_pairs[:, 0], "caption_row": tags.rank_pairs[:, 1],
        "group": tags.group,
    })
    parts = [_ipc(per_tag), _ipc(pl.DataFrame({"text": tags.strings, "code": tags.codes}))]
    counts = tags.cache.get(tags.token_counts_key(TOKENIZER, separator)) if separator is not None else None
    if counts is not None:  # -1: not counted (a run counts it when it shows up)
        parts.append(_ipc(pl.DataFrame({"with_separator": counts[:, 0], "alone": counts[:, 1]},
                                       schema={"with_separator": pl.Int16, "alone": pl.Int16})))
    # the rows' other forms (xml group tags, `@` artists: variants.ROW_FORMS), same separator
    stored_forms = tags.cache.get(tags.token_forms_key(TOKENIZER)) if counts is not None else None
    forms = stored_forms[1] if stored_forms is not None and stored_forms[0] == separator else None
    if forms is not None:
        parts.append(_ipc(pl.DataFrame({f"f{i}": forms[:, i] for i in range(forms.shape[1])},
                                       schema={f"f{i}": pl.Int16 for i in range(forms.shape[1])})))
    header = json.dumps({
        "format": _PREPARED_FORMAT, "sizes": [len(p) for p in parts], "rest": list(tags.rest),
        "prefixed_offset": tags.prefixed_offset,
        "extra_rows": {str(group): rows for group, rows in tags.extra_rows.items()},
        "token_separator": separator if counts is not None else None,
        "token_forms": forms is not None,  # a later part; a reader without forms ignores it
    }).encode()
    return struct.pack("<I", len(header)) + header + b"".join(parts)


def decode_prepared_tags(blob: bytes) -> Any | None:
    """`encode_prepared_tags` backwards (None: another format, which is then prepared anew)."""
    import numpy as np

    from kohaku_data.captions.frame import KeyIndex
    from kohaku_data.captions.layout import PreparedTags

    (size,) = struct.unpack_from("<I", blob)
    header = json.loads(blob[4:4 + size])
    if header.get("format") != _PREPARED_FORMAT:
        return None
    at = 4 + size
    frames = []
    for length in header["sizes"]:
        frames.append(pl.read_ipc(io.BytesIO(blob[at:at + length])))
        at += length
    per_tag, per_string = frames[:2]
    tags = PreparedTags(
        tag_index=KeyIndex(per_tag["tag_id"].to_numpy()),
        rank_pairs=np.stack([per_tag["raw_row"].to_numpy(), per_tag["caption_row"].to_numpy()], axis=1),
        group=per_tag["group"].to_numpy(),
        strings=per_string["text"].rechunk(),  # one chunk: a gather from 24 IPC batches is 20x slower
        codes=per_string["code"].to_numpy(),
        extra_rows={int(group): rows for group, rows in header["extra_rows"].items()},
        rest=tuple(header["rest"]),
        prefixed_offset=int(header["prefixed_offset"]),
    )
    if header.get("token_separator") is not None:
        counts = frames[2]
        key = tags.token_counts_key(TOKENIZER, header["token_separator"])
        tags.cache[key] = np.stack([counts["with_separator"].to_numpy(), counts["alone"].to_numpy()],
                                   axis=1).astype(np.int32)
        if header.get("token_forms") and len(frames) > 3:
            tags.cache[tags.token_forms_key(TOKENIZER)] = (header["token_separator"],
                                                          frames[3].to_numpy().astype(np.int32))
    return tags


def _ipc(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="lz4")
    return buffer.getvalue()


def _store_prepared_tags(db: DanbooruDB, tags: pl.DataFrame, config: CaptionConfig, job: dict) -> list[str]:
    from kohaku_data.captions.layout import prepare_tags

    if tags.height < STORE_PREPARED_TAGS_FROM:
        return []
    name = prepared_tags_name(config)
    prepared = prepare_tags(tags, config)
    separator = _count_used_rows(prepared, tags, config, job)
    return [name] if summary.store(db, name, encode_prepared_tags(prepared, separator)) else []


def _count_used_rows(prepared: Any, tags: pl.DataFrame, config: CaptionConfig, job: dict) -> str | None:
    """Count the kohaku pieces of every caption row of a tag with posts (popularity > 0) and
    of the added rows (year, rating, quality, keep separator), both as written and prefixed by
    the keep separator; the separator they were counted with (None: not counted, the recipe's
    separator does not end in whitespace, so variants count captions as strings). `job`: the
    refresh's counter cache, one counter for every config (their texts are mostly the same)."""
    import numpy as np

    from kohaku_data.captions.variants import count_caption_rows, counter_for

    if not config.separator.endswith(" "):
        return None
    found, at = prepared.tag_index.find(tags.filter(pl.col("popularity") > 0)["tag_id"].to_numpy())
    rows = prepared.rank_pairs[at[found], 1]
    rows = rows[rows < len(prepared.strings)]  # shown tags only
    extra = np.array([r for texts in prepared.extra_rows.values() for r in texts.values()], dtype=np.int64)
    rows = np.concatenate([rows, extra])
    if config.keep_separator is not None:
        rows = np.concatenate([rows, rows + prepared.prefixed_offset])
    count_caption_rows(prepared, rows, config, counter_for(job, TOKENIZER))
    return config.separator


def standard_configs() -> list[CaptionConfig]:
    """The caption configs whose summaries are kept: the default recipe's and the shipped recipes'."""
    from kohaku_data.config import Recipe, load_recipe, shipped_recipes

    configs = {thresholds_name(c): c for c in (CaptionConfig(), Recipe().caption)}
    for path in shipped_recipes().values():
        try:
            config = load_recipe(path).caption
        except Exception:  # a broken shipped recipe must not stop an import; it fails where used
            continue
        configs.setdefault(thresholds_name(config), config)
    return list(configs.values())


def refresh_caption_summaries(db: DanbooruDB) -> list[str]:
    """Store thresholds, caption stats and (big tables) the prepared tags of `standard_configs()`;
    one posts read per metric, one tag table read. The posts' frames are dropped before the tag
    tables are prepared: the two whole-DB phases never hold memory at once."""
    from kohaku_data.captions.frame import read_tag_table

    summary.forget(db, RETIRED_KINDS)
    configs = standard_configs()
    stored = _store_thresholds_and_stats(db, configs)
    tags = read_tag_table(db.connection())
    job: dict = {}
    names: list[str] = []
    for config, done in zip(configs, stored):
        names += _store_prepared_tags(db, tags, config, job) + done
    return names


def _store_thresholds_and_stats(db: DanbooruDB, configs: list[CaptionConfig]) -> list[list[str]]:
    """Store the thresholds and caption stats of each config; the names stored, per config."""
    from kohaku_data.captions.stats import stats_from_frame

    frames: dict[str, pl.DataFrame] = {}
    stored = []
    for config in configs:
        metric = config.quality_metric
        if metric not in frames:
            frames[metric] = read_metrics(db, metric)
        thresholds = thresholds_from_frame(frames[metric], config)
        stats = stats_from_frame(frames[metric], config, thresholds)
        names = [thresholds_name(config)] if summary.store(db, thresholds_name(config), thresholds.to_dict()) else []
        if summary.store(db, stats_name(config, thresholds), stats):
            names.append(stats_name(config, thresholds))
        stored.append(names)
    return stored
