"""Process settings (kohaku_data/runtime.py) on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = '''
import os, sys, time, multiprocessing
from kohaku_data.runtime import worker_pool


def task(path):
    open(path + ".tmp", "w").write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(30)
    open(path + ".late", "w").write("a worker outlived its driver")


if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[2])  # forkserver: as the build executor's pool
    with worker_pool(1, context) as pool:
        pool.submit(task, sys.argv[1]).result()
'''


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # a zombie nobody reaped is dead too


@pytest.mark.parametrize("start", ["forkserver", "spawn", "fork"])
def test_pool_workers_end_with_a_killed_driver(tmp_path: Path, start: str) -> None:
    script, marker = tmp_path / "driver.py", tmp_path / "worker.pid"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), str(marker), start])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the worker never started"
            assert driver.poll() is None, "the driver ended early"
            time.sleep(0.05)
        worker = int(marker.read_text())
        assert not _gone(worker)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 20
        while not _gone(worker):
            assert time.monotonic() < deadline, "the pool worker outlived its killed driver"
            time.sleep(0.05)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert not (tmp_path / "worker.pid.late").exists()
