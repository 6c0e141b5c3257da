"""`KdataLoader`: a torch DataLoader over one bucket per batch, with a state that counts the
batches the training loop has *received*.

A DataLoader with workers asks its batch sampler for batches ahead of the loop (prefetching),
so the sampler's own count runs ahead of training; this wrapper counts what it hands over, so
`state_dict()` taken after step k resumes at step k+1 for any `num_workers`. (torchdata's
`StatefulDataLoader` does the same bookkeeping itself; pass it the sampler directly.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kohaku_data.train.collate import BucketCollate
from kohaku_data.train.sampler import BucketBatchSampler


class KdataLoader:
    """`DataLoader(dataset, batch_sampler=sampler, collate_fn=BucketCollate(), **kwargs)` plus
    `set_epoch`, `state_dict` and `load_state_dict` (the sampler's state, counted exactly)."""

    def __init__(self, dataset: Any, sampler: BucketBatchSampler, collate_fn: Any = None, **kwargs: Any) -> None:
        from torch.utils.data import DataLoader

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
        for batch in self.loader:
            self._done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if self._epoch == self.sampler.epoch:
            return self.sampler.state_dict(batches_done=self._done)
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._epoch = None
