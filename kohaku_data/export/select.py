"""Which samples an export holds: all, those of a query, and/or a deterministic fraction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from kohaku_data.captions.layout import _splitmix64
from kohaku_data.export.source import ExportError


def select_rows(manifest: pl.DataFrame, keys: Sequence[int] | None, fraction: float | None,
                seed: int) -> pl.DataFrame:
    """The manifest rows to export, in manifest (key) order."""
    rows = manifest
    if keys is not None:
        rows = rows.filter(pl.col("key").is_in(np.asarray(keys, dtype=np.int64)))
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ExportError(f"--fraction must lie in (0, 1], got {fraction}")
        rows = rows.filter(pl.Series(in_split(rows["key"].to_numpy(), fraction, seed)))
    return rows


def in_split(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each key falls in the `fraction` split of `seed`: a splitmix64 hash of (seed, key)
    below fraction x 2^64. Per key, so a key's fate does not depend on the other keys, and the
    split of a smaller fraction is inside that of a larger one (same seed)."""
    with np.errstate(over="ignore"):
        salt = _splitmix64(np.array([seed], dtype=np.uint64))[0]
        hashed = _splitmix64(keys.astype(np.uint64) ^ salt)
    return (hashed >> np.uint64(11)).astype(np.float64) < fraction * float(1 << 53)
