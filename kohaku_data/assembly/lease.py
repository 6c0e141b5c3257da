"""The one-driver lease of a build into object storage: `OUT/.staging/driver.lock`.

Object stores have no locks, and the driver of a build may run on any machine, so two drivers on
one `s3://` output are kept apart by a lease object, not by a local file lock:

- Taking the lease is a create-only write (`If-None-Match: *` on S3) of a small JSON record: a
  random driver id, where the driver runs (host, boot id, pid namespace, pid and the process's
  start time) and `expires`, a wall-clock time `ttl` seconds ahead. Of two drivers starting at
  once exactly one write succeeds; the other reads the record and refuses in one sentence.
- While the build runs, a heartbeat thread renews `expires` every `ttl / 4` seconds (read the
  record, check that it is still ours, overwrite it). A driver that finds the lease taken from
  it (it stalled past `expires`: a suspended laptop, a long GC pause) stops at its next `check()`
  instead of writing on.
- The lease is released (removed, if still ours) when the build ends, finished or failed.
- A driver killed outright (SIGKILL, a lost machine) leaves its record behind, and that must
  not block a rerun forever. A record is *stale* once its `expires` has passed — then any
  machine may take over — or at once when it names this very machine (same host, boot id and
  pid namespace) and its process is gone (no such pid, a zombie, or a pid reused by a process
  started at another time). So the common case, rerunning on the machine where the driver was
  killed, waits for nothing; a rerun from another machine waits at most `ttl` (2 minutes) after
  the dead driver's last heartbeat, and the refusal says until when.
- Taking over a stale record is create-only too: first `driver.lock.<its id>.takeover`, which
  only one driver can ever create, then the stale record is removed and the lease taken as
  above. Two reruns that both see the same stale record cannot both take over.

Limits, said plainly: expiry compares the wall clocks of different machines (keep them in NTP
sync: `ttl` is minutes, skew is milliseconds), and renewal is read-then-write (fsspec offers no
compare-and-swap on S3), so a driver stalled past its expiry can, within the window of one
request, renew over a lease just taken from it; the taker then sees the foreign id at its next
heartbeat and stops, so one driver goes on. Task objects and shards are create-only and every
file's bytes are deterministic, so no file ever mixes two builds.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from kohaku_data import storage
from kohaku_data.assembly.lock import BuildError, dumps

LEASE_NAME = "driver.lock"
DEFAULT_TTL = 120.0  # s; renewed every ttl / 4


class DriverLease:
    """`with DriverLease(staging_folder_url) as lease:` … `lease.check()` … — see the module."""

    def __init__(self, folder: storage.Target, *, ttl: float = DEFAULT_TTL, what: str = "") -> None:
        self.folder, self.ttl = folder, ttl
        self.target = storage.join(folder, LEASE_NAME)
        self.what = what or storage.display(storage.parent_of(folder))  # the output, for messages
        self.me = {**this_process(), "driver": secrets.token_hex(8)}
        self._expires = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DriverLease:
        self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="kdata-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.release()

    # -- taking and giving back -------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease, taking over a stale one; BuildError when a live driver holds it."""
        for _ in range(3):
            try:
                storage.commit_bytes(self.target, self._record(), exclusive=True)
                return
            except FileExistsError:
                pass
            current = self._read()
            if current is None:
                continue  # released meanwhile: try again
            why = stale_reason(current, time.time())
            if why is None:
                raise BuildError(_busy(self.what, current))
            self._take_over(current, why)
        raise BuildError(f"could not take the build lease of {self.what}: other drivers keep taking it; "
                         "wait for them to finish or pick another --out")

    def _take_over(self, stale: dict[str, Any], why: str) -> None:
        """Remove a stale record, once: only the driver that creates its takeover marker may."""
        marker = storage.join(self.folder, f"{LEASE_NAME}.{_id_of(stale)}.takeover")
        try:
            storage.commit_bytes(marker, self._record(), exclusive=True)
        except FileExistsError:
            raise BuildError(f"another driver is taking over the build of {self.what} (its last driver "
                             f"{why}); wait for it to finish or pick another --out") from None
        again = self._read()
        if again is not None and _id_of(again) == _id_of(stale):
            storage.remove(self.target)

    def release(self) -> None:
        current = self._read()
        if current is not None and current.get("driver") == self.me["driver"]:
            storage.remove(self.target)

    # -- while building -------------------------------------------------------------------------
    def check(self) -> None:
        """Raise when the lease was lost: another driver may be building into the output now."""
        if self._lost is not None:
            raise BuildError(f"this build lost its lease on {self.what} ({self._lost}); another driver may "
                             "be building there: make sure only one runs, then rerun to resume")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                current = self._read()
                if current is None or current.get("driver") != self.me["driver"]:
                    taker = "" if current is None else f" (now held by {_holder(current)})"
                    self._lost = f"its lease record was removed or replaced{taker}"
                    return
                storage.commit_bytes(self.target, self._record())
            except Exception as exc:  # noqa: BLE001 - a store that fails for a while: retry until expiry
                if time.time() > self._expires:
                    self._lost = f"it could not be renewed before it expired: {exc}"
                    return

    def _record(self) -> bytes:
        self._expires = time.time() + self.ttl
        return dumps({**self.me, "expires": round(self._expires, 3), "ttl": self.ttl})

    def _read(self) -> dict[str, Any] | None:
        try:
            data = storage.read_bytes(self.target)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        return record if isinstance(record, dict) else {"driver": None, "garbled": data[:64].hex()}


# -- who holds it, and is it still there ---------------------------------------------------------
def this_process() -> dict[str, Any]:
    """Where this driver runs: enough for another driver on this machine to tell it is gone."""
    return {"host": socket.gethostname(), "boot": _read_text("/proc/sys/kernel/random/boot_id"),
            "pidns": _readlink("/proc/self/ns/pid"), "pid": os.getpid(), "started": process_start(os.getpid())}


def stale_reason(record: dict[str, Any], now: float) -> str | None:
    """Why a lease record no longer holds (its driver is gone), or None while it does."""
    expires = record.get("expires")
    if not isinstance(expires, (int, float)):
        return "left an unreadable lease"
    if expires < now:
        return f"stopped renewing its lease, which expired at {_clock(expires)}"
    here = this_process()
    same_machine = all(record.get(k) == here[k] for k in ("host", "boot", "pidns")) and here["boot"]
    if same_machine and not process_alive(record.get("pid"), record.get("started")):
        return f"was process {record.get('pid')} on this machine, which is gone"
    return None


def process_alive(pid: Any, started: Any) -> bool:
    """Is `pid` a live process that started at `started` (a reused pid is another process)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    stat = _read_text(f"/proc/{pid}/stat")
    if stat:
        fields = stat.rsplit(")", 1)[1].split()
        return fields[0] != "Z" and (started is None or fields[19] == started)
    if Path("/proc/self/stat").exists():
        return False  # a /proc without this pid: no such process
    try:
        os.kill(pid, 0)  # no /proc (macOS): existence only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def _busy(what: str, record: dict[str, Any]) -> str:
    return (f"another build is running into {what} ({_holder(record)}, its lease renewed until "
            f"{_clock(record['expires'])}); wait for it to finish or pick another --out — a driver that was "
            "killed on another machine stops blocking once that time has passed")


def _holder(record: dict[str, Any]) -> str:
    return f"driver {record.get('driver')} on {record.get('host')}, pid {record.get('pid')}"


def _id_of(record: dict[str, Any]) -> str:
    return str(record.get("driver") or "garbled")


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
