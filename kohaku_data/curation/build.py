"""The builder's hooks into curation (each a no-op for a recipe that uses none of it).

- `curated_fingerprint`: the DB fingerprint, plus the curation tables a recipe reads (tag rules,
  attached columns), so `kdata build` is not "up to date" after `kdata db attach` or an
  implication import changed what its captions would say.
- `dedup_plan` (dedup.py): the plan without duplicates, before any image is processed.
- `finish_manifest`: the manifest's `weight` column (weights.py) and the curation part of
  stats.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kohaku_data.config import Recipe
from kohaku_data.curation.dedup import dedup_plan
from kohaku_data.curation.weights import add_weights
from kohaku_data.db.handle import DanbooruDB

DEDUP_CACHE = ".dedup"  # OUT/.dedup/hashes-<policy>-v<n>.parquet: survives the build, reused by reruns
__all__ = ["DEDUP_CACHE", "curated_fingerprint", "dedup_plan", "finish_manifest"]


def _uses_curation(recipe: Recipe) -> bool:
    c = recipe.caption
    return bool(c.resolve_aliases or c.drop_implied or c.min_general_posts or c.attached_tags or c.text_fields)


def curated_fingerprint(db: DanbooruDB, recipe: Recipe, base: str) -> str:
    if not _uses_curation(recipe):
        return base
    digest = hashlib.sha256(base.encode())
    conn = db.connection()
    for table in ("kdata_tag_alias", "kdata_tag_implication", "kdata_attached_column"):
        if db.has_table(table):  # small tables (the values of an attached column: its file's sha256)
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2'):
                digest.update(json.dumps(row, default=str).encode())
        digest.update(table.encode())
    return digest.hexdigest()


def finish_manifest(out: Path, manifest: Path, db: DanbooruDB, recipe: Recipe, dedup: dict[str, Any]) -> dict[str, Any]:
    """Add the weights to the written manifest; the stats.json entries curation adds."""
    weights = add_weights(manifest, db, recipe.weights)
    extra: dict[str, Any] = {}
    if recipe.weights.categories:
        extra["weights"] = weights
    if dedup:
        extra["dedup"] = dedup
    return extra


def previous_dedup(dataset: Path) -> dict[str, Any]:
    """The dedup summary of a built dataset's stats.json (re-captioning keeps its samples)."""
    try:
        return json.loads((Path(dataset) / "stats.json").read_text()).get("dedup", {})
    except (OSError, ValueError):
        return {}
