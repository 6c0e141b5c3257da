"""Several builds in one training run: `KdataMix` (weighted mixture) and `KdataCurriculum`
(mixtures that take over at given steps), with the same exact resume as `BucketBatchSampler`.

    mix = KdataMix([("datasets/a", 3.0), (ds_b, 1.0)], batch_size=4, world_size=world, rank=rank,
                   seed=0, decode="torch")
    loader = KdataLoader(mix, num_workers=4)          # the sampler is `mix.sampler`

How a mix plans. Every dataset has its own `BucketBatchSampler` plan (same batch size, seed,
remainder, window) and an endless *stream* of global batches: its epoch 0's batches, then its
epoch 1's, and so on. The mix lays global steps on one endless axis, `steps_per_epoch` to an
epoch (default: the batches of all datasets' epoch 0 together). Step b of mix epoch e takes the
next batch of dataset d, where d is drawn with probability weight / sum of weights by a PCG64
generator seeded by (seed, e): its b-th draw. So every global batch is one dataset and one
bucket, a dataset's share of batches is its weight's (its size does not matter: a small
dataset with a large weight cycles through its epochs faster), and the plan is a pure function
of (the datasets' manifests, weights, seed, batch_size x world_size, remainder, window,
steps_per_epoch): where dataset d stands at the start of epoch e is the count of its draws in
epochs 0..e-1, which are replayed (draws only, no plans) when needed.

A mix is also the map-style dataset the loader reads: index g is sample g - offset_d of dataset
d (datasets laid end to end, in the order given); each item gains `dataset_index` (d). Pad and
epoch flags of the datasets' plans travel with the indices (captions replay per dataset epoch).

A curriculum is a list of (first step, mix): from its first step on, a stage's mix gives the
batches, starting at its own step 0 (so the new datasets start at their first batch), until the
next stage begins. It keeps the global step axis (`steps_per_epoch`, default the first mix's),
so set_epoch / state_dict / load_state_dict work as for one mix and a resume replays across a
switch exactly.

Prefetching. A dataset that reads through a `ShardCache` gets its shards fetched ahead like a
lone dataset (KdataLoader runs one `Prefetcher` over all of them): `sampler.shard_schedules(start)`
gives, per cache, (shard, first step, last step) on the loader's axis (steps of the current
epoch) from the plan itself (each step's dataset, its epoch and its global batch), across the
datasets' epochs and a curriculum's switches; a shard is dropped after the last step that reads
it. One ShardCache serves one build (it fetches from its own location), so a dataset whose cache
was opened on another location is refused: builds of one recipe share shard names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from kohaku_data.train.errors import SamplerError
from kohaku_data.train.plan import EpochPlan, Remainder, _rng
from kohaku_data.train.sampler import BucketBatchSampler, EpochIndex, PadIndex
from kohaku_data.train.shard_cache import Schedule, ShardCache, cache_of
from kohaku_data.train.window import shard_schedule

MIX_STATE_VERSION = 1
_MIX = 4  # SeedSequence purpose of the dataset draws (plan.py uses 0 and 1, window.py 2 and 3)
_PLANS_KEPT = 3  # plans cached per dataset: a mix epoch walks a dataset's epochs in order


class _Stream:
    """One dataset's endless run of global batches: its epochs' plans, one after another."""

    def __init__(self, sampler: BucketBatchSampler) -> None:
        self.sampler = sampler
        self.starts = [0]  # stream position of each epoch's first batch; starts[-1]: the end so far
        self._plans: OrderedDict[int, EpochPlan] = OrderedDict()

    def plan(self, epoch: int) -> EpochPlan:
        plan = self._plans.get(epoch)
        if plan is None:
            plan = self._plans[epoch] = self.sampler.plan(epoch)
            while len(self._plans) > _PLANS_KEPT:
                self._plans.popitem(last=False)
        self._plans.move_to_end(epoch)
        return plan

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(its epoch, batch within that epoch) of each stream position."""
        if positions.size:
            empty = 0
            while self.starts[-1] <= int(positions.max()):
                n = self.plan(len(self.starts) - 1).report.batches
                self.starts.append(self.starts[-1] + n)
                empty = 0 if n else empty + 1
                if empty > self.sampler.global_batch + 2:
                    raise SamplerError(
                        f"a dataset of the mix gives no global batch of {self.sampler.global_batch} in "
                        f"{empty} epochs (too few samples for remainder={self.sampler.remainder!r}): "
                        f"drop it from the mix, or use a smaller batch or remainder='carry'.")
        starts = np.asarray(self.starts, dtype=np.int64)
        epochs = np.searchsorted(starts, positions, side="right") - 1
        return epochs, positions - starts[epochs]

    def shard_schedule(self, epochs: np.ndarray, rows: np.ndarray, positions: np.ndarray) -> Schedule:
        """(shard, first position, last position) of global batches `rows` of its `epochs`, read at
        `positions` (ascending), in first-use order (window.shard_schedule over the whole batch:
        every rank of a node shares the cache)."""
        batches = np.empty((rows.size, self.sampler.global_batch), np.int64)
        for epoch in np.unique(epochs).tolist():  # ascending: the plans kept are the ones walked
            at = epochs == epoch
            batches[at] = self.plan(epoch).batches[rows[at]]
        names = self.sampler.shard_names
        return [(names[c], int(positions[first]), int(positions[last]))
                for c, first, last in shard_schedule(batches, self.sampler.shard_of)]

    def __getstate__(self) -> dict[str, Any]:  # plans are recomputed, not pickled to workers
        return {"sampler": self.sampler, "starts": [0], "_plans": OrderedDict()}


