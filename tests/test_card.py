"""The dataset card every build and re-caption writes: README.md (🤗 header + plain words) and
card/*.png, from the folder's own files, byte-identical for the same build."""

from __future__ import annotations

import json
import re
import tarfile

import polars as pl
import pytest
from PIL import Image

from kohaku_data.assembly.card import CARD_DIR, PICTURES, esc, write_card
from kohaku_data.assembly.card_data import json_members, top_tags
from kohaku_data.assembly.recaption import recaption_dataset
from kohaku_data.db import DanbooruDB
from test_build_support import build, make_inputs, small_recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    inputs = make_inputs(root, n_posts=24)
    out = root / "ds"
    build(inputs, out)
    return inputs, out


def _card_bytes(folder) -> dict[str, bytes]:
    files = {"README.md": (folder / "README.md").read_bytes()}
    files.update({p.name: p.read_bytes() for p in sorted((folder / CARD_DIR).iterdir())})
    return files


def test_readme_has_the_hf_header_and_every_section(built):
    _, out = built
    text = (out / "README.md").read_text()
    lock = json.loads((out / "dataset.lock").read_text())
    header, body = re.match(r"\A---\n(.*?)\n---\n(.*)\Z", text, re.S).groups()
    yaml = pytest.importorskip("yaml")
    meta = yaml.safe_load(header)
    assert meta["configs"][0]["data_files"][0]["path"] == "t-*.tar"
    stats = json.loads((out / "stats.json").read_text())
    assert meta["dataset_info"]["splits"][0]["num_examples"] == stats["samples"] > 0
    for heading in ("# t-1", "## At a glance", "## Thresholds used", "## Pictures", "## Rejects", "## Files",
                    "## Loading", "## Recipe (every key)"):
        assert f"\n{heading}\n" in body
    assert lock["recipe_sha256"] in body and lock["db_fingerprint"] in body and lock["inputs_sha256"] in body
    assert f"**{stats['samples']:,} samples**" in body
    general = lock["caption_thresholds"]["by_rating"].get("general")
    if general:  # the quality table shows the thresholds the lock recorded
        assert f"| masterpiece | > p95 | {float(general[0]):.4g} |" in body
    for tag, edge in zip(lock["recipe"]["caption"]["year_tags"], lock["caption_thresholds"]["year_edges"]):
        assert f"| {tag} | {edge} |" in body


def test_build_without_variants_shows_kohaku_tokens_only(built):
    _, out = built
    manifest = pl.read_parquet(out / "manifest.parquet")
    assert not [c for c in manifest.columns if c.startswith("tokens_")]  # no per-variant columns added
    body = (out / "README.md").read_text()
    section = body.split("\n## Caption tokens\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == 1 and rows[0].startswith("| `kohaku` (`.txt`) | ")
    tokens = manifest["tokens"]
    past = int((tokens > 75).sum())
    assert rows[0].split(" | ")[5] == f"{100 * past / tokens.len():.1f}% ({past:,})"


def test_rejects_table_counts_every_reason_with_examples(built):
    _, out = built
    body = (out / "README.md").read_text()
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert rejects.height > 0
    for reason, n in rejects.group_by("reason").len().iter_rows():
        row = re.search(rf"^\| `{reason}` \| {n:,} \| (.*) \|$", body, re.M)
        assert row, reason
        first = rejects.filter(pl.col("reason") == reason).sort("key")["key"][0]
        assert row.group(1).startswith(f"{first}: ")


def test_pictures_are_linked_and_decode(built):
    _, out = built
    body = (out / "README.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(card/([a-z_]+\.png)\)", body)
    assert linked == list(PICTURES)
    assert sorted(p.name for p in (out / CARD_DIR).iterdir()) == sorted(linked)
    for name in linked:
        with Image.open(out / CARD_DIR / name) as im:
            assert im.format == "PNG" and im.width >= 800 and im.height >= 150
            im.load()
            assert sum(1 for n in im.convert("L").histogram() if n) > 10  # drawn, not blank
            assert "Software" not in im.info  # no version text in the file


def test_two_builds_give_identical_card_bytes(built, tmp_path):
    inputs, out = built
    again = tmp_path / "again"
    build(inputs, again, workers=2)
    assert _card_bytes(again) == _card_bytes(out)


def test_top_tags_come_from_the_samples_json(built):
    _, out = built
    counts: dict[tuple[str, str], int] = {}
    docs = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            docs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".json")]
    manifest = pl.read_parquet(out / "manifest.parquet")
    assert json_members(out, manifest) == docs  # read at the manifest's offsets: exactly tarfile's members
    for doc in docs:
        for category, tags in json.loads(doc)["tags"].items():
            for tag in tags:
                counts[(category, tag)] = counts.get((category, tag), 0) + 1
    top = top_tags(out, manifest, 3)
    assert top.height > 0
    for category, tag, n in top.iter_rows():
        assert counts[(category, tag)] == n
        better = [c for (cat, _), c in counts.items() if cat == category and c > n]
        assert len(better) < 3


