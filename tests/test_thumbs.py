"""Thumbnails of `kdata serve`: real image files (a folder source and a built dataset's shards),
a real uvicorn server on 127.0.0.1 with small limits, driven with httpx."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from PIL import Image

from fake_danbooru import make_posts
from kohaku_data.service.thumbs import ByteLRU
from test_serve import DATASET, ServerProcess, free_port, make_dataset, make_db

CACHE_BYTES = 100_000
NOISE = range(101, 108)  # posts whose images are noise: every thumbnail costs tens of KB


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (a decompression bomb's header) over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def make_sources(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for key in NOISE:
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(folder / f"{key}.png")
    Image.new("RGB", (640, 320), (200, 40, 40)).save(folder / "1.jpg", quality=90)
    ramp = np.tile(np.arange(4000, dtype=np.uint16) % 256, (4000, 1)).astype(np.uint8)
    Image.fromarray(np.stack([ramp, ramp.T, ramp], axis=-1)).save(folder / "2.png", compress_level=1)  # 16 MP: slow
    (folder / "3.png").write_bytes(png_header_only(30_000, 30_000))  # 900 MP claimed
    (folder / "4.jpg").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())  # junk
    good = io.BytesIO()
    Image.new("RGB", (500, 500), (1, 2, 3)).save(good, format="PNG")
    (folder / "5.png").write_bytes(good.getvalue()[:-40])  # truncated
    big = io.BytesIO()
    Image.new("RGB", (6000, 6000), (10, 120, 10)).save(big, format="JPEG", quality=70)
    (folder / "6.jpg").write_bytes(big.getvalue())  # 36 MP JPEG: decoded at 1/8 (draft), under the cap
    Image.new("RGB", (5000, 5000), (10, 120, 10)).save(folder / "7.png")  # 25 MP PNG: over the 20 MP cap


class ThumbServer(ServerProcess):
    """uvicorn over `create_app` with a small ThumbConfig (the CLI exposes only the cache size)."""

    SCRIPT = ("import json, sys, uvicorn; from kohaku_data.service.app import create_app; "
              "from kohaku_data.service.thumbs import ThumbConfig; a = json.loads(sys.argv[1]); "
              "app = create_app(a['db'], a['datasets'], sources=a['src'], thumbs=ThumbConfig(**a['thumbs'])); "
              "uvicorn.run(app, host='127.0.0.1', port=a['port'], log_level='warning')")
    check_log = False  # refused and broken images are this server's everyday input

    def __init__(self, root: Path, **args) -> None:
        port = free_port()
        self._start([sys.executable, "-c", self.SCRIPT, json.dumps({**args, "port": port})], root, port,
                    "thumb-serve.log", "server")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("thumbs")
    make_sources(root / "src")
    db = make_db(root / "danbooru.db", make_posts(5, seed=3))
    make_dataset(root / "datasets")
    server = ThumbServer(root, db=str(db), datasets=str(root / "datasets"), src=[str(root / "src")],
                         thumbs={"cache_bytes": CACHE_BYTES, "timeout": 0.02, "max_pixels": 20_000_000})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, root
    server.stop()


def thumb(client: httpx.Client, post: int, size: int = 256, settle: bool = True) -> httpx.Response:
    """GET the thumbnail; with `settle`, ask again while the server says 'try again shortly' (503)."""
    for _ in range(300):
        res = client.get(f"/posts/{post}/thumb", params={"size": size})
        if res.status_code != 503 or not settle:
            return res
        assert res.headers["x-kdata-thumb"] in ("timeout", "busy") and res.headers["retry-after"]
        time.sleep(0.05)
    raise AssertionError(f"post {post} never rendered")


def cached(client: httpx.Client, post: int) -> bool:
    """One request: was the thumbnail served from the cache? (a miss may answer 200 or 503)"""
    return client.get(f"/posts/{post}/thumb").headers["x-kdata-cache"] == "hit"


def test_byte_lru_keeps_its_bound_and_order() -> None:
    lru = ByteLRU(10)
    lru.put("a", b"1234")
    lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # a is now the most recent
    lru.put("c", b"1234")  # 12 bytes > 10: the least recent (b) goes
    assert lru.get("b") is None and lru.get("a") and lru.get("c") and lru.bytes == 8
    lru.put("big", b"x" * 11)  # larger than the whole bound: not kept, nothing evicted
    assert lru.get("big") is None and len(lru) == 2
    lru.put("a", b"123456")  # replacing counts the new size only
    assert lru.bytes == 10 and lru.get("c")


def test_thumbnail_is_a_small_webp_of_the_source(site) -> None:
    client, _ = site
    res = thumb(client, 1)
    assert res.status_code == 200 and res.headers["content-type"] == "image/webp"
    im = Image.open(io.BytesIO(res.content))
    assert im.size == (256, 128)
    assert max(abs(a - b) for a, b in zip(im.convert("RGB").getpixel((128, 64)), (200, 40, 40))) < 8
    big = thumb(client, 1, size=1024)
    assert Image.open(io.BytesIO(big.content)).size == (640, 320)  # never enlarged
    assert client.get("/posts/1/thumb", params={"size": 300}).status_code == 400


def test_cache_is_bounded_by_bytes(site) -> None:
    client, _ = site
    assert not cached(client, NOISE[0])
    first = thumb(client, NOISE[0])
    assert first.status_code == 200 and len(first.content) > CACHE_BYTES // 5  # else nothing is evicted
    assert cached(client, NOISE[0])
    for key in NOISE[1:]:
        res = thumb(client, key)
        assert res.status_code == 200 and int(res.headers["x-kdata-cache-bytes"]) <= CACHE_BYTES
    assert not cached(client, NOISE[0])  # the least recently used went first
    assert thumb(client, NOISE[0]).content == first.content
    assert cached(client, NOISE[-1])  # the most recent stayed


def test_slow_render_answers_a_placeholder_then_the_picture(site) -> None:
    """A 16 MP PNG takes longer than the 0.02 s timeout: the request gets a 503 placeholder at
    once, the server keeps answering, and the render lands in the cache."""
    client, _ = site
    first = thumb(client, 2, settle=False)
    assert first.status_code == 503 and first.headers["content-type"].startswith("image/svg+xml")
    assert b"still rendering" in first.content and first.headers["x-kdata-thumb"] == "timeout"
    assert client.get("/posts", params={"limit": 2}).status_code == 200  # not blocked meanwhile
    done = thumb(client, 2)
    assert done.status_code == 200 and Image.open(io.BytesIO(done.content)).size == (256, 256)


def test_huge_jpeg_is_downscaled_and_bomb_refused(site) -> None:
    """Pixel cap 20 MP: a 36 MP JPEG decodes at 1/8 and is shown; a 25 MP PNG (decoded in full)
    and a 900 MP PNG header are refused from their headers."""
    client, _ = site
    jpeg = thumb(client, 6)
    assert jpeg.status_code == 200 and Image.open(io.BytesIO(jpeg.content)).size == (256, 256)
    png = thumb(client, 7)
    assert png.status_code == 422 and "25000000 pixels > max_pixels 20000000" in unquote(png.headers["x-kdata-reason"])
    bomb = thumb(client, 3)
    assert bomb.status_code == 422 and bomb.headers["x-kdata-thumb"] == "refused"
    assert "decompression_bomb" in unquote(bomb.headers["x-kdata-reason"])
    assert bomb.headers["content-type"].startswith("image/svg+xml") and b"cannot show" in bomb.content


@pytest.mark.parametrize(("post", "status", "words"), [
    (4, 422, "unidentified"),  # junk bytes
    (5, 422, "truncated"),
    (77, 404, "has no image"),  # no file anywhere
])
def test_unreadable_or_missing_is_a_placeholder(site, post, status, words) -> None:
    client, _ = site
    res = thumb(client, post)
    assert res.status_code == status and words in unquote(res.headers["x-kdata-reason"])
    assert res.headers["content-type"].startswith("image/svg+xml") and res.content.startswith(b"<svg")
    assert thumb(client, post).headers["x-kdata-cache"] == "hit"  # not decoded again


def test_thumbnails_from_a_built_dataset(site) -> None:
    """No source has post 1003: its picture comes from the dataset's shard member."""
    client, root = site
    post = thumb(client, 1003)
    assert post.status_code == 200 and Image.open(io.BytesIO(post.content)).size == (64, 48)
    sample = client.get(f"/datasets/{DATASET}/samples/1004/thumb")
    assert sample.status_code == 200 and Image.open(io.BytesIO(sample.content)).size == (72, 48)
    gone = client.get(f"/datasets/{DATASET}/samples/4242/thumb")
    assert gone.status_code == 404 and gone.content.startswith(b"<svg")
    assert client.get("/datasets/nope/samples/1/thumb").status_code == 404


