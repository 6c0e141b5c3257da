"""Helpers of the Ray tests: loopback-only node settings, the environment of driver
subprocesses, and the TCP sockets a process tree listens on (read from /proc)."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1024 * 1024


def node_args(*, head: bool = False, **extra) -> dict:
    """One CPU, a small object store, loopback only; failures noticed within a few seconds."""
    args = {"num_cpus": 1, "object_store_memory": 80 * MiB, "node_ip_address": "127.0.0.1", **extra}
    if head:
        args.update(include_dashboard=False, _system_config={
            "health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 4,
        })
    return args


def ray_env() -> dict[str, str]:
    """The environment of a `kdata build --executor ray` subprocess: loopback, no usage stats."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def tree_pids(root: int) -> set[int]:
    """`root` and every process descended from it (the cluster's GCS, raylets, workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket (IPv4 and IPv6) that one of `pids` holds."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host, port = local.split(":")
                found.add((_address(host, width), int(port, 16)))
    return found


def _address(hexed: str, width: int) -> str:
    if width == 8:
        return ".".join(str(int(hexed[i:i + 2], 16)) for i in range(6, -1, -2))
    import ipaddress

    words = [hexed[i:i + 8] for i in range(0, 32, 8)]
    raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


# -- tasks for the executor tests (pickled by value: Ray workers do not see tests/) -------------
def hang_first_time(arg: tuple[str, int]) -> int:
    """Task `1` hangs the first time it runs (as a stuck read would), then returns at once."""
    import time

    folder, value = arg
    marker = Path(folder) / f"hung-{value}"
    if value == 1 and not marker.exists():
        marker.touch()
        time.sleep(600)
    return value


def die_first_time(arg: tuple[str, int]) -> int:
    """The worker process dies the first time (what the OOM killer or a lost node looks like)."""
    folder, value = arg
    marker = Path(folder) / f"died-{value}"
    if not marker.exists():
        marker.touch()
        os._exit(9)
    return value


def fail_always(arg: tuple[str, int]) -> int:
    """Raises every time, counting its runs: a task's own error must not be retried."""
    from kohaku_data.errors import KdataError

    folder, value = arg
    with open(Path(folder) / "runs", "a") as f:
        f.write(f"{value}\n")
    raise KdataError(f"task {value} refuses")
