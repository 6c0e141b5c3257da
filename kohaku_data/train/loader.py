"""`KdataLoader`: a torch DataLoader over one bucket per batch, with a state that counts the
batches the training loop has *received*.

A DataLoader with workers asks its batch sampler for batches ahead of the loop (prefetching),
so the sampler's own count runs ahead of training; this wrapper counts what it hands over, so
`state_dict()` taken after step k resumes at step k+1 for any `num_workers`. (torchdata's
`StatefulDataLoader` does the same bookkeeping itself; pass it the sampler directly.)

When the dataset reads through a `ShardCache` (KdataDataset(..., cache=...)), each iteration
runs a `Prefetcher` on the sampler's shard schedule from where it starts, fed by the count of
batches received (`prefetch`: None = whenever there is a cache, False = never, True = require a
cache). The DataLoader's workers then mostly find their shards fetched already. A `KdataMix` or
`KdataCurriculum` prefetches the same way for each of its datasets that has a cache (its
sampler's `shard_schedules`: the mix's plan, step by step), all on one Prefetcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import logging

from kohaku_data.train.collate import BucketCollate
from kohaku_data.train.errors import ReaderError
from kohaku_data.train.shard_cache import Prefetcher, Schedule, ShardCache

Schedules = Callable[[int], list[tuple[ShardCache, Schedule]]]  # start -> (cache, schedule) pairs

log = logging.getLogger("kohaku_data.train")


class KdataLoader:
    """`DataLoader(dataset, batch_sampler=sampler, collate_fn=BucketCollate(), **kwargs)` plus
    `set_epoch`, `state_dict` and `load_state_dict` (the sampler's state, counted exactly).

    `sampler`: a BucketBatchSampler, or None for a dataset that brings its own (`KdataMix`,
    `KdataCurriculum`: their `.sampler`). `prefetch`: see the module docstring."""

    def __init__(self, dataset: Any, sampler: Any = None, collate_fn: Any = None, *,
                 prefetch: bool | None = None, **kwargs: Any) -> None:
        from torch.utils.data import DataLoader

        if sampler is None:
            sampler = getattr(dataset, "sampler", None)
            if sampler is None:
                raise ReaderError("KdataLoader needs a sampler: pass BucketBatchSampler(dataset, ...) "
                                  "(a KdataMix or KdataCurriculum brings its own).")
        self.schedules = _shard_schedules(dataset, sampler)
        if prefetch and self.schedules is None:
            raise ReaderError("prefetch=True needs a dataset that reads through a ShardCache "
                              "(KdataDataset(url, cache=ShardCache(...))) with a BucketBatchSampler, or a "
                              "KdataMix / KdataCurriculum with at least one such dataset.")
        self.prefetch = self.schedules is not None and prefetch is not False
        self.prefetcher: Prefetcher | None = None  # the one of the iteration in progress
        self.sampler = sampler
        self.loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn or BucketCollate(), **kwargs)
        self._epoch: int | None = None  # the epoch of the iteration in progress (or last finished)
        self._done = 0  # its global batches received by the loop

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        # Read where the sampler will start before the DataLoader creates its iterator.
        self._epoch, self._done = self.sampler.epoch, self.sampler.start_position()
        batches = iter(self.loader)  # workers are forked here: before the prefetch thread starts
        if self.prefetch:
            schedules = self.schedules(self._done)
            self.prefetcher = Prefetcher.over(schedules, lambda: self._done).start()
        try:
            for batch in batches:
                self._done += 1
                yield batch
        finally:
            self._stop_prefetch()

    def _stop_prefetch(self) -> None:
        prefetcher, self.prefetcher = self.prefetcher, None
        if prefetcher is not None:
            prefetcher.stop()
            if prefetcher.error is not None:  # the workers fetched on their own: slower, not wrong
                log.warning("shard prefetch stopped early: %r", prefetcher.error)

    def state_dict(self) -> dict[str, Any]:
        if self._epoch == self.sampler.epoch:
            return self.sampler.state_dict(batches_done=self._done)
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._epoch = None


def _shard_schedules(dataset: Any, sampler: Any) -> Schedules | None:
    """Where the loader's prefetch schedules come from, or None when no shard is read through a
    ShardCache (nothing to prefetch)."""
    if hasattr(sampler, "shard_caches"):  # a KdataMix / KdataCurriculum: its datasets' caches
        return sampler.shard_schedules if sampler.shard_caches() else None
    cache = getattr(dataset, "shards", None)
    if isinstance(cache, ShardCache) and hasattr(sampler, "shard_schedule"):
        return lambda start: [(cache, sampler.shard_schedule(start))]
    return None
