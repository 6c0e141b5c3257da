"""The driver loop of a build: image tasks → shard layout → shard tasks → parts, pipelined.

The driver does only what must be central: it submits image tasks of fixed membership (from
the plan), lays the finished prefix of the plan out into shards (captions in bulk, sizes from
the task results: `packing.ShardLayout`), submits a shard task per closed shard and records
each written shard's part (manifest rows, rejects, `ShardInfo`) — in any order, since a resumed
build keeps only the gap-free run of parts 0, 1, … Image bytes stay on the workers: image
tasks stage them (one object per task, beside the output), shard tasks read them back by byte
range where they run; a task's object is removed once all of its items are in written shards.

At most `executor.window` tasks are in flight, shard tasks first (they free staging space and
finish the dataset sooner), and image tasks run at most `_lookahead()` tasks ahead of the
layout, so the driver's memory stays flat however long the plan is.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kohaku_data import storage
from kohaku_data.assembly.executor import Executor, Session
from kohaku_data.assembly.manifest import Parts, manifest_row
from kohaku_data.assembly.packing import LaidOut, ShardDone, ShardLayout, write_shard
from kohaku_data.assembly.plan import BuildPlan, PlanItem
from kohaku_data.assembly.shards import ShardInfo
from kohaku_data.assembly.tasks import ImageTask, StagedInfo, TaskResult, run_image_task
from kohaku_data.config import ImageConfig
from kohaku_data.progress import progress_bar

PACK_BATCH = 1024  # plan items captioned per bulk call while laying shards out
_TASK_MAX, _TASKS_PER_PLAN = 64, 256


def task_size(plan_items: int) -> int:
    """Items per image task: a function of the plan alone (not of workers or nodes), so task
    membership is fixed by the plan. ~256 tasks keep a small build's workers busy; 64 items
    bound a task's time (~30 s at the kohaku-xl recipe) and what a lost task costs."""
    return max(1, min(_TASK_MAX, -(-plan_items // _TASKS_PER_PLAN)))


@dataclass(frozen=True)
class ImageTasks:
    """The plan cut every `task_size(len(plan))` rows into image tasks; the rows before `start`
    (already in committed shards) left out. Tasks are made as they are pulled, so the driver
    holds `PlanItem` objects only for the tasks in flight."""

    plan: BuildPlan
    start: int
    image: ImageConfig
    check_md5: bool
    staging: storage.Target

    @property
    def size(self) -> int:
        return task_size(len(self.plan))

    @property
    def items(self) -> int:
        return len(self.plan) - self.start

    def __len__(self) -> int:
        first = self.start // self.size
        return max(0, -(-len(self.plan) // self.size) - first)

    def __iter__(self) -> Iterator[ImageTask]:
        size = self.size
        for index in range(len(self)):
            chunk = self.start // size + index
            items = self.plan.slice(max(self.start, chunk * size), (chunk + 1) * size)
            yield ImageTask(index, items, self.image, self.check_md5, str(self.staging))


@dataclass
class Pipeline:
    executor: Executor
    layout: ShardLayout | None  # None once every plan item is placed
    parts: Parts
    staging: storage.Target
    captions: Callable[[list[int]], dict[int, dict[str, Any]]]  # post ids → caption rows
    progress: bool = False
    alive: Callable[[], None] = lambda: None  # raises when the build must stop (its lease is lost)
    processed: int = 0  # images run through the image stage now
    reused: int = 0  # images whose staged result was reused
    shards: dict[int, ShardInfo] = field(default_factory=dict)
    tail: list[dict] = field(default_factory=list)  # rejects after the last sample
    # Task objects by the plan items laid out but not yet in a written shard: an object goes
    # once all of its items are in written shards.
    owner: dict[int, str] = field(default_factory=dict)  # post id → its task object
    unwritten: Counter[str] = field(default_factory=Counter)  # task object → items not yet written

    def run(self, tasks: ImageTasks) -> None:
        queue: deque[LaidOut] = deque()
        waiting: dict[int, LaidOut] = {}  # shard index → laid out, being written
        submitted: dict[int, ImageTask] = {}  # image task index → task, until laid out
        ready: dict[int, TaskResult] = {}
        source, next_task, batch = iter(tasks), 0, []
        if not len(tasks):
            self._finish_layout(queue)
        with self.executor.session() as run, progress_bar(f"build ({self.executor.describe()})", tasks.items,
                                                          self.progress) as bar:
            run.check_visible(str(self.staging))
            while True:
                self.alive()
                self._fill(run, source, queue, waiting, submitted)
                if run.in_flight == 0:
                    return
                for result in run.wait():
                    if isinstance(result, ShardDone):
                        self._commit(waiting.pop(result.index), result)
                        continue
                    self.processed += result.done
                    self.reused += result.reused
                    bar.advance(result.done + result.reused)
                    ready[result.index] = result
                    while next_task in ready:  # lay out the finished prefix, in plan order
                        batch.extend(self._own(submitted.pop(next_task), ready.pop(next_task)))
                        next_task += 1
                    if len(batch) >= PACK_BATCH or (next_task == len(tasks) and batch):
                        self._lay_out(batch, queue)
                        batch = []
                    if next_task == len(tasks):
                        self._finish_layout(queue)  # once: every plan item is placed

    def _fill(self, run: Session, source: Iterator[ImageTask], queue: deque[LaidOut], waiting: dict[int, LaidOut],
              submitted: dict[int, ImageTask]) -> None:
        while run.in_flight < self.executor.window:
            if queue:
                laid = queue.popleft()
                waiting[laid.job.index] = laid
                run.submit(write_shard, laid.job)
            elif len(submitted) < self._lookahead() and (task := next(source, None)) is not None:
                submitted[task.index] = task
                run.submit(run_image_task, task)
            else:
                return

    def _lookahead(self) -> int:
        """Image tasks submitted but not laid out yet: bounded, so one slow (or hung) early task
        cannot make the driver hold the results — and staging hold the images — of everything after it."""
        return max(64, 16 * self.executor.window)

    def _own(self, task: ImageTask, result: TaskResult) -> list[tuple[PlanItem, StagedInfo]]:
        for item in task.items:
            self.owner[item.key] = result.path
        self.unwritten[result.path] += len(task.items)
        return list(zip(task.items, result.items))

    def _lay_out(self, batch: list[tuple[PlanItem, StagedInfo]], queue: deque[LaidOut]) -> None:
        captions = self.captions([item.key for item, staged in batch if staged.ok])
        for item, staged in batch:
            closed = self.layout.add(item, staged, captions.get(item.key))
            if closed is not None:
                queue.append(closed)

    def _finish_layout(self, queue: deque[LaidOut]) -> None:
        if self.layout is None:
            return
        closed, self.tail = self.layout.finish()
        if closed is not None:
            queue.append(closed)
        self.layout = None

    def _commit(self, laid: LaidOut, done: ShardDone) -> None:
        rows = [manifest_row(staged, caption, done.info.url, placement)
                for (staged, caption), placement in zip(laid.samples, done.placements)]
        docs = [data.decode() for sample in laid.job.samples for name, data in sample if name.endswith(".json")]
        self.parts.commit(laid.job.index, done.info, laid.last_key, rows, laid.rejects, docs)
        for key in laid.keys:  # the shard is final: its staged results are no longer needed
            path = self.owner.pop(key)
            self.unwritten[path] -= 1
            if self.unwritten[path] == 0:
                del self.unwritten[path]
                storage.remove(path)
        self.shards[laid.job.index] = done.info
