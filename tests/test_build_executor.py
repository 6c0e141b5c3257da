"""The local executor: results of every task, and a clear error when a worker process dies."""

import os

import pytest

from kohaku_data.assembly.executor import LocalExecutor, WorkerDied


def square(x: int) -> int:
    return x * x


def die_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)  # what the OOM killer or a SIGKILL looks like to the pool
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_every_task_runs_once(workers):
    assert sorted(LocalExecutor(workers).map_unordered(square, range(20))) == [x * x for x in range(20)]


def test_a_dead_worker_is_a_clear_error():
    with pytest.raises(WorkerDied, match="run the same command again to resume"):
        list(LocalExecutor(2).map_unordered(die_on_three, range(10)))
