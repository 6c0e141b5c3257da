"""The batch plan of one epoch: a pure function of (buckets, weights, seed, epoch, global batch).

Every rank of a run computes the same plan on its own, with no communication: the global batches
of an epoch (each of `global_batch` = batch_size x world_size indices, all from one bucket), in
a shuffled order. Rank r then takes columns [r*batch_size, (r+1)*batch_size) of every row, so
every rank has the same number of steps and every step is one bucket on every rank.

How a bucket's samples are drawn. Each bucket has a *stream*: epoch after epoch, its draws of
that epoch in a seeded random order. Weights are quantised to integer units (`UNITS` per mean
weight, exact integer arithmetic, so every machine gets the same counts); epoch k of bucket b
covers units [k*T_b, (k+1)*T_b) of its shuffled members laid end to end (T_b: the bucket's
units), and draws the member under each multiple of `UNITS` (systematic sampling). Without
weights every member is drawn exactly once per epoch; with weights a member is drawn about
`w / mean(w)` times per epoch (floor or ceil of it), zero-weight members never, and the number
of draws of bucket b before epoch k is exactly ceil(k*T_b / UNITS): a closed form, so epoch e
needs no replay of the epochs before it.

What happens to the draws that do not fill a last global batch (`remainder`):
- "carry": they stay in the stream and open the bucket's first batch of a later epoch (a
  small bucket may take several epochs to fill one): every draw is eventually trained on.
- "pad": the last batch is filled by repeating the epoch's draws of that bucket from the start;
  the repeated entries are flagged (`padded`).
- "drop": they are left out of the epoch.
The counts of each are in the plan's `EpochReport`.

Random numbers come from PCG64 seeded by a SeedSequence of (seed, epoch, purpose, bucket), and
permutations are argsorts of distinct random keys (`shuffled`), so the plan does not depend on
numpy's permutation or sort algorithm, the process, or the machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kohaku_data.train.errors import SamplerError

Remainder = Literal["carry", "drop", "pad"]
REMAINDERS = ("carry", "drop", "pad")
UNITS = 1 << 16  # weight units per mean weight (a draw every UNITS units of a stream)
_ORDER, _BATCHES = 0, 1  # SeedSequence purposes: a bucket's order in an epoch, the batch order


@dataclass(frozen=True)
class Layout:
    """What the plan needs from a manifest: each sample's bucket and its weight in units."""

    names: tuple[str, ...]  # bucket names, sorted; a bucket's code is its position here
    codes: np.ndarray  # int32 (N,): each sample's bucket code
    units: np.ndarray  # int64 (N,): each sample's weight in units (UNITS = a mean weight)
    members: tuple[np.ndarray, ...]  # each bucket's sample indices, ascending

    @classmethod
    def build(cls, names: tuple[str, ...], codes: np.ndarray, weights: np.ndarray | None = None) -> Layout:
        """`codes[i]`: the position in `names` (sorted bucket names) of sample i's bucket."""
        codes = np.asarray(codes, dtype=np.int32)
        # One stable sort gives every bucket's members (not one scan of all samples per bucket).
        order = np.argsort(codes, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(codes, minlength=len(names)))[:-1])
        return cls(tuple(str(n) for n in names), codes, weight_units(weights, len(codes)), tuple(members))


def weight_units(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Weights scaled to a mean of UNITS and rounded; exact sums (fsum) so all machines agree."""
    if weights is None:
        return np.full(n, UNITS, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise SamplerError(f"weights has {w.size} values for {n} samples: give one weight per manifest row.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise SamplerError("weights must be finite and >= 0: fix or fill the weight column (e.g. fill_null(1.0)).")
    total = math.fsum(w.tolist())
    if total <= 0:
        raise SamplerError("every weight is 0, so nothing could be drawn: give some samples a positive weight.")
    return np.rint(w * (n * UNITS / total)).astype(np.int64)


@dataclass(frozen=True)
class EpochReport:
    """What one epoch's plan did with its draws (never silent: also logged by the sampler)."""

    epoch: int
    batches: int  # global batches (= steps on every rank)
    samples: int  # entries in those batches (batches x global batch), padding included
    drawn: int  # draws made this epoch
    carried_in: int  # entries drawn in earlier epochs, trained in this one ("carry")
    carried_out: int  # draws not yet in a batch, left for a later epoch ("carry")
    padded: int  # repeated entries that fill last batches ("pad")
    dropped: int  # draws left out ("drop")
    excluded: int  # samples that can never be drawn (weight 0)


@dataclass(frozen=True)
class EpochPlan:
    batches: np.ndarray  # int64 (n_batches, global_batch): sample indices
    padded: np.ndarray  # bool, same shape: True where an entry repeats to fill a batch
    bucket: np.ndarray  # int32 (n_batches,): the bucket code of each batch
    report: EpochReport

    def digest(self) -> str:
        """sha256 of the plan (little-endian bytes): equal on every process and machine."""
        h = hashlib.sha256()
        for array, dtype in ((self.batches, "<i8"), (self.padded, "|b1"), (self.bucket, "<i4")):
            h.update(str(array.shape).encode())
            h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        return h.hexdigest()


def _rng(seed: int, epoch: int, purpose: int, bucket: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, purpose, bucket])))