def test_datasets_folder_that_is_a_dataset_or_empty(tmp_path) -> None:
    """`--datasets` at a dataset folder serves that dataset; an empty folder says so at start-up."""
    db = make_db(tmp_path / "danbooru.db", make_posts(3, seed=4))
    folder = make_dataset(tmp_path / "datasets")
    server = ServerProcess(db, folder, cwd=tmp_path)
    try:
        names = [d["name"] for d in httpx.get(f"{server.url}/datasets").json()["datasets"]]
        assert names == [DATASET]
        assert httpx.get(f"{server.url}/datasets/{DATASET}/samples/1002/thumb").status_code == 200
        server.log.seek(0)
        assert f"is one dataset folder: serving it as dataset '{DATASET}'" in server.log.read()
    finally:
        server.stop()
    (tmp_path / "empty").mkdir()
    server = ServerProcess(db, tmp_path / "empty", cwd=tmp_path)
    try:
        assert httpx.get(f"{server.url}/datasets").json()["datasets"] == []
        server.log.seek(0)
        assert f"no built datasets in {tmp_path / 'empty'}" in server.log.read()
    finally:
        server.stop()


def test_missing_source_stops_start_up(tmp_path) -> None:
    db = make_db(tmp_path / "danbooru.db", make_posts(3, seed=4))
    out = subprocess.run([sys.executable, "-c", "from kohaku_data.cli import app; app()", "serve", "--db", str(db),
                          "--src", str(tmp_path / "nope"), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode != 0 and "image source" in out.stderr and "does not exist" in out.stderr


def test_thumbnail_from_a_tar_whose_index_is_in_another_folder(tmp_path) -> None:
    """`kdata serve --src D --src-index I --src F --src-index -`: each source with its own index
    root. The tar's first header is damaged, so only its index in I can say where the member is
    (without I it is a corrupt tar and the post has no picture); nothing is written into D or I."""
    from test_serve import ServerProcess
    from test_sources_layouts import write_index, write_tar

    red = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(red, format="PNG")
    tar = tmp_path / "d" / "original" / "data-0006.tar"
    write_tar(tar, [("./1006.png", red.getvalue()), ("./2006.png", red.getvalue())])
    write_index(tar, tmp_path / "i" / "original" / "data-0006.json")
    damaged = bytearray(tar.read_bytes())
    damaged[148:156] = b"9999999\0"  # the checksum of the tar's first header
    tar.write_bytes(bytes(damaged))
    (tmp_path / "f").mkdir()
    Image.new("RGB", (100, 100), (0, 0, 200)).save(tmp_path / "f" / "3006.png")
    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for d in "dif" for p in sorted((tmp_path / d).rglob("*")) if p.is_file()}

    before = files()
    db = make_db(tmp_path / "danbooru.db", make_posts(3, seed=4))
    (tmp_path / "datasets").mkdir()

    def serve(*extra: str) -> tuple[list[int], str]:
        server = ServerProcess(db, tmp_path / "datasets", cwd=tmp_path, extra=extra)
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                answers = [thumb(client, post) for post in (1006, 2006, 3006)]
            assert all(a.status_code != 200 or Image.open(io.BytesIO(a.content)).format == "WEBP" for a in answers)
            server.log.seek(0)
            return [a.status_code for a in answers], server.log.read()
        finally:
            server.stop()

    codes, log = serve("--src", str(tmp_path / "d"), "--src-index", str(tmp_path / "i"),
                       "--src", str(tmp_path / "f"), "--src-index", "-")
    assert codes == [200, 200, 200], log
    assert f"indexes in {tmp_path / 'i'}" in log
    codes, _ = serve("--src", str(tmp_path / "d"), "--src", str(tmp_path / "f"))
    assert codes == [404, 404, 200], "without its index the damaged tar is refused: no picture"
    assert files() == before, "nothing written into the source or the index folder"


@pytest.mark.parametrize("args, words", [
    (("--src", "D", "--src", "F", "--src-index", "I"), "1 --src-index for 2 --src"),
    (("--src", "D", "--src-index", "NOPE"), "index folder"),
])
def test_src_index_mistakes_are_one_sentence(tmp_path, args, words) -> None:
    for name in ("D", "F", "I"):
        (tmp_path / name).mkdir()
    db = make_db(tmp_path / "danbooru.db", make_posts(3, seed=4))
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    out = subprocess.run([sys.executable, "-c", "from kohaku_data.cli import app; app()", "serve", "--db", str(db),
                          *args, "--port", str(free_port())], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode != 0 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
