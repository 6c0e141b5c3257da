"""`kdata serve` on a port another program holds: one sentence and a non-zero exit, before any
`serving on…` — and, on a free port (0: the system picks), it still serves."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import httpx

from cli_support import KDATA, no_traceback, run_kdata
from kohaku_data.db import DanbooruDB


def test_busy_port_is_one_sentence_and_nothing_claims_to_serve(empty_db: DanbooruDB) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_kdata("serve", "--db", empty_db.path, "--port", port, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"error: port {port} is in use: pick another with --port", done.stderr
    assert "serving" not in done.stdout + done.stderr


def test_bad_host_is_one_sentence(empty_db: DanbooruDB) -> None:
    done = run_kdata("serve", "--db", empty_db.path, "--host", "no-such-host.invalid", timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: --host 'no-such-host.invalid'"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_port_0_serves_on_the_port_it_names(empty_db: DanbooruDB) -> None:
    proc = subprocess.Popen([KDATA, "serve", "--db", str(empty_db.path), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        found = None
        while found is None and proc.poll() is None:
            found = re.search(r"^serving .* on http://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
        assert found, "kdata serve ended without saying where it serves"
        port = int(found.group(1))
        assert port != 0
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "kdata serve said it serves but does not answer"
                time.sleep(0.1)
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=20)
    no_traceback(rest, "kdata serve")
