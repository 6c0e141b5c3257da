"""`BucketBatchSampler`: this rank's slice of the epoch plan, with an exact mid-epoch resume.

The plan (`plan.py`) depends only on the manifest's buckets and weights, the seed, the epoch
and the global batch (batch_size x world_size), so every rank builds it alone and the ranks
agree without talking. The state is (epoch, global batches consumed), which is why a run may
resume with another world size as long as batch_size x world_size stays the same.

`state_dict()` counts the batches this sampler has *yielded*. That is what a single-process
loader has consumed, and what torchdata's `StatefulDataLoader` records (it snapshots the
sampler as each batch index is sent and keeps the snapshot of the last batch received). A plain
`torch.utils.data.DataLoader` with workers pulls batches ahead of the training loop: use
`KdataLoader` (loader.py), which counts the batches the loop has actually received.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.train.errors import SamplerError
from kohaku_data.train.plan import EpochPlan, EpochReport, Layout, Remainder, check_plan_args, plan_epoch
from kohaku_data.train.window import shard_schedule, windowed

log = logging.getLogger("kohaku_data.train")
STATE_VERSION = 1


class EpochIndex(int):
    """A sample index that carries its epoch (and pad flag) into the DataLoader workers, for a
    dataset with a caption policy (train/captions.py)."""

    epoch: int
    padded: bool

    def __new__(cls, value: int, epoch: int, padded: bool = False) -> "EpochIndex":
        obj = super().__new__(cls, value)
        obj.epoch, obj.padded = int(epoch), bool(padded)
        return obj

    def __reduce__(self):
        return EpochIndex, (int(self), self.epoch, self.padded)


class PadIndex(int):
    """A sample index that repeats an earlier entry to fill a batch (`remainder="pad"`).

    It is an int everywhere (indexing, pickling to DataLoader workers); `KdataDataset` turns
    its flag into the sample's `padded` field so the training step can mask it."""

    padded = True

    def __reduce__(self):
        return PadIndex, (int(self),)


