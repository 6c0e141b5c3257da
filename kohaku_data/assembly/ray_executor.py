"""Tasks as Ray core tasks on a cluster (`pip install '.[ray]'` from a checkout, `--executor ray`).

Ray core, not Ray Data: its webdataset writer stamps times and random names, so its bytes are
not reproducible. The builder's tasks are plain values of fixed membership, so Ray only places
them; the bytes never depend on which node ran what.

- Before any work one probe per alive node (pinned to that node) reports the library versions
  that decide the bytes; any node that differs from this driver is refused with a clear message.
  Every task's result carries them again (a node that joins later is checked too).
- A task whose worker or node dies (node lost, OOM-killed) is retried by Ray elsewhere
  (`max_retries`, system failures only); a task that raises (a bug, a damaged staged file) is
  not retried: its one-sentence error stops the build, the work done so far is kept.
- A task still unfinished `task_timeout` seconds after it was submitted is cancelled (its
  worker killed) and submitted again, up to `hang_retries` times. The builder keeps only about
  two tasks per CPU in flight, so the time a task waits in the queue stays short.
- Tasks are spread over the nodes (SPREAD), not packed onto the head node.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kohaku_data.assembly.executor import (
    Recorded, Session, ToolchainMismatch, WorkerDied, check_toolchain, run_recorded, toolchain_difference,
)
from kohaku_data.errors import KdataError

DEFAULT_TASK_TIMEOUT = 1800.0  # s; an image task is ≤ 64 images (~30 s at the kohaku-xl recipe)
PROBE_TIMEOUT = 120.0  # s for every node to answer the version probe


class RayUnavailable(KdataError):
    """Ray is not installed, or no cluster answers at the address."""


@dataclass
class _Submitted:
    fn: Callable
    task: Any
    since: float
    hangs: int = 0


class RayExecutor:
    """Runs tasks on the Ray cluster at `address` ("auto": `RAY_ADDRESS` or the cluster this
    machine belongs to; or HOST:PORT). An already connected driver (`ray.init` done by the
    caller) is used as it is."""

    def __init__(self, address: str | None = None, *, task_timeout: float | None = None,
                 max_retries: int = 3, hang_retries: int = 2) -> None:
        self.address = address or "auto"
        self.task_timeout = task_timeout or DEFAULT_TASK_TIMEOUT
        self.max_retries, self.hang_retries = max_retries, hang_retries
        self.window = 4
        self.num_gpus = 0.0  # GPUs each task asks of Ray (kdata latents sets 1 on a cluster with GPUs)
        self.nodes = self.cpus = 0
        self.placements: Counter[str] = Counter()  # Ray node id → tasks it finished

    def describe(self) -> str:
        return f"ray: {self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus} CPUs"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        from kohaku_data.assembly.lock import toolchain_versions

        ray = _import_ray()
        connected_here = _connect(ray, self.address)
        try:
            nodes = _worker_nodes(ray)
            self.nodes, self.cpus = len(nodes), int(sum(n["Resources"]["CPU"] for n in nodes))
            self.window = max(2, 2 * self.cpus)
            reference = toolchain_versions()
            check_nodes(ray, nodes, reference)
            run = _RaySession(ray, self, reference)
            try:
                yield run
            finally:
                run.cancel_all()
        finally:
            if connected_here:
                ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "--executor ray needs Ray: pip install -c constraints.txt '.[ray]' in the kohaku-data checkout, "
            "on the driver and on every node"
        ) from None
    return ray


def _connect(ray, address: str) -> bool:
    """Join the cluster; True when this call connected (and so must disconnect)."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at --ray-address {address} ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
            "start one (`ray start --head` on one machine, `ray start --address HEAD:6379` on the others) "
            "or pass the head's HOST:PORT"
        ) from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT that does not answer fails here at once (Ray itself would retry for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto" or a ray:// client address: Ray finds and reports it itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at --ray-address {address} ({exc.strerror or exc}); start one "
            "(`ray start --head` on one machine, `ray start --address HEAD:6379` on the others) or pass "
            "the head's HOST:PORT (`ray status` prints it)"
        ) from None


def _worker_nodes(ray) -> list[dict]:
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        raise RayUnavailable("the Ray cluster has no alive node with a CPU; add a node (`ray start --address …`)")
    return nodes


