"""`kdata serve`: a real uvicorn process on a free port, driven with httpx."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import httpx
import polars as pl
import pytest
from PIL import Image

from cli_support import no_traceback
from fake_danbooru import make_posts
from kohaku_data.db import DanbooruDB

CATEGORIES = ("general", "artist", "character", "copyright", "meta")
DATASET = "tiny-1"


# --------------------------------------------------------------------------------------------
# Fixtures shared with test_browse.py
# --------------------------------------------------------------------------------------------
def make_db(path: Path, posts: dict[int, dict]) -> Path:
    from kohaku_data.db.importer import upsert_posts
    from kohaku_data.db.migrate import migrate

    with DanbooruDB.create(path) as db:
        migrate(db)
        upsert_posts(db, list(posts.values()))
        top = db.Tag.select().order_by(db.Tag.popularity.desc(), db.Tag.name).first()
        db.TagAlias.insert(alias="zz_alias_of_top", tag_name=top.name).execute()
    return path


def make_dataset(root: Path, name: str = DATASET, n: int = 12, per_shard: int = 5) -> Path:
    """A small built dataset in the documented layout (real webp/png, real tars, parquet)."""
    folder = root / name
    folder.mkdir(parents=True)
    rows, shards = [], []
    for s in range(0, n, per_shard):
        shard = f"{name}-{s // per_shard:06d}.tar"
        with tarfile.open(folder / shard, "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                key = 1000 + i  # kdata builds key samples by post id
                ext = "png" if i % 4 == 3 else "webp"
                buf = io.BytesIO()
                Image.new("RGB", (64 + 8 * (i % 3), 48), (i * 20 % 256, 80, 160)).save(buf, format=ext.upper(), lossless=True)
                caption = f"1girl, sample {i}, ünïcode, |||tag_{i}"
                meta = {"key": key, "post_id": 1000 + i}
                for member, data in ((f"{key}.{ext}", buf.getvalue()), (f"{key}.txt", caption.encode()),
                                     (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "shard": shard, "image": f"{key}.{ext}", "width": 64, "height": 48, "caption": caption,
                             "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "source": "test",
                             "rating": "safe", "quality": ["masterpiece", "normal quality"][i % 2],
                             "year": 2020 + i % 3, "bucket": f"{64 + 8 * (i % 3)}x48"})
        data = (folder / shard).read_bytes()
        shards.append({"url": shard, "nsamples": min(per_shard, n - s), "filesize": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "index.json").write_text(json.dumps({"shardlist": shards}))
    (folder / "dataset.lock").write_text(json.dumps({"recipe_sha256": "ab" * 32, "kdata_version": "0.1.0"}))
    pl.DataFrame(rows).write_parquet(folder / "manifest.parquet")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`kdata serve` in a subprocess; `.url` once it answers. Subclasses start another command
    through `_start` and share the wait and the stop."""

    check_log = True  # stop() fails on a traceback in the server's log

    def __init__(self, db: Path, datasets: Path, cwd: Path, extra: tuple[str, ...] = ()) -> None:
        port = free_port()
        cmd = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "serve", "--db", str(db),
               "--datasets", str(datasets), "--port", str(port), *extra]
        self._start(cmd, cwd, port, "serve.log", "kdata serve")

    def _start(self, cmd: list[str], cwd: Path, port: int, log_name: str, what: str) -> None:
        self.port, self.what = port, what
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(cwd / log_name, "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{what} did not start:\n{self.last_log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.seek(0)
        self.last_log = self.log.read()
        self.log.close()
        if self.check_log:
            no_traceback(self.last_log, self.what)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    posts = make_posts(260, seed=11)
    db_path = make_db(root / "danbooru.db", posts)
    datasets = root / "datasets"
    make_dataset(datasets)
    (root / "pipelines").mkdir()
    (root / "pipelines" / "plain.toml").write_text('name = "plain"\n[caption]\nkeep_separator = ""\nquality = false\n')
    digest = hashlib.sha256(db_path.read_bytes()).hexdigest()
    server = ServerProcess(db_path, datasets, cwd=root)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield {"client": client, "posts": posts, "db": db_path, "datasets": datasets, "url": server.url}
    server.stop()
    # Served read-only: the file is byte-identical and nothing was written to its WAL (a reader
    # of a WAL-mode file may create an empty -wal/-shm pair; it never adds frames).
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == digest
    wal = Path(f"{db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
def test_openapi_lists_every_endpoint(site) -> None:
    paths = site["client"].get("/openapi.json").json()["paths"]
    for path in ("/posts", "/posts/{post_id}", "/posts/{post_id}/caption", "/tags", "/stats", "/datasets",
                 "/datasets/{name}/samples/{key}"):
        assert path in paths


def test_posts_query_pages_with_cursor(site) -> None:
    client, posts = site["client"], site["posts"]
    tag = posts[min(posts)]["tag_string_general"].split()[0]
    expected = sorted(p["id"] for p in posts.values() if tag in p["tag_string"].split())
    got, cursor = [], None
    while True:
        params = {"q": tag, "limit": 7} | ({"cursor": cursor} if cursor is not None else {})
        page = client.get("/posts", params=params).json()
        assert len(page["posts"]) <= 7
        got += [p["id"] for p in page["posts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert got == expected and len(got) > 7
    first = client.get("/posts", params={"q": tag, "limit": 1}).json()["posts"][0]
    src = posts[first["id"]]
    assert (first["score"], first["fav_count"], first["image_width"]) == (src["score"], src["fav_count"], src["image_width"])


def test_posts_limit_is_capped(site) -> None:
    page = site["client"].get("/posts", params={"limit": 100000}).json()
    assert len(page["posts"]) == 200 and page["next_cursor"] is not None


@pytest.mark.parametrize("params", [{"limit": "abc"}, {"limit": 0}, {"cursor": -3}])
def test_bad_parameters_are_400_with_a_message(site, params) -> None:
    res = site["client"].get("/posts", params=params)
    assert res.status_code == 400
    assert "bad parameters" in res.json()["error"]


def test_bad_query_is_400(site) -> None:
    res = site["client"].get("/posts", params={"q": "no_such_tag_anywhere"})
    assert res.status_code == 400 and res.json()["error"]


def test_post_detail_has_tags_by_category(site) -> None:
    client, posts = site["client"], site["posts"]
    pid = sorted(posts)[17]
    body = client.get(f"/posts/{pid}").json()
    assert body["id"] == pid and body["md5"] == posts[pid]["md5"]
    for cat in CATEGORIES:
        assert sorted(body["tags"][cat]) == sorted(posts[pid][f"tag_string_{cat}"].split())
    assert client.get("/posts/1").status_code == 404
    assert client.get("/posts/nope").status_code == 400


def test_caption_default_and_named_recipe(site) -> None:
    client, posts = site["client"], site["posts"]
    pid = sorted(posts)[3]
    default = client.get(f"/posts/{pid}/caption").json()
    plain = client.get(f"/posts/{pid}/caption", params={"recipe": "plain"}).json()
    some_tag = posts[pid]["tag_string_general"].split()[0].replace("_", " ")
    assert some_tag in default["caption"] and some_tag in plain["caption"]
    assert "|||" in default["caption"] and "|||" not in plain["caption"]
    shipped = client.get(f"/posts/{pid}/caption", params={"recipe": "kohaku-xl-gamma"})  # not in pipelines/
    assert shipped.status_code == 200 and some_tag in shipped.json()["caption"]
    assert client.get(f"/posts/{pid}/caption", params={"recipe": "missing"}).status_code == 404
    assert client.get(f"/posts/{pid}/caption", params={"recipe": "../etc/passwd"}).status_code == 400


def test_tags_autocomplete_ranked_and_aliases_resolved(site) -> None:
    client = site["client"]
    with DanbooruDB.open(site["db"], readonly=True) as db:
        rows = list(db.connection().execute("SELECT name, popularity FROM tag"))
    prefix = max(rows, key=lambda r: r[1])[0][:1]
    expected = sorted((r for r in rows if r[0].startswith(prefix)), key=lambda r: (-r[1], r[0]))[:5]
    got = client.get("/tags", params={"prefix": prefix.upper(), "limit": 5}).json()["tags"]
    assert [(t["name"], t["popularity"]) for t in got] == expected
    aliased = client.get("/tags", params={"prefix": "zz_alias"}).json()["tags"]
    top = max(rows, key=lambda r: (r[1], [-ord(c) for c in r[0]]))
    assert aliased and aliased[0]["name"] == top[0] and aliased[0]["alias"] == "zz_alias_of_top"


def test_stats(site) -> None:
    stats = site["client"].get("/stats").json()
    assert stats["posts"] == len(site["posts"]) and stats["max_post_id"] == max(site["posts"])
    assert stats["quality_thresholds"]


def test_datasets_and_samples(site) -> None:
    client = site["client"]
    listing = client.get("/datasets").json()["datasets"]
    assert [(d["name"], d["samples"], d["shards"]) for d in listing] == [(DATASET, 12, 3)]
    folder = site["datasets"] / DATASET
    with tarfile.open(folder / f"{DATASET}-000001.tar") as tar:
        expected_png = tar.extractfile("1007.png").read()
        expected_txt = tar.extractfile("1007.txt").read().decode()
    res = client.get(f"/datasets/{DATASET}/samples/1007")
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert res.content == expected_png
    assert unquote(res.headers["x-kdata-caption"]) == expected_txt
    detail = client.get(f"/datasets/{DATASET}/samples/1007.json").json()
    assert detail["caption"] == expected_txt and detail["meta"]["post_id"] == 1007
    assert detail["manifest"]["shard"] == f"{DATASET}-000001.tar"
    webp = client.get(f"/datasets/{DATASET}/samples/1000")
    assert webp.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(webp.content)).size == (64, 48)
    assert client.get(f"/datasets/{DATASET}/samples/99999").status_code == 404
    assert client.get("/datasets/nope/samples/1000").status_code == 404
    assert client.get("/datasets/..%2F..%2Fetc/samples/passwd").status_code == 404
    hist = client.get(f"/datasets/{DATASET}/histograms").json()
    assert {r["value"]: r["count"] for r in hist["quality"]} == {"masterpiece": 6, "normal quality": 6}
    assert sum(r["count"] for r in hist["bucket"]) == 12


def test_concurrent_requests(site) -> None:
    client, posts = site["client"], site["posts"]
    ids = sorted(posts)[:60]
    tag = posts[ids[0]]["tag_string_general"].split()[0]
    expected_q = client.get("/posts", params={"q": tag, "limit": 200}).json()

    def one(i: int):
        if i % 3 == 0:
            return client.get("/posts", params={"q": tag, "limit": 200}).json() == expected_q
        if i % 3 == 1:
            pid = ids[i % len(ids)]
            return client.get(f"/posts/{pid}").json()["md5"] == posts[pid]["md5"]
        return client.get(f"/datasets/{DATASET}/samples/{1000 + i % 12}.json").json()["meta"]["post_id"] == 1000 + i % 12

    with httpx.Client(base_url=site["url"], timeout=30, limits=httpx.Limits(max_connections=32)) as c:
        client = c
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(120)))
    assert all(results)


def test_browse_page_is_served(site) -> None:
    res = site["client"].get("/")
    assert res.status_code == 200 and "browse.js" in res.text
    assert "showDataset" in site["client"].get("/static/browse.js").text
