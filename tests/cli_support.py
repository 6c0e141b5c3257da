"""Running `kdata` the way a user does, in a real process, and refusing any traceback in what it said.

A command that crashes can still exit with the code a test expects (1 is both "different" and an
escaped exception), so every subprocess-based check goes through `no_traceback`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

KDATA = str(Path(sys.executable).with_name("kdata"))


def no_traceback(output: str | bytes | None, what: str = "kdata") -> None:
    """Fail the test when a process printed a Python traceback (an exception escaped it)."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else (output or "")
    assert "Traceback (most recent call last)" not in text, f"an exception escaped {what}:\n{text[-4000:]}"


def checked(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The finished process, once its stderr (and stdout, where a log went) holds no traceback."""
    no_traceback(done.stderr, " ".join(map(str, done.args[:3])))
    no_traceback(done.stdout, " ".join(map(str, done.args[:3])))
    return done


def run_kdata(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """`kdata ARGS…` in a subprocess (text, captured, 300 s unless told), checked for tracebacks."""
    kwargs = {"capture_output": True, "text": True, "timeout": 300, **kwargs}
    return checked(subprocess.run([KDATA, *map(str, args)], **kwargs))