def check_nodes(ray, nodes: list[dict], reference: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every node's byte-deciding library versions (one probe pinned to each node); refuse at
    once, before any work, when one differs from this driver's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(run_recorded)
    refs = {
        n["NodeID"]: probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
        .remote(_probe, None)
        for n in nodes
    }
    try:
        records: list[Recorded] = ray.get(list(refs.values()), timeout=PROBE_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        raise RayUnavailable(f"not every Ray node answered the version probe within {PROBE_TIMEOUT:.0f} s; "
                             "check the cluster (`ray status`) and rerun") from None
    except ray.exceptions.RayError as exc:
        raise RayUnavailable(f"the version probe failed on a Ray node ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); check that kohaku-data and its "
                             "libraries are installed alike on every node (pip install -c constraints.txt)") from None
    found = {}
    for node, record in zip(nodes, records):
        name = f"{node['NodeManagerAddress']} (node {node['NodeID'][:12]})"
        if record.toolchain != reference:
            raise ToolchainMismatch(toolchain_difference(name, record.toolchain, reference)
                                    + "; no work was started")
        found[name] = record.toolchain
    return found


def _probe(_: None) -> None:
    """Does nothing: `run_recorded` around it reports the node's versions."""
    return None


def _read_token(path: str) -> str | None:
    """What a node reads at `path` (a shared folder's file or a staging URL); None if nothing."""
    from kohaku_data import storage
    from kohaku_data.errors import KdataError

    try:
        return storage.read_bytes(path).decode()
    except (OSError, KdataError, UnicodeDecodeError):
        return None


class _RaySession:
    def __init__(self, ray, executor: RayExecutor, reference: dict[str, str]) -> None:
        self._ray, self._ex, self._reference = ray, executor, reference
        self._remote = ray.remote(run_recorded).options(
            num_cpus=1, num_gpus=executor.num_gpus, max_retries=executor.max_retries, retry_exceptions=False, scheduling_strategy="SPREAD")
        self._pending: dict[Any, _Submitted] = {}
        self._poll = max(0.05, min(5.0, executor.task_timeout / 4))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable, task: Any) -> None:
        self._start(_Submitted(fn, task, time.monotonic()))

    def _start(self, sub: _Submitted) -> None:
        self._pending[self._remote.remote(sub.fn, sub.task)] = sub

    def wait(self) -> list[Any]:
        ray = self._ray
        while True:
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=self._poll)
            if ready:
                ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
                return [self._take(ref) for ref in ready]
            self._resubmit_hung()

    def _take(self, ref) -> Any:
        ray = self._ray
        self._pending.pop(ref)
        try:
            record: Recorded = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
            if isinstance(cause, (KdataError, OSError)):  # one-sentence errors; a full disk on a node
                raise cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError) as exc:
            raise WorkerDied(
                f"a Ray task failed {self._ex.max_retries + 1} times on dying workers or nodes "
                f"({type(exc).__name__}); the work finished so far is kept: check the cluster "
                "(`ray status`, memory per node) and run the same command again to resume"
            ) from None
        check_toolchain(record, self._reference)
        self._ex.placements[record.where] += 1
        return record.result

    def _resubmit_hung(self) -> None:
        now = time.monotonic()
        for ref, sub in list(self._pending.items()):
            if now - sub.since <= self._ex.task_timeout:
                continue
            self._ray.cancel(ref, force=True)
            del self._pending[ref]
            if sub.hangs >= self._ex.hang_retries:
                raise KdataError(
                    f"a Ray task hung {sub.hangs + 1} times (no result within {self._ex.task_timeout:.0f} s each); "
                    "the work finished so far is kept: check the nodes, raise ray_task_timeout if tasks are "
                    "just slow, and run the same command again to resume"
                )
            self._start(_Submitted(sub.fn, sub.task, now, sub.hangs + 1))

    def check_visible(self, folder: str) -> None:
        """One probe pinned to each node reads a token this driver just wrote into `folder` (a
        shared folder, or a URL: then every node needs the store's credentials and endpoint)."""
        import secrets

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from kohaku_data import storage

        token = secrets.token_hex(8)
        path = str(storage.join(folder, f".visible-{token}"))
        storage.commit_bytes(path, token.encode(), durable=False)
        try:
            probe = self._ray.remote(_read_token)
            nodes = _worker_nodes(self._ray)
            seen = self._ray.get([
                probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(path)) for n in nodes], timeout=PROBE_TIMEOUT)
        finally:
            storage.remove(path)
        blind = [n["NodeManagerAddress"] for n, got in zip(nodes, seen) if got != token]
        if blind and storage.is_remote(folder):
            raise RayUnavailable(
                f"Ray node(s) {', '.join(sorted(set(blind)))} cannot read {folder}: with --executor ray every node "
                "needs the store's credentials and endpoint (AWS_* variables or files, FSSPEC_S3_ENDPOINT_URL) "
                "in the environment its Ray workers start with; no work was started"
            )
        if blind:
            raise RayUnavailable(
                f"Ray node(s) {', '.join(sorted(set(blind)))} do not see {folder}: with --executor ray the output "
                "folder (its .staging/) must be on a file system every node mounts at the same path (NFS, a "
                "cluster file system) — or be a URL such as s3://bucket/datasets/x/; no work was started"
            )

    def cancel_all(self) -> None:
        for ref in list(self._pending):
            self._ray.cancel(ref, force=True)
        self._pending.clear()
