"""`make_executor(kind, ...)`: the executor a command asked for, by name.

Its own module so that the protocol and the local pool (executor.py) know nothing of Ray:
ray_executor.py builds on executor.py, and this choice sits above both, so neither imports the
other back. Ray is imported only when chosen (an optional extra).
"""

from __future__ import annotations

from typing import Literal

from kohaku_data.assembly.executor import Executor, LocalExecutor
from kohaku_data.errors import KdataError

ExecutorKind = Literal["local", "ray"]


def make_executor(kind: ExecutorKind = "local", *, workers: int = 1, ray_address: str | None = None,
                  task_timeout: float | None = None) -> Executor:
    """The executor a command asked for; Ray is imported only when chosen (optional extra)."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        from kohaku_data.assembly.ray_executor import RayExecutor

        return RayExecutor(ray_address, task_timeout=task_timeout)
    raise KdataError(f"unknown executor {kind!r}; use local or ray")