def test_recaption_writes_its_own_card(built):
    inputs, out = built
    recipe = small_recipe(caption={"tag_order": "alpha"})
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        new = recaption_dataset(out, recipe, db)["out"]
    from pathlib import Path

    new = Path(new)
    body = (new / "README.md").read_text()
    assert recipe.sha256() in body and "| `caption.tag_order` | `alpha` |" in body
    old_cards, new_cards = _card_bytes(out), _card_bytes(new)
    assert old_cards["buckets.png"] == new_cards["buckets.png"]  # same images, same buckets
    assert old_cards["README.md"] != new_cards["README.md"]


def test_stale_pictures_go_and_data_text_is_escaped(built, tmp_path):
    _, out = built
    (out / CARD_DIR / "old_plot.png").write_bytes(b"stale")
    write_card(out, json.loads((out / "dataset.lock").read_text()))
    assert not (out / CARD_DIR / "old_plot.png").exists()
    assert esc("<img src=x>|`a`\nb") == "\\<img src=x\\>\\|\\`a\\` b"


NASTY = ["score:>5", "<img src=x>", "a|b", "`tick`", "``x`", "a & b &amp; c", "*bold* _it_ ~~s~~", "[l](u)",
         "cat_ears ^_^", "back\\slash", " , ", "#1 tag", "x\ny"]


@pytest.mark.parametrize("text", NASTY)
def test_data_text_renders_as_written_in_a_table_cell(text):
    """What `kdata serve` renders (markdown-it, as the Hub and GitHub do): esc'd text and code spans
    show the text itself — no entity as text (`&gt;`), no markup, no broken column."""
    import html

    from markdown_it import MarkdownIt

    from kohaku_data.assembly.card import code

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    page = md.render(f"| a | b |\n|---|---|\n| {esc(text)} | {code(text)} |\n")
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert len(cells) == 2, page
    shown = text.replace("\n", " ")
    assert html.unescape(cells[0]) == shown.strip(), page
    assert cells[1].startswith("<code>") and html.unescape(cells[1][6:-7]) == shown, page


def test_a_build_with_no_samples_still_explains_itself(tmp_path):
    """A query no post matches: the card still says so, and every picture is drawn (with a note)."""
    inputs = make_inputs(tmp_path, n_posts=12)
    out = tmp_path / "ds"
    assert build(inputs, out, small_recipe(query="score:>100000")).samples == 0
    body = (out / "README.md").read_text()
    assert "**0 samples** in 0 webdataset shards" in body and "This build holds no samples" in body
    for name in PICTURES:
        with Image.open(out / CARD_DIR / name) as im:
            im.load()
            assert im.width > 0


def test_attached_score_thresholds_are_a_table(tmp_path):
    """An aesthetic score attached to the DB and used by the recipe: its thresholds, as the lock
    records them, are a table of the card like quality's."""
    from typer.testing import CliRunner

    from kohaku_data.cli import app

    inputs = make_inputs(tmp_path, n_posts=16)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "migrate", "--db", str(inputs.db)]).exit_code == 0
    scores = tmp_path / "aesthetic.csv"
    scores.write_text("id,aesthetic\n" + "".join(f"{k},{(k * 37) % 100 / 10}\n" for k in inputs.ids))
    attached = runner.invoke(app, ["db", "attach", str(scores), "--name", "aesthetic", "--db", str(inputs.db)])
    assert attached.exit_code == 0, attached.output
    out = tmp_path / "ds"
    build(inputs, out, small_recipe(caption={"attached_tags": [{"column": "aesthetic"}]}))
    rule = json.loads((out / "dataset.lock").read_text())["caption_thresholds"]["curation"]["attached_tags"]["aesthetic"]
    body = (out / "README.md").read_text()
    assert "**aesthetic** (attached column;" in body
    groups = [g for g in ("general", "sensitive", "questionable", "explicit") if g in rule["by_group"]]
    for i, band in enumerate(rule["bands"][:-1]):
        cells = " | ".join(f"{float(rule['by_group'][g][i]):.4g}" for g in groups)
        assert f"| {band} | > p{rule['percentiles'][i]:g} | {cells} |" in body


def test_no_picture_text_runs_off_the_edge_with_long_tag_names(built):
    """Real franchise names are long ("idolmaster_cinderella_girls_u149"): every picture keeps a white
    border, so no panel title (the copyright one, top right) or label is cut at the figure's edge."""
    import dataclasses
    import io

    import numpy as np

    from kohaku_data.assembly.card_data import card_facts
    from kohaku_data.assembly.card_plots import render_plots

    _, out = built
    facts = card_facts(out, json.loads((out / "dataset.lock").read_text()))
    long_names = ["idolmaster_cinderella_girls_u149", "the_legend_of_zelda:_breath_of_the_wild",
                  "mahou_shoujo_madoka_magica_(anime)", "fate/grand_order", "touhou"]
    rows = [(c, f"{name}_{c}" if c != "copyright" else name, 50 - i)
            for c in ("artist", "character", "copyright", "general", "meta") for i, name in enumerate(long_names)]
    tags = pl.DataFrame(rows, schema={"category": pl.String, "tag": pl.String, "n": pl.Int64}, orient="row")
    pngs = render_plots(dataclasses.replace(facts, tags=tags.cast(facts.tags.schema)))
    for name, data in pngs.items():
        grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        border = np.concatenate([grey[:3].ravel(), grey[-3:].ravel(), grey[:, :3].ravel(), grey[:, -3:].ravel()])
        assert (border > 200).all(), f"{name}: something is drawn at the picture's edge (cut off)"
