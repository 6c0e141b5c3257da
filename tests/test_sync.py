"""`kdata sync` against a real fake-Danbooru HTTP server, with faults, kills and reruns."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kohaku_data.db import DanbooruDB
from kohaku_data.errors import KdataError
from kohaku_data.service.client import (
    USER_AGENT, ClientSettings, DanbooruClient, SyncError, parse_retry_after,
)
from kohaku_data.service.sync import get_cursor, refresh_updated, sync_posts
from cli_support import no_traceback
from fake_danbooru import FakeDanbooru, make_posts

RATINGS = {"g": 0, "s": 1, "q": 2, "e": 3}
FAST = ClientSettings(rate=10_000, timeout=5, max_failures=4, backoff_base=0.001, backoff_max=0.01)


class Sleeps:
    """Records requested waits and sleeps a capped, tiny amount (keeps tests fast)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(min(seconds, 0.005))


def client_for(server: FakeDanbooru, settings: ClientSettings = FAST, **kw) -> DanbooruClient:
    return DanbooruClient(server.url, settings, **kw)


def db_snapshot(db: DanbooruDB) -> dict[int, tuple]:
    """id → (score, fav_count, rating, updated_at, sorted tag names) as stored."""
    conn = db.connection()
    tags: dict[int, list[str]] = {}
    for pid, name in conn.execute(
        "SELECT r.post_id, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"
    ):
        tags.setdefault(pid, []).append(name)
    rows = conn.execute("SELECT id, score, fav_count, rating, updated_at FROM post")
    return {r[0]: (*r[1:], tuple(sorted(tags.get(r[0], [])))) for r in rows}


def server_snapshot(posts: dict[int, dict]) -> dict[int, tuple]:
    return {
        p["id"]: (p["score"], p["fav_count"], RATINGS[p["rating"]], p["updated_at"],
                  tuple(sorted(p["tag_string"].split())))
        for p in posts.values()
    }


@pytest.fixture
def db(empty_db: DanbooruDB) -> DanbooruDB:
    from kohaku_data.db.migrate import migrate

    migrate(empty_db)
    return empty_db


def test_sync_pulls_every_post_in_cursor_pages(db: DanbooruDB) -> None:
    posts = make_posts(230, seed=1)
    with FakeDanbooru(posts) as server, client_for(server) as client:
        result = sync_posts(db, client, limit_per_page=50)
    assert db_snapshot(db) == server_snapshot(posts)
    assert result.complete and result.counts.inserted == 230 and result.posts == 230
    assert get_cursor(db, server.url) == max(posts)
    pages = [r["params"]["page"] for r in server.requests]
    ids = sorted(posts)
    # a0, then after the 50th, 100th, ... id; the last request finds nothing.
    assert pages == ["a0"] + [f"a{ids[i]}" for i in range(49, 230, 50)] + [f"a{ids[-1]}"]
    assert all(r["headers"]["User-Agent"] == USER_AGENT for r in server.requests)
    assert USER_AGENT.startswith("kohaku-data/")


def test_rerun_is_idempotent_and_fetches_only_new(db: DanbooruDB) -> None:
    posts = make_posts(60, seed=2)
    with FakeDanbooru(posts) as server, client_for(server) as client:
        sync_posts(db, client, limit_per_page=25)
        old_max = max(posts)
        posts.update(make_posts(30, seed=3, start_id=old_max + 10))
        before = len(server.requests)
        result = sync_posts(db, client, limit_per_page=25)
        assert server.requests[before]["params"]["page"] == f"a{old_max}"
    assert result.counts.inserted == 30 and result.counts.updated == 0
    assert db_snapshot(db) == server_snapshot(posts)


def test_faults_are_retried_and_nothing_is_lost_or_duplicated(db: DanbooruDB) -> None:
    posts = make_posts(200, seed=4)
    sleeps = Sleeps()
    settings = ClientSettings(rate=10_000, timeout=0.25, max_failures=3, backoff_base=0.001, backoff_max=0.01)
    with FakeDanbooru(posts, retry_after="0.03", slow_seconds=0.8) as server:
        server.faults.extend(["429", "ok", "500", "truncate", "ok", "badjson", "slow", "repeat",
                              "503", "repeat", "429", "500"])
        with client_for(server, settings, sleep=sleeps) as client:
            result = sync_posts(db, client, limit_per_page=30)
    assert db_snapshot(db) == server_snapshot(posts)
    assert result.counts.inserted == 200 and result.posts == 200
    assert sleeps.calls.count(0.03) == 2  # Retry-After honoured, both times
    assert get_cursor(db, server.url) == max(posts)