class BucketBatchSampler:
    """Yields lists of sample indices for this rank: every batch one bucket, the same number of
    batches on every rank. Call `set_epoch(e)` before each epoch (as with DistributedSampler).

    `weights`: a manifest column name, an array with one weight per sample, or None (every
    sample once per epoch). `report` / `report_for(epoch)` give the epoch's counts (carried,
    padded, dropped, excluded); they are also logged on logger "kohaku_data.train".
    `window`: shards per window (window.py): every global batch then comes from one window of
    shards, so a shard cache fetches each shard about once an epoch; None: all shards (today's plan).
    """

    def __init__(self, dataset: Any, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 remainder: Remainder = "carry", weights: str | Sequence[float] | np.ndarray | None = None,
                 window: int | None = None) -> None:
        if int(batch_size) < 1 or int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise SamplerError(f"batch_size={batch_size}, world_size={world_size}, rank={rank}: need "
                               f"batch_size >= 1, world_size >= 1 and 0 <= rank < world_size.")
        self.batch_size, self.world_size, self.rank = int(batch_size), int(world_size), int(rank)
        self.seed, self.remainder = int(seed), remainder
        self.global_batch = self.batch_size * self.world_size
        check_plan_args(self.seed, 0, self.global_batch, remainder)
        self.layout = _layout(dataset, weights)
        self.window = None if window is None else int(window)
        self.shard_names, self.shard_of = _shards(dataset)
        # a caption policy draws per (epoch, key): indices then carry their epoch into the workers
        self.epoch_in_index = getattr(dataset, "caption_policy", None) is not None
        self.weighted = weights is not None
        self.epoch = 0
        self._next = 0  # global batches of `epoch` handed out so far
        self._resume = False  # the next __iter__ starts at _next (after load_state_dict)
        self._plan: EpochPlan | None = None

    # -- the plan ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Switch to `epoch` (its first batch). The epoch of a loaded state is kept as loaded, so
        the usual `for e in range(start, n): sampler.set_epoch(e)` resumes mid-epoch."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self._next, self._resume = epoch, 0, False

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The global plan of `epoch` (default: the current one), the same on every rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan is not None and self._plan.report.epoch == epoch:
            return self._plan
        plan = plan_epoch(self.layout, self.seed, epoch, self.global_batch, self.remainder)
        plan = windowed(plan, self.shard_of, len(self.shard_names), self.seed, self.window)
        if epoch == self.epoch:
            self._plan = plan
            _log_report(plan.report, self.remainder)
        return plan

    @property
    def report(self) -> EpochReport:
        return self.plan().report

    def report_for(self, epoch: int) -> EpochReport:
        return self.plan(epoch).report

    def shard_schedule(self, start: int | None = None) -> list[tuple[str, int, int]]:
        """(shard, first global batch, last global batch) of the current epoch's plan from `start`
        (default: where the next iteration starts), in first-use order: a Prefetcher's input."""
        start = self.start_position() if start is None else int(start)
        return [(self.shard_names[c], first, last)
                for c, first, last in shard_schedule(self.plan().batches, self.shard_of, start)]

    def __len__(self) -> int:
        return self.plan().report.batches

    def __iter__(self) -> Iterator[list[int]]:
        # The start is read when iteration begins, not when iter() is called: a DataLoader with
        # workers calls iter() twice and drops the first iterator unused.
        plan = self.plan()
        start = self._next = self.start_position()
        self._resume = False
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        rows, pads = plan.batches[:, lo:hi], plan.padded[:, lo:hi]
        for b in range(start, rows.shape[0]):
            batch = rows[b].tolist()
            if pads[b].any():
                batch = [PadIndex(v) if p else v for v, p in zip(batch, pads[b].tolist())]
            if self.epoch_in_index:
                batch = [EpochIndex(v, plan.report.epoch, getattr(v, "padded", False)) for v in batch]
            self._next = b + 1  # counted before the yield: the state after this batch is consumed
            yield batch

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """(epoch, global batches consumed) plus what the plan depends on; `batches_done`
        overrides the count (a loader that knows how many batches the loop received)."""
        return {
            "version": STATE_VERSION, "epoch": self.epoch,
            "batches_done": self._next if batches_done is None else int(batches_done),
            "global_batch": self.global_batch, "seed": self.seed, "remainder": self.remainder,
            "samples": int(self.layout.codes.size), "weighted": self.weighted, "window": self.window,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the batch after the last one consumed; the next iteration starts there."""
        expect = {"version": STATE_VERSION, "global_batch": self.global_batch, "seed": self.seed,
                  "remainder": self.remainder, "samples": int(self.layout.codes.size), "weighted": self.weighted,
                  "window": self.window}
        for name, value in expect.items():
            if state.get(name) != value:
                raise SamplerError(
                    f"the saved sampler state has {name}={state.get(name)!r} but this run has {value!r}: "
                    f"resume with the same dataset, seed, remainder, window and batch_size x world_size.")
        self.epoch, self._next, self._resume = int(state["epoch"]), int(state["batches_done"]), True
        self._plan = None

    def start_position(self) -> int:
        """The global batch the next iteration starts at (0, or the resumed position)."""
        return self._next if self._resume else 0


def _layout(dataset: Any, weights: str | Sequence[float] | np.ndarray | None) -> Layout:
    from kohaku_data.train.dataset import factorize

    def column(name: str):  # a KdataDataset, or a manifest frame itself
        return dataset[name] if isinstance(dataset, pl.DataFrame) else dataset.column(name)

    names, codes = factorize(column("bucket"))
    if isinstance(weights, str):
        values = column(weights)
        if values.null_count():
            raise SamplerError(f"weight column {weights!r} has {values.null_count()} nulls: "
                               f"fill them (e.g. 1.0) before sampling.")
        weights = values.cast(pl.Float64).to_numpy()
    return Layout.build(names, codes, None if weights is None else np.asarray(weights, dtype=np.float64))


def _shards(dataset: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted shard names, each sample's shard code), from a KdataDataset or a manifest frame."""
    from kohaku_data.train.dataset import factorize

    if not isinstance(dataset, pl.DataFrame) and hasattr(dataset, "_shard_names"):
        return dataset._shard_names, dataset._shard_code
    if isinstance(dataset, pl.DataFrame) and "shard" not in dataset.columns:  # a bare plan frame
        return ("",), np.zeros(dataset.height, np.int32)
    return factorize(dataset["shard"] if isinstance(dataset, pl.DataFrame) else dataset.column("shard"))


def _log_report(r: EpochReport, remainder: str) -> None:
    log.info("epoch %d plan (remainder=%s): %d batches, %d entries; drawn %d, carried in %d, carried out %d, "
             "padded %d, dropped %d, never drawn (weight 0) %d", r.epoch, remainder, r.batches, r.samples,
             r.drawn, r.carried_in, r.carried_out, r.padded, r.dropped, r.excluded)