def _drawn_before(epoch: int, total_units: int) -> int:
    """Draws of a bucket with `total_units` units in the epochs before `epoch`: ceil(k*T/UNITS)."""
    return -(-epoch * total_units // UNITS)


def shuffled(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) as the argsort of distinct keys (random high bits, the
    index in the low bits): with no ties, every sort algorithm and machine gives the same order."""
    low = max(1, int(n - 1).bit_length())
    keys = rng.integers(0, 1 << (63 - low), n, dtype=np.int64) << low
    keys |= np.arange(n, dtype=np.int64)
    return np.argsort(keys)


def _draws(members: np.ndarray, units: np.ndarray, seed: int, epoch: int, bucket: int) -> np.ndarray:
    """The bucket's draws of one epoch, in their order: systematic sampling over a seeded shuffle."""
    order = shuffled(members.size, _rng(seed, epoch, _ORDER, bucket))
    members, units = members[order], units[order]
    total = int(units.sum())
    start = epoch * total
    ends = start + np.cumsum(units)  # member i covers units [ends[i-1], ends[i])
    first, stop = _drawn_before(epoch, total), _drawn_before(epoch + 1, total)
    points = np.arange(first, stop, dtype=np.int64) * UNITS
    return members[np.searchsorted(ends, points, side="right")]


def _epoch_of(position: int, total_units: int, epoch: int) -> int:
    """The epoch whose draws hold stream position `position` (at most `epoch`)."""
    k = min(epoch, position * UNITS // total_units)
    while k > 0 and _drawn_before(k, total_units) > position:
        k -= 1
    while k < epoch and _drawn_before(k + 1, total_units) <= position:
        k += 1
    return k


def _carry(members, units, seed, epoch, bucket, g) -> tuple[np.ndarray, int, int]:
    """Rows of one bucket for epoch `epoch` under "carry", with (carried_in, carried_out)."""
    total = int(units.sum())
    before, upto = _drawn_before(epoch, total), _drawn_before(epoch + 1, total)
    lo, hi = before // g * g, upto // g * g  # stream positions of the batches ending this epoch
    if hi <= lo:
        return np.empty((0, g), np.int64), 0, upto - lo
    first = _epoch_of(lo, total, epoch)
    stream = np.concatenate([_draws(members, units, seed, k, bucket) for k in range(first, epoch + 1)])
    offset = lo - _drawn_before(first, total)
    return stream[offset:offset + hi - lo].reshape(-1, g), before - lo, upto - hi


def plan_epoch(layout: Layout, seed: int, epoch: int, global_batch: int, remainder: Remainder) -> EpochPlan:
    """The global batches of `epoch`: one bucket each, shuffled (see the module docstring)."""
    check_plan_args(seed, epoch, global_batch, remainder)
    g = global_batch
    rows, pads, codes = [], [], []
    drawn = carried_in = carried_out = padded = dropped = 0
    for b, members in enumerate(layout.members):
        units = layout.units[members]
        keep = units > 0
        members, units = members[keep], units[keep]
        if members.size == 0:
            continue
        if remainder == "carry":
            total = int(units.sum())
            drawn += _drawn_before(epoch + 1, total) - _drawn_before(epoch, total)
            block, cin, cout = _carry(members, units, seed, epoch, b, g)
            carried_in, carried_out = carried_in + cin, carried_out + cout
            pad = np.zeros(block.shape, bool)
        else:
            draws = _draws(members, units, seed, epoch, b)
            drawn += draws.size
            full = draws.size // g * g
            if remainder == "drop" or full == draws.size:
                dropped += draws.size - full
                block, pad = draws[:full].reshape(-1, g), np.zeros((full // g, g), bool)
            else:
                n = -(-draws.size // g) * g
                block = draws[np.arange(n) % draws.size].reshape(-1, g)
                pad = (np.arange(n) >= draws.size).reshape(-1, g)
                padded += n - draws.size
        rows.append(block)
        pads.append(pad)
        codes.append(np.full(block.shape[0], b, np.int32))
    batches = np.concatenate(rows) if rows else np.empty((0, g), np.int64)
    pad = np.concatenate(pads) if pads else np.empty((0, g), bool)
    bucket = np.concatenate(codes) if codes else np.empty(0, np.int32)
    order = shuffled(batches.shape[0], _rng(seed, epoch, _BATCHES))
    report = EpochReport(
        epoch=epoch, batches=int(batches.shape[0]), samples=int(batches.size), drawn=drawn,
        carried_in=carried_in, carried_out=carried_out, padded=padded, dropped=dropped,
        excluded=int((layout.units == 0).sum()),
    )
    return EpochPlan(batches[order].astype(np.int64), pad[order], bucket[order], report)


def check_plan_args(seed: int, epoch: int, global_batch: int, remainder: str) -> None:
    if remainder not in REMAINDERS:
        raise SamplerError(f"remainder={remainder!r} is not one of {', '.join(REMAINDERS)}: pick one of them.")
    if int(seed) < 0 or int(epoch) < 0:
        raise SamplerError("seed and epoch must be >= 0: pass non-negative integers.")
    if int(global_batch) < 1:
        raise SamplerError("batch_size x world_size must be at least 1: pass a positive batch_size.")