def test_gives_up_after_consecutive_failures_keeping_progress(db: DanbooruDB) -> None:
    posts = make_posts(100, seed=5)
    with FakeDanbooru(posts) as server:
        server.faults.extend(["ok", "500", "500", "500", "500"])
        with client_for(server) as client:
            with pytest.raises(SyncError, match="giving up after 4 consecutive failures"):
                sync_posts(db, client, limit_per_page=40)
        first_page = sorted(posts)[:40]
        assert sorted(db_snapshot(db)) == first_page
        assert get_cursor(db, server.url) == first_page[-1]
        with client_for(server) as client:  # the server recovered: a rerun finishes the job
            sync_posts(db, client, limit_per_page=40)
    assert db_snapshot(db) == server_snapshot(posts)


def test_killed_sync_resumes_from_cursor(db: DanbooruDB, tmp_path: Path) -> None:
    posts = make_posts(400, seed=6)
    db_path = db.path
    db.close()
    with FakeDanbooru(posts, delay=0.03) as server:
        cmd = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "sync", "--db", str(db_path),
               "--base-url", server.url, "--limit-per-page", "20", "--rate", "1000"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(server.requests) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr = proc.stderr.read()
        assert proc.returncode == -signal.SIGKILL, stderr.decode()
        no_traceback(stderr, "the killed sync")
        with DanbooruDB.open(db_path) as handle:
            cursor = get_cursor(handle, server.url)
            stored = db_snapshot(handle)
            assert 0 < cursor < max(posts)
            assert sorted(stored) == [i for i in sorted(posts) if i <= cursor]  # whole pages only
            server.delay = 0
            before = len(server.requests)
            with client_for(server) as client:
                sync_posts(handle, client, limit_per_page=20)
            assert server.requests[before]["params"]["page"] == f"a{cursor}"
            assert db_snapshot(handle) == server_snapshot(posts)


def test_credentials_are_sent_but_never_shown(db: DanbooruDB, monkeypatch, caplog, capfd) -> None:
    login, key = "someone", "SECRET-key-1234567890"
    monkeypatch.setenv("KDATA_DANBOORU_LOGIN", login)
    monkeypatch.setenv("KDATA_DANBOORU_API_KEY", key)
    posts = make_posts(40, seed=7)
    caplog.set_level(logging.DEBUG)
    with FakeDanbooru(posts, credentials=(login, key)) as server:
        server.faults.extend(["429", "500"])  # retries log warnings with the URL
        from typer.testing import CliRunner

        from kohaku_data.cli import app

        out = CliRunner().invoke(app, ["sync", "--db", str(db.path), "--base-url", server.url,
                                       "--limit-per-page", "15", "--rate", "1000", "--backoff", "0.001"])
        assert out.exit_code == 0, out.output
        assert all("Authorization" in r["headers"] for r in server.requests)
        assert all(key not in str(r["params"]) for r in server.requests)
        wrong = FakeDanbooru(posts, credentials=(login, "other"))
        with wrong:
            bad = CliRunner().invoke(app, ["sync", "--db", str(db.path), "--base-url", wrong.url])
        assert bad.exit_code == 1 and "KDATA_DANBOORU_API_KEY" in bad.output
    with DanbooruDB.open(db.path) as handle:
        assert len(db_snapshot(handle)) == 40
    captured = capfd.readouterr()
    everything = out.output + bad.output + captured.out + captured.err + caplog.text
    assert any("retry" in r.getMessage() for r in caplog.records)  # logging did happen
    assert key not in everything
    assert all(key not in str(r.args) for r in caplog.records)


def test_updated_since_refreshes_changed_posts(db: DanbooruDB) -> None:
    posts = make_posts(120, seed=8)
    with FakeDanbooru(posts) as server, client_for(server) as client:
        sync_posts(db, client, limit_per_page=50)
        since = datetime.now(timezone.utc) - timedelta(seconds=1)
        changed = random.Random(0).sample(sorted(posts), 7)
        for pid in changed:
            server.touch(pid, score=9999, tag_string_general="new_tag solo")
            posts[pid]["tag_string"] = " ".join(
                posts[pid][f"tag_string_{f}"] for f in ("general", "artist", "character", "copyright", "meta"))
        before = len(server.requests)
        result = refresh_updated(db, client, since, limit_per_page=5)
        refresh_requests = server.requests[before:]
    assert result.counts.updated == 7
    assert db_snapshot(db) == server_snapshot(posts)
    assert all(r["params"]["tags"] == "order:change" for r in refresh_requests)
    assert len(refresh_requests) == 2  # stops at the first page with older changes


