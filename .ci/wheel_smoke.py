"""CI smoke test of the installed wheel, run by `.ci/wheel-smoke` with the fresh venv's python.

Every step runs `kdata` as a user would, from an empty directory outside the checkout, so a data
file missing from the wheel (migrations, resources, recipes, static files) fails here. The only
things taken from the checkout are inputs a user would have: the real posts sample and the fake
Danbooru server of the tests (a stdlib-only stand-in for the real site, which CI cannot reach).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
POSTS = CHECKOUT / "tests" / "data" / "danbooru-posts-sample.json"
KDATA = Path(sys.executable).with_name("kdata")


def kdata(*args: str, cwd: Path) -> str:
    """Run one kdata command; a failure prints its output and stops the smoke test."""
    print(f"$ kdata {' '.join(args)}", flush=True)
    done = subprocess.run([str(KDATA), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"kdata {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"wheel smoke: {what}")


def installed_outside_checkout() -> None:
    import kohaku_data

    where = Path(kohaku_data.__file__).resolve()
    check(CHECKOUT not in where.parents, f"kohaku_data is imported from the checkout ({where}), not the wheel")


def metadata_commands(work: Path) -> None:
    kdata("db", "init", "--db", "x.db", cwd=work)
    kdata("db", "import", str(POSTS), "--db", "x.db", cwd=work)
    kdata("db", "migrate", "--db", "x.db", cwd=work)
    info = json.loads(kdata("db", "info", "--db", "x.db", "--json", cwd=work))
    check(info["posts"] == len(json.loads(POSTS.read_text())), f"db info counts {info['posts']} posts")
    ids = kdata("query", "rating:g,s,q,e", "--db", "x.db", cwd=work).split()
    check(len(ids) == info["posts"], f"query found {len(ids)} of {info['posts']} posts")
    kdata("caption", "--db", "x.db", "--out", "captions.parquet", cwd=work)
    check((work / "captions.parquet").stat().st_size > 0, "caption wrote nothing")


def build_commands(work: Path) -> None:
    kdata("sample", "s", "--posts", "40", "--seed", "1", "--migrate", cwd=work)
    kdata("build", "--db", "s/danbooru.db", "--src", "s/raw", "--recipe", "demo", "--out", "shards", cwd=work)
    kdata("verify", "shards", cwd=work)
    check(any(work.joinpath("shards").glob("*.tar")), "build wrote no shard")


def sync_command(work: Path) -> None:
    sys.path.insert(0, str(CHECKOUT / "tests"))
    from fake_danbooru import FakeDanbooru, make_posts

    with FakeDanbooru(make_posts(30, seed=2)) as site:
        kdata("db", "init", "--db", "synced.db", cwd=work)
        kdata("sync", "--base-url", site.url, "--db", "synced.db", "--rate", "50", cwd=work)
    info = json.loads(kdata("db", "info", "--db", "synced.db", "--json", cwd=work))
    check(info["posts"] == 30, f"sync stored {info['posts']} of 30 posts")


def serve_command(work: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(KDATA), "serve", "--db", "x.db", "--datasets", ".", "--port", str(port)],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stats = _get_json(f"http://127.0.0.1:{port}/stats", server)
        check(stats.get("posts", 0) > 0, f"/stats answered {stats}")
    finally:
        server.terminate()
        server.wait(10)


def _get_json(url: str, server: subprocess.Popen, wait: float = 60.0) -> dict:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"kdata serve exited: {server.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.loads(answer.read())
        except OSError:
            time.sleep(0.3)
    sys.exit(f"kdata serve did not answer {url} within {wait:.0f} s")


def main() -> None:
    installed_outside_checkout()
    with tempfile.TemporaryDirectory(prefix="kdata-smoke-") as tmp:
        work = Path(tmp)
        os.chdir(work)
        metadata_commands(work)
        build_commands(work)
        sync_command(work)
        serve_command(work)
    print("wheel smoke: every command ran from the installed wheel")


if __name__ == "__main__":
    main()