class StepSampler:
    """Epochs of `steps_per_epoch` global steps on an endless step axis, with the resume
    bookkeeping of `BucketBatchSampler` (same interface: KdataLoader, StatefulDataLoader).
    Subclasses give `batch(step)` (this rank's indices) and `_signature()` (what the plan
    depends on: a state from another plan is refused)."""

    kind = ""

    def __init__(self, batch_size: int, world_size: int, rank: int, steps_per_epoch: int) -> None:
        self.batch_size, self.world_size, self.rank = int(batch_size), int(world_size), int(rank)
        self.global_batch = self.batch_size * self.world_size
        if int(steps_per_epoch) < 1:
            raise SamplerError(f"steps_per_epoch={steps_per_epoch}: pass a positive number of steps.")
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch, self._next, self._resume = 0, 0, False

    def batch(self, step: int) -> list[int]:
        raise NotImplementedError

    def _signature(self) -> dict[str, Any]:
        raise NotImplementedError

    def shard_caches(self) -> list[ShardCache]:
        """The ShardCaches its datasets read through (none: nothing to prefetch)."""
        raise NotImplementedError

    def shard_uses(self, steps: np.ndarray, positions: np.ndarray) -> list[tuple[ShardCache, Schedule]]:
        """(cache, schedule) of each dataset with a cache, for global `steps` read at `positions`."""
        raise NotImplementedError

    def shard_schedules(self, start: int | None = None) -> list[tuple[ShardCache, Schedule]]:
        """What a Prefetcher fetches for the current epoch from `start` (default: where the next
        iteration starts): (cache, [(shard, first batch, last batch)]) on the epoch's batch axis."""
        start = self.start_position() if start is None else int(start)
        positions = np.arange(start, self.steps_per_epoch, dtype=np.int64)
        return self.shard_uses(self.epoch * self.steps_per_epoch + positions, positions)

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self._next, self._resume = epoch, 0, False

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        start = self._next = self.start_position()
        self._resume = False
        base = self.epoch * self.steps_per_epoch
        for b in range(start, self.steps_per_epoch):
            batch = self.batch(base + b)
            self._next = b + 1
            yield batch

    def start_position(self) -> int:
        return self._next if self._resume else 0

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        return {"version": MIX_STATE_VERSION, "kind": self.kind, "epoch": self.epoch,
                "batches_done": self._next if batches_done is None else int(batches_done),
                "global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
                **self._signature()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expect = {"version": MIX_STATE_VERSION, "kind": self.kind, "global_batch": self.global_batch,
                  "steps_per_epoch": self.steps_per_epoch, **self._signature()}
        for name, value in expect.items():
            if state.get(name) != value:
                raise SamplerError(
                    f"the saved {self.kind or 'sampler'} state has {name}={state.get(name)!r} but this run has "
                    f"{value!r}: resume with the same datasets, weights, stages, seed, remainder, window, "
                    f"steps_per_epoch and batch_size x world_size.")
        self.epoch, self._next, self._resume = int(state["epoch"]), int(state["batches_done"]), True


class MixSampler(StepSampler):
    """The batch sampler of a `KdataMix` (built by it: `mix.sampler`)."""

    kind = "mix"

    def __init__(self, samplers: list[BucketBatchSampler], weights: np.ndarray, offsets: np.ndarray,
                 seed: int, steps_per_epoch: int | None, caches: Sequence[ShardCache | None] | None = None) -> None:
        first = samplers[0]
        self.streams = [_Stream(s) for s in samplers]
        # each dataset's ShardCache (None: read as it is); only prefetching uses them
        self.caches = list(caches) if caches is not None else [None] * len(samplers)
        self.weights, self.offsets, self.seed = weights, offsets, int(seed)
        positive = np.flatnonzero(weights > 0)
        self._cum = np.cumsum(weights) / weights.sum()
        self._cum[positive[-1]:] = 1.0  # rounding never lets a draw past the last weighted dataset
        self._captions = [getattr(s, "epoch_in_index", False) for s in samplers]
        if steps_per_epoch is None:
            steps_per_epoch = max(1, sum(s.plan(0).report.batches for s in self.streams))
        super().__init__(first.batch_size, first.world_size, first.rank, steps_per_epoch)
        self._counts: list[np.ndarray] = []  # draws of each dataset in epochs 0, 1, ...
        self._table: tuple[int, np.ndarray] | None = None

    def _signature(self) -> dict[str, Any]:
        s = self.streams[0].sampler
        return {"seed": self.seed, "remainder": s.remainder, "window": s.window,
                "weights": [float(w) for w in self.weights],
                "samples": [int(st.sampler.layout.codes.size) for st in self.streams],
                "sample_weights": [st.sampler.weighted for st in self.streams]}

    # -- the plan (pure) -------------------------------------------------------------------------
    def draws(self, epoch: int) -> np.ndarray:
        """The dataset of each step of `epoch` (int64, steps_per_epoch)."""
        u = _rng(self.seed, int(epoch), _MIX).random(self.steps_per_epoch)
        return np.searchsorted(self._cum, u, side="right").astype(np.int64)

    def steps(self, epoch: int) -> np.ndarray:
        """(dataset, its epoch, its global batch) of each step of `epoch`: int64 (steps_per_epoch, 3)."""
        epoch = int(epoch)
        if self._table is not None and self._table[0] == epoch:
            return self._table[1]
        while len(self._counts) < epoch:
            self._counts.append(np.bincount(self.draws(len(self._counts)), minlength=len(self.streams)))
        before = (np.sum(self._counts[:epoch], axis=0) if epoch else np.zeros(len(self.streams), np.int64))
        draws = self.draws(epoch)
        table = np.zeros((self.steps_per_epoch, 3), np.int64)
        table[:, 0] = draws
        for d, stream in enumerate(self.streams):
            at = np.flatnonzero(draws == d)
            ep, b = stream.locate(int(before[d]) + np.arange(at.size, dtype=np.int64))
            table[at, 1], table[at, 2] = ep, b
        self._table = (epoch, table)
        return table

    def rows(self, steps: np.ndarray) -> np.ndarray:
        """(dataset, its epoch, its global batch) of each of the global `steps`: int64 (n, 3)."""
        epochs, at = np.divmod(np.asarray(steps, np.int64), self.steps_per_epoch)
        table = np.empty((epochs.size, 3), np.int64)
        for epoch in np.unique(epochs).tolist():
            table[epochs == epoch] = self.steps(epoch)[at[epochs == epoch]]
        return table

    def shard_caches(self) -> list[ShardCache]:
        return _distinct(self.caches)

    def shard_uses(self, steps: np.ndarray, positions: np.ndarray) -> list[tuple[ShardCache, Schedule]]:
        table = self.rows(steps)
        uses = []
        for d, cache in enumerate(self.caches):
            at = np.flatnonzero(table[:, 0] == d)
            if cache is not None and at.size:
                uses.append((cache, self.streams[d].shard_schedule(table[at, 1], table[at, 2], positions[at])))
        return uses

    def batch(self, step: int) -> list[int]:
        epoch, b = divmod(int(step), self.steps_per_epoch)
        d, ep, row = (int(v) for v in self.steps(epoch)[b])
        plan = self.streams[d].plan(ep)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        values = (plan.batches[row, lo:hi] + self.offsets[d]).tolist()
        pads = plan.padded[row, lo:hi].tolist()
        if self._captions[d]:
            return [EpochIndex(v, ep, p) for v, p in zip(values, pads)]
        return [PadIndex(v) if p else v for v, p in zip(values, pads)]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_counts": [], "_table": None}


def shifted(index: int, delta: int) -> int:
    """`index + delta`, keeping a PadIndex / EpochIndex flag."""
    value = int(index) + int(delta)
    if isinstance(index, EpochIndex):
        return EpochIndex(value, index.epoch, index.padded)
    if isinstance(index, PadIndex):
        return PadIndex(value)
    return value


class KdataMix:
    """A weighted mixture of builds: the map-style dataset of all of them (laid end to end) and
    its batch sampler `.sampler` (a `MixSampler`).

    `parts`: (dataset, weight) pairs; a dataset is a `KdataDataset`, or a folder / fsspec URL
    opened as `KdataDataset(location, **dataset_kwargs)` (or a manifest frame, for planning
    only). `sample_weights`: a manifest column that weights samples within each dataset (as
    BucketBatchSampler's `weights`). The rest are BucketBatchSampler's, used for every dataset.
    """

    def __init__(self, parts: Sequence[tuple[Any, float]], batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, remainder: Remainder = "carry", window: int | None = None,
                 sample_weights: str | None = None, steps_per_epoch: int | None = None,
                 **dataset_kwargs: Any) -> None:
        if not parts:
            raise SamplerError("KdataMix needs at least one (dataset, weight) pair.")
        weights = np.asarray([float(w) for _, w in parts], dtype=np.float64)
        if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise SamplerError(f"mix weights {weights.tolist()}: need finite weights >= 0, at least one > 0.")
        self.datasets = [_open(ds, dataset_kwargs) for ds, _ in parts]
        sizes = np.asarray([len(ds) for ds in self.datasets], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._ends = np.cumsum(sizes)
        samplers = [BucketBatchSampler(ds, batch_size, world_size, rank, seed, remainder, sample_weights, window)
                    for ds in self.datasets]
        caches = [cache_of(ds) for ds in self.datasets]  # refuses a cache of another build
        self.sampler = MixSampler(samplers, weights, self.offsets, seed, steps_per_epoch, caches)

    @property
    def weights(self) -> np.ndarray:
        return self.sampler.weights

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset, its sample) of mix index `index` (flags kept on the sample index)."""
        d = int(np.searchsorted(self._ends, int(index), side="right"))
        if not 0 <= int(index) < len(self) or d >= len(self.datasets):
            raise IndexError(f"sample {int(index)} is out of range for a mix of {len(self)} samples")
        return d, shifted(index, -int(self.offsets[d]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        d, local = self.locate(index)
        item = self.datasets[d][local]
        item["dataset_index"] = d
        return item


class CurriculumSampler(StepSampler):
    """The batch sampler of a `KdataCurriculum` (built by it: `curriculum.sampler`)."""

    kind = "curriculum"

    def __init__(self, starts: list[int], mixes: list[KdataMix], offsets: np.ndarray, steps_per_epoch: int) -> None:
        first = mixes[0].sampler
        self.starts, self.mixes, self.offsets = starts, mixes, offsets
        super().__init__(first.batch_size, first.world_size, first.rank, steps_per_epoch)

    def _signature(self) -> dict[str, Any]:
        return {"stages": [[start, mix.sampler.steps_per_epoch, mix.sampler._signature()]
                           for start, mix in zip(self.starts, self.mixes)]}

    def stage(self, step: int) -> int:
        """The stage that gives global step `step`."""
        return int(np.searchsorted(self.starts, int(step), side="right")) - 1

    def shard_caches(self) -> list[ShardCache]:
        return _distinct([c for mix in self.mixes for c in mix.sampler.shard_caches()])

    def shard_uses(self, steps: np.ndarray, positions: np.ndarray) -> list[tuple[ShardCache, Schedule]]:
        # each stage's steps, on its mix's own axis (its step 0 is the stage's first step)
        stages = np.searchsorted(self.starts, steps, side="right") - 1
        uses = []
        for s in np.unique(stages).tolist():
            at = stages == s
            uses += self.mixes[s].sampler.shard_uses(steps[at] - self.starts[s], positions[at])
        return uses

    def batch(self, step: int) -> list[int]:
        s = self.stage(step)
        local = self.mixes[s].sampler.batch(int(step) - self.starts[s])
        return [shifted(v, int(self.offsets[s])) for v in local]


class KdataCurriculum:
    """Mixtures that take over at given global steps: `[(0, mix_a), (N, mix_b), ...]`; the dataset
    of all stages (laid end to end; items gain `stage`) and its batch sampler `.sampler`.

    Every mix needs the same batch_size, world_size and rank. `steps_per_epoch`: the epoch of the
    curriculum's step axis (default: the first mix's)."""

    def __init__(self, stages: Sequence[tuple[int, KdataMix]], steps_per_epoch: int | None = None) -> None:
        starts = [int(s) for s, _ in stages]
        mixes = [m for _, m in stages]
        if not stages or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise SamplerError(f"curriculum stages start at steps {starts}: the first must start at 0 "
                               f"and each later one after the one before.")
        for mix in mixes:
            if not isinstance(mix, KdataMix):
                raise SamplerError(f"a curriculum stage is a KdataMix, not {type(mix).__name__}: wrap a single "
                                   f"dataset as KdataMix([(dataset, 1.0)], batch_size=...).")
        config = {(m.sampler.batch_size, m.sampler.world_size, m.sampler.rank) for m in mixes}
        if len(config) > 1:
            raise SamplerError(f"curriculum stages differ in (batch_size, world_size, rank): {sorted(config)}; "
                               f"give every mix the same.")
        self.mixes = mixes
        sizes = np.asarray([len(m) for m in mixes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._ends = np.cumsum(sizes)
        steps = mixes[0].sampler.steps_per_epoch if steps_per_epoch is None else steps_per_epoch
        self.sampler = CurriculumSampler(starts, mixes, self.offsets, steps)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = int(np.searchsorted(self._ends, int(index), side="right"))
        if not 0 <= int(index) < len(self) or s >= len(self.mixes):
            raise IndexError(f"sample {int(index)} is out of range for a curriculum of {len(self)} samples")
        item = self.mixes[s][shifted(index, -int(self.offsets[s]))]
        item["stage"] = s
        return item


def _distinct(caches: Sequence[ShardCache | None]) -> list[ShardCache]:
    """The caches, each object once, in order (datasets may share one)."""
    seen: dict[int, ShardCache] = {}
    for cache in caches:
        if cache is not None:
            seen.setdefault(id(cache), cache)
    return list(seen.values())


def _open(dataset: Any, kwargs: dict[str, Any]) -> Any:
    if isinstance(dataset, (str,)) or hasattr(dataset, "__fspath__"):
        from kohaku_data.train.dataset import KdataDataset

        return KdataDataset(str(dataset), **kwargs)
    return dataset
