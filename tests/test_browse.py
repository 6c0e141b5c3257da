"""The browse page in a real headless browser (Debian's chromium, driven over the DevTools
protocol: tests/cdp_support.py): search results as pictures, the detail view, the dataset grid,
histograms and card render from the live API. Skipped when chromium is not installed
(`apt-get install -y chromium`; `make browser-test` does it)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cdp_support import CHROMIUM, Browser
from fake_danbooru import make_posts
from kohaku_data.assembly.card import CARD_DIR, PICTURES
from test_build_support import build, make_inputs
from test_serve import DATASET, ServerProcess, make_dataset, make_db

BUILT = "t-1"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


def image_size(post_id: int) -> tuple[int, int]:
    return 100 + (post_id % 7) * 20, 150  # under the 256 px thumbnail: shown at its own size


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    (root / "inputs").mkdir()
    posts = make_posts(40, seed=12)
    db = make_db(root / "danbooru.db", posts)
    ids = sorted(posts)
    missing, corrupt = ids[1], ids[2]
    (root / "src").mkdir()
    for pid in ids:
        if pid == corrupt:
            (root / "src" / f"{pid}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif pid != missing:
            Image.new("RGB", image_size(pid), (pid % 256, 90, 160)).save(root / "src" / f"{pid}.png")
    make_dataset(root / "datasets", n=9, per_shard=4)
    build(make_inputs(root / "inputs", n_posts=16), root / "datasets" / BUILT)  # a real build: it has a card
    proc = ServerProcess(db, root / "datasets", cwd=root, extra=("--src", str(root / "src")))
    yield proc, posts, root, {"missing": missing, "corrupt": corrupt}
    proc.stop()


@pytest.fixture
def browser(tmp_path):
    chrome = Browser(tmp_path / "profile")
    yield chrome
    chrome.close()


THUMBS = """[...document.querySelectorAll('#posts .tile')].map(t => {
  const img = t.querySelector('img');
  return {id: Number(t.dataset.id), src: img.getAttribute('src'), width: img.dataset.width};
})"""


def test_search_shows_pictures_and_click_opens_detail(server, browser, tmp_path) -> None:
    proc, posts, root, odd = server
    tag = max(posts[odd["missing"]]["tag_string_general"].split(),  # the missing post's commonest tag
              key=lambda t: sum(t in p["tag_string"].split() for p in posts.values()))
    expected = sorted(pid for pid, p in posts.items() if tag in p["tag_string"].split())
    browser.open(f"{proc.url}/?q={tag}")
    browser.wait(f"document.querySelectorAll('#posts .tile').length === {len(expected)}")
    tiles = browser.wait(f"(() => {{ const t = {THUMBS}; return t.every(x => x.width !== undefined) && t; }})()")
    assert [t["id"] for t in tiles] == expected and odd["missing"] in expected and len(expected) > 2
    for t in tiles:
        assert t["src"] == f"/posts/{t['id']}/thumb"
        if t["id"] in (odd["missing"], odd["corrupt"]):
            assert int(t["width"]) == 256  # the placeholder picture, not a broken image
        else:
            assert int(t["width"]) == image_size(t["id"])[0] > 0  # the real picture, decoded
    browser.screenshot(tmp_path / "search.png")

    pid = next(t["id"] for t in tiles if t["id"] not in odd.values())
    browser.click(f'#posts .tile[data-id="{pid}"]')
    browser.wait("document.querySelector('#detail').open")
    caption = browser.wait("(() => { const c = document.querySelector('#detail-caption').textContent;"
                           " return c !== 'loading…' && c; })()")
    tags = browser.wait("(() => { const rows = [...document.querySelectorAll('#detail-tags .tags')];"
                        " return rows.length && Object.fromEntries(rows.map(r => [r.dataset.category,"
                        " [...r.querySelectorAll('a')].map(a => a.textContent)])); })()")
    for category, names in tags.items():
        assert sorted(names) == sorted(posts[pid][f"tag_string_{category}"].split())
    assert set(posts[pid]["tag_string_general"].split()) == set(tags["general"])
    assert posts[pid]["tag_string_general"].split()[0].replace("_", " ") in caption
    assert browser.js("document.querySelector('#detail-bands').textContent")  # quality · year · rating
    width = browser.wait("document.querySelector('#detail-img').dataset.width")
    assert int(width) == image_size(pid)[0]  # the 1024 rendition: this picture is smaller than that
    browser.screenshot(tmp_path / "detail.png")


def test_grid_captions_and_histograms_render(server, browser) -> None:
    proc, _, _, _ = server
    browser.open(f"{proc.url}/?dataset={DATASET}")
    browser.wait("document.querySelectorAll('#grid .card').length === 9")
    cards = browser.wait("""(() => { const c = [...document.querySelectorAll('#grid .card')].map(c => ({
        key: c.dataset.key, src: c.querySelector('img').getAttribute('src'),
        width: c.querySelector('img').dataset.width, caption: c.querySelector('.caption').textContent}));
        return c.every(x => x.width !== undefined) && c; })()""")
    assert [c["key"] for c in cards] == [str(1000 + i) for i in range(9)]
    for i, c in enumerate(cards):
        assert c["src"] == f"/datasets/{DATASET}/samples/{c['key']}/thumb"
        assert int(c["width"]) == 64 + 8 * (i % 3)  # the shard member, decoded
        assert c["caption"].startswith(f"1girl, sample {i}")
    assert browser.js("document.querySelectorAll('#hist-bucket .bar').length") == 3  # three bucket sizes
    assert "9 samples" in browser.js("document.querySelector('#dataset-info').textContent")
    # the card sits closed below the samples
    assert browser.js("!document.querySelector('#card-section').open")
    assert browser.js("document.querySelector('#grid').compareDocumentPosition("
                      "document.querySelector('#card-section')) & Node.DOCUMENT_POSITION_FOLLOWING")


def test_dataset_card_opens_with_pictures_and_plain_text(server, browser) -> None:
    """The card's text and every picture, decoded by the browser, once its <details> is opened;
    a '>' of the card's markdown reads as '>' (no double escaping on the way to the page)."""
    proc, _, root, _ = server
    browser.open(f"{proc.url}/?dataset={BUILT}")
    browser.wait("document.querySelectorAll('#grid .card').length > 0")
    assert browser.js("document.querySelector('#card').children.length") == 0  # not fetched while closed
    browser.click("#card-section summary")
    images = browser.wait(f"""(() => {{ const i = [...document.querySelectorAll('#card img')];
        return i.length === {len(PICTURES)} && i.every(x => x.dataset.width) &&
        i.map(x => [x.getAttribute('src'), Number(x.dataset.width)]); }})()""")
    assert [src.rsplit("/", 1)[1] for src, _ in images] == list(PICTURES)
    for src, width in images:
        assert src.startswith(f"/datasets/{BUILT}/card/")
        with Image.open(root / "datasets" / BUILT / CARD_DIR / src.rsplit("/", 1)[1]) as im:
            assert width == im.width > 0
    card = browser.js("(() => { const c = document.querySelector('#card'); return {text: c.textContent,"
                      " h1: c.querySelector('h1').textContent, h2: [...c.querySelectorAll('h2')].map(h => h.textContent),"
                      " tables: c.querySelectorAll('table').length}; })()")
    assert card["h1"] == BUILT and "Thresholds used" in card["h2"] and card["tables"] > 0
    assert "picture missing" not in card["text"]
    assert "> p" in card["text"]  # the quality table's "> p90"-style bounds
    assert "&gt;" not in card["text"] and "\\>" not in card["text"] and "&amp;" not in card["text"]


def test_a_dataset_without_card_says_so(server, browser) -> None:
    proc, _, _, _ = server
    browser.open(f"{proc.url}/?dataset={DATASET}")
    browser.wait("document.querySelectorAll('#grid .card').length === 9")
    browser.click("#card-section summary")
    text = browser.wait("document.querySelector('#card p.muted')?.textContent")
    assert f"dataset {DATASET} has no card" in text


def test_detail_link_opens_a_post(server, browser) -> None:
    """`/?post=ID` opens the detail view directly (a link to share)."""
    proc, posts, _, odd = server
    pid = odd["missing"]
    browser.open(f"{proc.url}/?post={pid}")
    title = browser.wait("document.querySelector('#detail').open && document.querySelector('#detail-title').textContent")
    assert title == f"Post {pid}"
    assert int(browser.wait("document.querySelector('#detail-img').dataset.width")) == 256  # placeholder
    meta = browser.wait("(() => { const d = [...document.querySelectorAll('#detail-meta dd')].map(x => x.textContent);"
                        " return d.length && d; })()")
    assert posts[pid]["md5"] in meta and json.dumps(posts[pid]["score"]) in meta
