"""`kdata serve` shows each dataset's card: the markdown as HTML with its pictures, over real HTTP."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from kohaku_data.assembly.card import CARD_DIR, PICTURES
from test_build_support import build, make_inputs, small_recipe
from test_serve import DATASET, ServerProcess, make_dataset


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("card-serve")
    (root / "inputs").mkdir()
    inputs = make_inputs(root / "inputs", n_posts=12)
    datasets = root / "datasets"
    build(inputs, datasets / "t-1")
    build(inputs, datasets / "q-1", small_recipe(query="score:>5 score:<100000"))  # a query needing escapes
    make_dataset(datasets)  # a folder without a card (made by hand, not by kdata build)
    server = ServerProcess(inputs.db, datasets, cwd=root)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, datasets
    server.stop()


def test_card_as_html_with_its_pictures(site):
    client, datasets = site
    res = client.get("/datasets/t-1/card")
    assert res.status_code == 200
    card = res.json()
    readme = (datasets / "t-1" / "README.md").read_text()
    assert readme.endswith(card["markdown"]) and not card["markdown"].startswith("---")  # header dropped
    assert card["pictures"] == sorted(f"/datasets/t-1/card/{name}" for name in PICTURES)
    for name in PICTURES:
        assert f'<img src="/datasets/t-1/card/{name}"' in card["html"]
    assert "<table>" in card["html"] and "<h2>Thresholds used</h2>" in card["html"]


def test_pictures_are_the_files_as_png(site):
    client, datasets = site
    for url in client.get("/datasets/t-1/card").json()["pictures"]:
        res = client.get(url)
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        name = url.rsplit("/", 1)[1]
        assert res.content == (datasets / "t-1" / CARD_DIR / name).read_bytes()
        assert Image.open(io.BytesIO(res.content)).width > 0


def test_missing_card_and_bad_picture_names_are_404(site):
    client, _ = site
    res = client.get(f"/datasets/{DATASET}/card")
    assert res.status_code == 404 and "has no card" in res.json()["error"]
    for bad in ("nope.png", "..%2Fdataset.lock", "buckets.PNG", "%2E%2E%2Findex.json"):
        assert client.get(f"/datasets/t-1/card/{bad}").status_code == 404, bad


def test_query_with_gt_is_shown_as_written(site):
    """`score:>5` in the card: literal in a code span of the README (as the Hub renders it) and
    `>` in the page's HTML — never `&gt;` shown as text (`&amp;gt;` in HTML)."""
    import html
    import re

    client, datasets = site
    readme = (datasets / "q-1" / "README.md").read_text()
    assert "| query | `score:>5 score:<100000` |" in readme, readme
    assert "&gt;" not in readme and "&lt;" not in readme and "&amp;" not in readme
    page = client.get("/datasets/q-1/card").json()["html"]
    assert "&amp;gt;" not in page and "&amp;lt;" not in page
    query = re.search(r"<td>query</td>\s*<td>(.*?)</td>", page).group(1)
    assert query == "<code>score:&gt;5 score:&lt;100000</code>", query  # shown as score:>5 score:<100000
    assert html.unescape(query[6:-7]) == "score:>5 score:<100000"
