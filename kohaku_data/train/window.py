"""Shard-local epoch plans: every global batch drawn from a window of shards.

Object storage answers a request in tens of milliseconds whatever its size, so a reader that
fetches each sample by its own ranged GET is bound by request latency. A windowed plan reads
whole shards instead: the epoch's shards are shuffled (seeded by (seed, epoch)) and cut into
windows of `window` shards; the batches of window k hold only samples of window k's shards, so
a shard cache (shard_cache.py) fetches each shard once, window after window.

The entries of an epoch are exactly those of `plan_epoch` (same draws, weights, carry / pad /
drop, same `EpochReport`); only how they are grouped into batches changes. Each bucket's
entries are grouped by window (in the order `plan_epoch` gives them); a window's full batches of
one bucket stay in it, and the < global-batch leftovers of each (window, bucket) go to a tail
phase at the end of the epoch, where they make full batches (a bucket's entries are a whole
number of batches). So every batch is still one bucket; the tail re-reads at most some shards
once more: an epoch fetches each shard once, plus at most once again for the tail.

Batch order: the windows in their shuffled order, the batches inside a window shuffled, then
the tail's batches ordered by the first window they read; a pure function of (manifest, seed, epoch, global batch, window). `window` of
at least the shard count gives `plan_epoch`'s plan itself.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kohaku_data.train.errors import SamplerError
from kohaku_data.train.plan import EpochPlan, _rng, shuffled

_WINDOWS, _WINDOW_BATCHES = 2, 3  # SeedSequence purposes (plan.py uses 0 and 1)


def shard_windows(n_shards: int, seed: int, epoch: int, window: int) -> np.ndarray:
    """int64 (n_shards,): the window of each shard in `epoch` (shards shuffled, then cut)."""
    if int(window) < 1:
        raise SamplerError(f"window={window}: give at least 1 shard per window (or None for all shards).")
    order = shuffled(n_shards, _rng(seed, epoch, _WINDOWS))
    windows = np.empty(n_shards, np.int64)
    windows[order] = np.arange(n_shards, dtype=np.int64) // int(window)
    return windows


def windowed(plan: EpochPlan, shard_of: np.ndarray, n_shards: int, seed: int, window: int | None) -> EpochPlan:
    """`plan` regrouped so that every batch comes from one window of shards (module docstring).

    `shard_of`: int (N,), each sample's shard code in [0, n_shards)."""
    if window is None or int(window) >= n_shards or plan.batches.shape[0] == 0:
        return plan
    epoch, g = plan.report.epoch, plan.batches.shape[1]
    of_shard = shard_windows(n_shards, seed, epoch, window)
    n_windows = int(of_shard.max()) + 1
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # batches, pads, bucket, phase
    for bucket in np.unique(plan.bucket).tolist():
        rows = plan.bucket == bucket
        groups += _bucket_groups(plan.batches[rows].ravel(), plan.padded[rows].ravel(),
                                 of_shard[shard_of[plan.batches[rows].ravel()]], n_windows, g, bucket)
    batches = np.concatenate([x[0] for x in groups])
    padded = np.concatenate([x[1] for x in groups])
    codes = np.concatenate([x[2] for x in groups])
    phase = np.concatenate([x[3] for x in groups])  # window index; n_windows = the tail
    order = _phase_order(phase, of_shard[shard_of[batches]].min(axis=1), seed, epoch, n_windows)
    return replace(plan, batches=batches[order], padded=padded[order], bucket=codes[order])


def _bucket_groups(entries: np.ndarray, pads: np.ndarray, windows: np.ndarray, n_windows: int, g: int, bucket: int):
    """One bucket's entries as (batches, pads, bucket codes, phase) per window, then its tail."""
    order = np.argsort(windows, kind="stable")  # stable: one result on every machine
    entries, pads, windows = entries[order], pads[order], windows[order]
    bounds = np.searchsorted(windows, np.arange(n_windows + 1))
    out, tail = [], []
    for k in range(n_windows):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        full = lo + (hi - lo) // g * g
        if full > lo:
            out.append(_group(entries[lo:full], pads[lo:full], g, bucket, k))
        tail.append(np.arange(full, hi))
    rest = np.concatenate(tail)
    if rest.size:  # a bucket's entries fill whole batches, so its leftovers do too
        out.append(_group(entries[rest], pads[rest], g, bucket, n_windows))
    return out


def _group(entries: np.ndarray, pads: np.ndarray, g: int, bucket: int, phase: int):
    n = entries.size // g
    return (entries.reshape(n, g), pads.reshape(n, g), np.full(n, bucket, np.int32), np.full(n, phase, np.int64))


def _phase_order(phase: np.ndarray, first_window: np.ndarray, seed: int, epoch: int, n_windows: int) -> np.ndarray:
    """Batch order: phase by phase (windows, then the tail), shuffled inside each window; tail
    batches by the first window they read (so the tail, too, walks the shards window by window)."""
    within = np.empty(phase.size, np.int64)
    for k in np.unique(phase).tolist():
        rows = np.flatnonzero(phase == k)
        within[rows[shuffled(rows.size, _rng(seed, epoch, _WINDOW_BATCHES, k))]] = np.arange(rows.size)
    tail_key = np.where(phase == n_windows, first_window, 0)
    return np.lexsort((within, tail_key, phase))


def shard_schedule(batches: np.ndarray, shard_of: np.ndarray, start: int = 0) -> list[tuple[int, int, int]]:
    """(shard code, first batch, last batch) for each shard the batches from `start` read, in the
    order they are first needed: what a prefetcher fetches, and when a shard may be dropped."""
    rows = batches[start:]
    if rows.size == 0:
        return []
    shards = shard_of[rows]  # (n, g)
    n, g = shards.shape
    batch = np.repeat(np.arange(start, start + n), g)
    flat = shards.ravel()
    codes, first = np.unique(flat, return_index=True)
    last = np.zeros(codes.size, np.int64)
    np.maximum.at(last, np.searchsorted(codes, flat), batch)
    by_first = np.argsort(first, kind="stable")
    return [(int(codes[i]), int(batch[first[i]]), int(last[i])) for i in by_first]
