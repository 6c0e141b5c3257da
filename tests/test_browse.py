"""The browse page in a real headless browser (Debian's chromium): the grid, captions and
histograms render from the live API. Skipped when chromium is not installed
(`apt-get install -y chromium`)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from PIL import Image

from fake_danbooru import make_posts
from kohaku_data.assembly.card import CARD_DIR, PICTURES
from test_build_support import build, make_inputs
from test_serve import DATASET, ServerProcess, make_dataset, make_db

BUILT = "t-1"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


def dump_dom(url: str, profile) -> str:
    # --virtual-time-budget lets the page's fetches finish before the DOM is printed.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=15000", "--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    (root / "inputs").mkdir()
    posts = make_posts(40, seed=12)
    db = make_db(root / "danbooru.db", posts)
    make_dataset(root / "datasets", n=9, per_shard=4)
    build(make_inputs(root / "inputs", n_posts=16), root / "datasets" / BUILT)  # a real build: it has a card
    proc = ServerProcess(db, root / "datasets", cwd=root)
    yield proc, posts, root
    proc.stop()


def test_grid_captions_and_histograms_render(server) -> None:
    proc, posts, root = server
    tag = posts[min(posts)]["tag_string_general"].split()[0]
    dom = dump_dom(f"{proc.url}/?dataset={DATASET}&q={tag}", root / "profile")
    cards = re.findall(r'<div class="card" data-key="(\d+)"><img src="([^"]+)"', dom)
    assert [k for k, _ in cards] == [str(1000 + i) for i in range(9)]
    assert all(src == f"/datasets/{DATASET}/samples/{k}" for k, src in cards)
    assert dom.count('<p class="caption">1girl, sample') == 9
    buckets = re.search(r'id="hist-bucket" class="hist">(.*?)</div></figure>', dom, re.S).group(1)
    assert buckets.count('class="bar"') == 3  # three distinct bucket sizes
    assert "9 samples" in dom
    expected_rows = sum(tag in p["tag_string"].split() for p in posts.values())
    assert dom.count('<a href="/posts/') == expected_rows > 0  # the ?q= search ran


def test_dataset_card_pictures_load(server) -> None:
    """The browse page shows the build's card: its text and every picture, decoded by the browser
    (each <img> gets data-width = its naturalWidth once loaded; a broken one is replaced)."""
    proc, _, root = server
    dom = dump_dom(f"{proc.url}/?dataset={BUILT}", root / "profile-card")
    card = re.search(r'<div id="card">(.*?)</div></details>', dom, re.S).group(1)
    assert "<h1>t-1</h1>" in card and "<h2>Thresholds used</h2>" in card and "<table>" in card
    images = re.findall(r'<img src="/datasets/t-1/card/([a-z_]+\.png)"[^>]*?data-width="(\d+)"', card)
    assert [name for name, _ in images] == list(PICTURES)
    for name, width in images:
        with Image.open(root / "datasets" / BUILT / CARD_DIR / name) as im:
            assert int(width) == im.width > 0
    assert "picture missing" not in card


def test_a_dataset_without_card_says_so(server) -> None:
    proc, _, root = server
    dom = dump_dom(f"{proc.url}/?dataset={DATASET}", root / "profile-nocard")
    assert 'id="card"><p class="muted">dataset ' in dom and "has no card" in dom