def test_existing_db_starts_after_its_newest_post(db: DanbooruDB) -> None:
    from kohaku_data.db.importer import upsert_posts

    posts = make_posts(50, seed=9)
    ids = sorted(posts)
    upsert_posts(db, [posts[i] for i in ids[:30]])
    with FakeDanbooru(posts) as server, client_for(server) as client:
        result = sync_posts(db, client)
        assert server.requests[0]["params"]["page"] == f"a{ids[29]}"
    assert result.counts.inserted == 20


def test_bad_settings_are_clear_errors(db: DanbooruDB) -> None:
    with pytest.raises(KdataError, match="between 1 and 200"):
        with DanbooruClient("http://127.0.0.1:9", FAST) as client:
            sync_posts(db, client, limit_per_page=500)
    with pytest.raises(KdataError, match="http"):
        DanbooruClient("ftp://example.org")
    with pytest.raises(KdataError, match="rate"):
        ClientSettings(rate=0)


def test_rate_limit_spaces_requests() -> None:
    """With a fake clock (injected so the test does not wait), waits are 1/rate apart."""
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    posts = make_posts(5, seed=10)
    with FakeDanbooru(posts) as server:
        with DanbooruClient(server.url, ClientSettings(rate=2), sleep=sleep, clock=lambda: now[0]) as client:
            for _ in range(4):
                client.get_json("/posts.json", {"page": "a0"})
    assert waits == [0.5, 0.5, 0.5]


def test_retry_after_forms_and_backoff_bounds() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    client = DanbooruClient("http://127.0.0.1:9", ClientSettings(backoff_base=1, backoff_max=8),
                            rng=random.Random(0))
    waits = [client._backoff(n, None) for n in range(1, 8)]
    client.close()
    caps = [min(8, 2 ** (n - 1)) for n in range(1, 8)]
    assert all(c / 2 <= w <= c for w, c in zip(waits, caps))


def test_bad_posts_are_rejected_with_a_reason_and_the_sync_goes_on(db: DanbooruDB) -> None:
    """A post the API sends that is not a valid post (unknown rating, wrong type) goes to the
    sync rejects file; the rest of its page is stored and the cursor moves past it."""
    import json

    posts = make_posts(60, seed=7)
    ids = sorted(posts)
    posts[ids[5]]["rating"] = "x"
    posts[ids[40]]["score"] = "lots"
    with FakeDanbooru(posts) as server, client_for(server) as client:
        result = sync_posts(db, client, limit_per_page=20)
        again = sync_posts(db, client, limit_per_page=20)
    good = {pid: p for pid, p in posts.items() if pid not in (ids[5], ids[40])}
    assert db_snapshot(db) == server_snapshot(good)
    assert result.complete and result.rejected == 2 and get_cursor(db, server.url) == max(posts)
    assert again.rejected == 0 and again.counts.inserted == 0
    lines = [json.loads(line) for line in result.rejects_path.read_text().splitlines()]
    assert [(r["id"], "rating" in r["reason"] or "score" in r["reason"]) for r in lines] == [
        (ids[5], True), (ids[40], True)]
    assert "2 rejected" in result.summary()


def test_user_agent_from_option_or_environment(db: DanbooruDB, monkeypatch) -> None:
    """Danbooru asks clients to say who they are: the operator's User-Agent reaches the server."""
    from typer.testing import CliRunner

    from kohaku_data.cli import app

    posts = make_posts(10, seed=9)
    for how, agent in (("option", "kohaku-data/test (ops@example.org)"), ("env", "kdata-env-agent/1.0")):
        with FakeDanbooru(posts) as server:
            args = ["sync", "--db", str(db.path), "--base-url", server.url, "--rate", "1000"]
            if how == "option":
                args += ["--user-agent", agent]
            else:
                monkeypatch.setenv("KDATA_USER_AGENT", agent)
            out = CliRunner().invoke(app, args)
            assert out.exit_code == 0, out.output
            assert server.requests and all(r["headers"]["User-Agent"] == agent for r in server.requests)
    with pytest.raises(SyncError, match="printable ASCII"):
        ClientSettings(user_agent="bad\nagent")
