"""A small Danbooru-compatible HTTP server for tests (a real server on 127.0.0.1, in a thread).

It serves `/posts.json` the way Danbooru does:
- `page=a<id>`: the `limit` posts with the smallest ids above <id>, newest first within the page
  (Danbooru's sequential paginator orders `id asc`, takes `limit`, then reverses);
- `page=b<id>`: the `limit` posts below <id>, newest first;
- `page=<n>`: numbered pages, by id descending, or by `updated_at` descending with
  `tags=order:change`.
`limit` is capped at 200 like Danbooru's. Faults are queued with `server.faults.append(...)` and
consumed one per request: "429" (with Retry-After), "500", "503", "truncate" (the connection
closes before Content-Length bytes), "badjson" (a cut JSON body, complete by Content-Length),
"slow" (answers after `slow_seconds`), "repeat" (the page repeats ids, including ids of the
previous page), "ok" (no fault).
"""

from __future__ import annotations

import base64
import copy
import json
import random
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SAMPLE = Path(__file__).parent / "data" / "danbooru-posts-sample.json"
_TAG_FIELDS = ("general", "artist", "character", "copyright", "meta")


def make_posts(n: int, seed: int = 0, start_id: int = 1000) -> dict[int, dict]:
    """`n` realistic API posts (the sample posts with new ids, tags, scores), sparse ids."""
    rng = random.Random(seed)
    templates = json.loads(SAMPLE.read_text())
    pools = {f: sorted({t for p in templates for t in p[f"tag_string_{f}"].split()}) for f in _TAG_FIELDS}
    base = datetime(2023, 1, 1, tzinfo=timezone.utc)
    posts, pid = {}, start_id
    for i in range(n):
        pid += rng.randint(1, 5)  # gaps, like deleted/hidden posts
        post = copy.deepcopy(templates[i % len(templates)])
        tags = {f: sorted(rng.sample(pools[f], min(len(pools[f]), rng.randint(0, 6) if f != "general" else 8)))
                for f in _TAG_FIELDS}
        created = (base + timedelta(minutes=pid)).isoformat(timespec="milliseconds")
        post.update(id=pid, created_at=created, updated_at=created, score=rng.randint(-2, 200),
                    fav_count=rng.randint(0, 300), rating=rng.choice("gsqe"))
        for f in _TAG_FIELDS:
            post[f"tag_string_{f}"] = " ".join(tags[f])
            post[f"tag_count_{f}"] = len(tags[f])
        post["tag_string"] = " ".join(sorted(t for f in _TAG_FIELDS for t in tags[f]))
        post["tag_count"] = sum(len(v) for v in tags.values())
        posts[pid] = post
    return posts


class FakeDanbooru:
    """`with FakeDanbooru(posts) as server: server.url ...`"""

    def __init__(self, posts: dict[int, dict], *, credentials: tuple[str, str] | None = None,
                 retry_after: str = "0.02", slow_seconds: float = 1.0, delay: float = 0.0) -> None:
        self.posts = posts
        self.credentials = credentials
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.delay = delay  # seconds before every answer (to catch a sync mid-way)
        self.faults: deque[str] = deque()
        # /tag_implications.json and /tag_aliases.json records (API format), by path
        self.relations: dict[str, list[dict]] = {"/tag_implications.json": [], "/tag_aliases.json": []}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeDanbooru":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def touch(self, pid: int, **fields: Any) -> None:
        """Edit a post as a user would: fields change and updated_at becomes now."""
        with self.lock:
            self.posts[pid].update(fields, updated_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))

    # -- the API ------------------------------------------------------------------------------
    def page(self, params: dict[str, str]) -> list[dict]:
        limit = max(1, min(int(params.get("limit", 20)), 200))
        page = params.get("page", "1")
        with self.lock:
            posts = list(self.posts.values())
        if page.startswith("a"):
            after = int(page[1:])
            chosen = sorted((p for p in posts if p["id"] > after), key=lambda p: p["id"])[:limit]
            return chosen[::-1]
        if page.startswith("b"):
            before = int(page[1:])
            return sorted((p for p in posts if p["id"] < before), key=lambda p: -p["id"])[:limit]
        if "order:change" in params.get("tags", ""):
            posts.sort(key=lambda p: (p["updated_at"], p["id"]), reverse=True)
        else:
            posts.sort(key=lambda p: -p["id"])
        start = (int(page) - 1) * limit
        return posts[start:start + limit]


    def relation_page(self, path: str, params: dict[str, str]) -> list[dict]:
        """Danbooru's index paging for relations: `page=a<id>` (ascending id, reversed like
        posts), `search[status]` filter, `limit` capped at 1000."""
        limit = max(1, min(int(params.get("limit", 20)), 1000))
        after = int(params.get("page", "a0")[1:])
        status = params.get("search[status]")
        with self.lock:
            records = [r for r in self.relations[path] if r["id"] > after and (status is None or r["status"] == status)]
        return sorted(records, key=lambda r: r["id"])[:limit][::-1]


def _handler_for(server: FakeDanbooru) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with server.lock:
                fault = server.faults.popleft() if server.faults else "ok"
                server.requests.append({"path": url.path, "params": params, "fault": fault,
                                        "headers": dict(self.headers)})
            if server.delay:
                time.sleep(server.delay)
            if not self._authorised():
                return self._send(401, b'{"success":false,"message":"bad login"}')
            if url.path in server.relations:
                return self._send(200, json.dumps(server.relation_page(url.path, params)).encode())
            if url.path != "/posts.json":
                return self._send(404, b'{"success":false}')
            self._answer(fault, params)

        def _authorised(self) -> bool:
            if server.credentials is None:
                return True
            token = base64.b64encode(":".join(server.credentials).encode()).decode()
            return self.headers.get("Authorization") == f"Basic {token}"

        def _answer(self, fault: str, params: dict[str, str]) -> None:
            if fault in ("429", "500", "503"):
                extra = {"Retry-After": server.retry_after} if fault == "429" else {}
                return self._send(int(fault), b'{"success":false}', extra)
            if fault == "slow":
                time.sleep(server.slow_seconds)
            page = server.page(params)
            if fault == "repeat":
                after = int(params["page"][1:]) if params.get("page", "").startswith("a") else 0
                with server.lock:
                    older = [p for p in server.posts.values() if p["id"] <= after][-3:]
                page = page + page[:3] + older
            body = json.dumps(page).encode()
            if fault == "truncate":
                return self._send(200, body, cut=len(body) // 2)
            if fault == "badjson":
                body = body[: len(body) // 2]
            self._send(200, body)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  cut: int | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                self.close_connection = True

    return Handler
