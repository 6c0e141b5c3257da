"""Caption variants in real builds: every sample's json, the .txt choice, budgets, re-caption, exports."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import polars as pl
import pytest

from kohaku_data.assembly.recaption import recaption_dataset
from kohaku_data.assembly.sample_schema import schema_problems
from kohaku_data.captions import caption_posts, compute_thresholds
from kohaku_data.captions.tokens import ClipTokenizer
from kohaku_data.captions.variants import BudgetError
from kohaku_data.config import CaptionConfig, ConfigError, Recipe
from kohaku_data.db import DanbooruDB
from kohaku_data.export import export_dataset
from test_build_support import build, make_inputs, small_recipe

VARIANTS = {
    "txt": "noob",
    "add": [
        {"name": "noob", "kind": "ordered", "order": "noobai"},
        {"name": "anima", "kind": "ordered", "order": "anima", "artist_prefix": "@"},
        {"name": "xml", "kind": "xml", "order": "animagine4", "empty_groups": "keep"},
    ],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    inputs = make_inputs(root, n_posts=24)
    out = root / "ds"
    build(inputs, out, small_recipe(caption={"variants": VARIANTS}))
    return inputs, out


def _samples(out: Path) -> dict[int, dict]:
    found: dict[int, dict] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                found.setdefault(int(key), {})[ext] = tar.extractfile(m).read()
    return found


def test_every_sample_stores_every_variant_with_exact_tokens(built):
    _, out = built
    samples = _samples(out)
    tok = ClipTokenizer()
    assert len(samples) > 10
    for key, members in samples.items():
        meta = json.loads(members["json"])
        assert schema_problems(meta) == []
        assert sorted(meta["captions"]) == ["anima", "kohaku", "noob", "xml"]  # json keys sorted
        assert members["txt"].decode() == meta["captions"]["noob"] == meta["caption"]
        assert "|||" in meta["captions"]["kohaku"] and "|||" not in meta["captions"]["noob"]
        assert meta["captions"]["xml"].startswith("<count>")
        for name, text in meta["captions"].items():
            assert meta["caption_tokens"][name] == tok.count(text), (key, name)
        artists = [a.replace("_", " ") for a in meta["tags"]["artist"]]
        for a in artists:
            assert f"@{a}" in meta["captions"]["anima"]
        kept = meta["captions"]["kohaku"].split("|||")[0]
        assert sorted(t for t in kept.split(", ") if t) == sorted(
            t for t in meta["captions"]["noob"].split(", ")[:kept.count(", ")] if t)  # noobai starts with the kept part
    manifest = pl.read_parquet(out / "manifest.parquet")
    for key, tokens, per in manifest.select("key", "tokens", "variant_tokens").iter_rows():
        meta = json.loads(samples[key]["json"])
        assert tokens == meta["caption_tokens"]["noob"]
        assert per == [meta["caption_tokens"][n] for n in ("kohaku", "noob", "anima", "xml")]
    # a tokens column per variant (Int32, recipe order), equal to the json's counts
    assert [c for c in manifest.columns if c.startswith("tokens_")] == [
        "tokens_kohaku", "tokens_noob", "tokens_anima", "tokens_xml"]
    assert {manifest.schema[c] for c in manifest.columns if c.startswith("tokens_")} == {pl.Int32}
    for row in manifest.iter_rows(named=True):
        meta = json.loads(samples[row["key"]]["json"])
        assert {n: row[f"tokens_{n}"] for n in meta["caption_tokens"]} == meta["caption_tokens"]
    card = (out / "README.md").read_text()
    assert "name: 'anima'" in card and "name: 'caption_tokens'" in card


def test_ordered_in_kohaku_order_rebuilds_todays_caption(built):
    inputs, _ = built
    same = {"add": [{"name": "kohaku", "kind": "kohaku", "max_tokens": 10_000}]}  # rebuilt from the groups
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        plain = CaptionConfig()
        rebuilt = CaptionConfig(variants=same)
        a = caption_posts(db, inputs.ids, plain, compute_thresholds(db, plain), variants=True)
        b = caption_posts(db, inputs.ids, rebuilt, compute_thresholds(db, rebuilt))
    assert a["caption"].to_list() == b["caption"].to_list() == b["variant_kohaku"].to_list()
    assert a["tokens_kohaku"].to_list() == b["tokens_kohaku"].to_list()


def test_budget_trims_rest_by_priority_and_refuses_a_kept_part_over_it(built):
    inputs, _ = built
    tok = ClipTokenizer()
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        base = CaptionConfig()
        full = caption_posts(db, inputs.ids, base, compute_thresholds(db, base), variants=True)
        limit = max(tok.count(c.split("|||")[0] + "|||") for c in full["caption"]) + 4  # every kept part fits
        assert (full["tokens_kohaku"] > limit).any()  # and some captions do not
        budget = CaptionConfig(variants={"add": [{"name": "kohaku", "kind": "kohaku", "max_tokens": limit}]})
        cut = caption_posts(db, inputs.ids, budget, compute_thresholds(db, budget))
        for before, after, tokens, general in zip(full["caption"], cut["caption"], cut["tokens_kohaku"],
                                                  full["tags_general"]):
            assert tokens == tok.count(after) and tokens <= limit
            kept_b, rest_b = before.split("|||")
            kept_a, rest_a = after.split("|||")
            assert kept_a == kept_b  # the kept part is never cut
            rest_before, rest_after = rest_b.split(", "), [t for t in rest_a.split(", ") if t]
            assert [t for t in rest_before if t in rest_after] == rest_after  # whole tags, order kept
            dropped = [t.replace(" ", "_") for t in rest_before if t not in rest_after]
            kept_general = [t.replace(" ", "_") for t in rest_after]
            # most frequent general tags go first: none left is more popular than one dropped
            ranks = {name: i for i, name in enumerate(general)}
            if any(d in ranks for d in dropped) and any(k in ranks for k in kept_general):
                assert max(ranks[d] for d in dropped if d in ranks) < min(ranks[k] for k in kept_general if k in ranks)
        tight = CaptionConfig(variants={"add": [{"name": "kohaku", "kind": "kohaku", "max_tokens": 3}]})
        with pytest.raises(BudgetError, match=r"kept part alone of \d+ posts \(\d+"):
            caption_posts(db, inputs.ids, tight, compute_thresholds(db, tight))


def test_recipe_checks():
    with pytest.raises(ValueError, match="names no variant"):
        CaptionConfig(variants={"txt": "nope"})
    with pytest.raises(ValueError, match="unknown order preset"):
        CaptionConfig(variants={"add": [{"name": "a", "kind": "ordered", "order": "sdxl"}]})
    with pytest.raises(ValueError, match="text_field among caption.text_fields"):
        CaptionConfig(variants={"add": [{"name": "t", "kind": "text"}]})
    for kind in ("xml", "text", "mixed"):  # every kind takes a budget
        extra = {"text_fields": ["nl"]} if kind != "xml" else {}
        CaptionConfig(**extra, variants={"add": [{"name": "x", "kind": kind, "max_tokens": 75}]})
    assert isinstance(Recipe.model_validate({"caption": {"variants": VARIANTS}}), Recipe)
    assert issubclass(BudgetError, Exception) and issubclass(ConfigError, Exception)


def test_recaption_rewrites_variants_and_exports_carry_them(built, tmp_path):
    inputs, out = built
    recipe = small_recipe(caption={"variants": {"txt": "kohaku", "add": [{"name": "anima", "kind": "ordered",
                                                                         "order": "anima"}]}})
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        new = Path(recaption_dataset(out, recipe, db)["out"])
    before, after = _samples(out), _samples(new)
    assert before.keys() == after.keys()
    for key in after:
        image = next(e for e in after[key] if e in ("webp", "png"))
        assert after[key][image] == before[key][image]
        meta = json.loads(after[key]["json"])
        assert sorted(meta["captions"]) == ["anima", "kohaku"] and after[key]["txt"].decode() == meta["captions"]["kohaku"]
    kohya = tmp_path / "kohya"
    export_dataset(out, kohya, "kohya")
    toml = (kohya / "dataset.toml").read_text()
    assert "shuffle_caption = false" in toml  # an ordered .txt keeps its order
    for key, members in before.items():
        assert (kohya / "images" / f"{key}.txt").read_text() == json.loads(members["json"])["captions"]["noob"]
    hf = tmp_path / "hf"
    export_dataset(out, hf, "hf")
    frame = pl.read_parquet(hf / "data")
    assert {"caption_kohaku", "caption_noob", "caption_anima", "caption_xml"} <= set(frame.columns)
    for key, noob, xml in frame.select("key", "caption_noob", "caption_xml").iter_rows():
        meta = json.loads(before[key]["json"])
        assert (noob, xml) == (meta["captions"]["noob"], meta["captions"]["xml"])
    assert "caption_anima" in (hf / "README.md").read_text()


# Every numeric-pass kind, with the artist prefix, a keep separator, punctuation tags.
NUMERIC = {"add": [
    {"name": "noob", "kind": "ordered", "order": "noobai"},
    {"name": "anima", "kind": "ordered", "order": "anima", "artist_prefix": "@"},
    {"name": "xml", "kind": "xml", "order": "animagine4", "artist_prefix": "@"},
    {"name": "plain", "kind": "ordered", "order": ["general", "count", "quality"], "rating": False},
]}


def _variant_configs() -> list[CaptionConfig]:
    return [CaptionConfig(variants=NUMERIC),
            CaptionConfig(variants=NUMERIC, keep_separator=None, tag_order="shuffle", escape_parens=True),
            CaptionConfig(variants=NUMERIC, tag_order="db", keep_separator="<keep>", year_number=True)]


@pytest.mark.parametrize("at", range(3))
def test_numeric_variants_equal_group_lists_and_full_tokenizer(built, at):
    """Numeric-pass strings equal the group-list expressions, and the summed per-piece counts
    equal the full tokenizer on every caption of the set."""
    from kohaku_data.captions import iter_captions
    from kohaku_data.captions.variants import variant_expr

    inputs, _ = built
    config = _variant_configs()[at]
    tok = ClipTokenizer()
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        th = compute_thresholds(db, config)
        frame = caption_posts(db, inputs.ids, config, th)
        grouped = pl.concat(list(_grouped_frames(db, config, th)))
    assert frame.height == len(inputs.ids) and grouped.height == frame.height
    assert frame["variant_kohaku"].to_list() == frame["caption"].to_list()
    for v in config.variants.all():
        texts = frame[f"variant_{v.name}"].to_list()
        if v.kind != "kohaku":
            assert texts == grouped.select(variant_expr(grouped, v, config)).to_series().to_list(), v.name
        assert frame[f"tokens_{v.name}"].to_list() == [tok.count(t) for t in texts], v.name
    assert any("@" in t for t in frame["variant_anima"]) and frame["variant_xml"].str.contains("</count> <").any()


def _grouped_frames(db, config, th):
    """Caption pages with their group lists (g_*), as the string path gets them."""
    from kohaku_data.captions import iter_captions  # noqa: F401 (same pages as caption_posts)
    from kohaku_data.captions.frame import TagSource, parse_page
    from kohaku_data.captions.layout import (ChunkRows, assemble_captions, caption_elements, group_lists,
                                             prepare_tags, resolve_tags)
    from kohaku_data.db.pages import PageFetcher, open_reader

    conn = open_reader(db.path)
    try:
        tags = TagSource(conn, True, lambda t: prepare_tags(t, config))
        with PageFetcher(db.path, None, 1000, with_rids=config.needs_relation_ids) as pages:
            for raw in pages:
                if not raw.count:
                    continue
                posts, rel = parse_page(raw)
                pi, rel = rel.of_posts(posts["id"].to_numpy())
                table = tags.lookup(rel.tag_id)
                found, ti = resolve_tags(table, rel.tag_id)
                frame, pi, row = caption_elements(posts, table, ChunkRows(pi, ti, rel.rid).take(found), config, th)
                out = assemble_captions(frame, pi, row, table, config)
                yield out.hstack(group_lists(pi, row, table, out.height))
    finally:
        conn.close()


def test_piece_sums_are_exact_on_awkward_tags():
    """Tags ending or starting in punctuation, entities, combining marks, final sigma, empty and
    spaced names: joined by ", " the summed piece counts equal the whole caption's count."""
    import random

    from kohaku_data.captions.variants import TokenCounter

    alphabet = ["a", "b", "1", "2", ".", ",", ":", "|", ";", "&amp;", "&", "#", "é", "e\u0301", "\u0301", "Σ", "ς",
                "_", " ", "(", ")", "\\(", ">", "<", "'s", "'", "日", "🎉", "ﬁ", "＃", "&lt", "&#39;", "\u3000"]
    rng = random.Random(5)
    counter, tok = TokenCounter(ClipTokenizer()), ClipTokenizer()
    for _ in range(3000):
        tags = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 6))]
        pieces = [t + ", " for t in tags[:-1]] + [tags[-1]]
        assert sum(counter.count(p) for p in pieces) == tok.count(", ".join(tags)), tags
        xml = "<g>" + ", ".join(tags) + "</g> <h>" + tags[0] + "</h>"
        assert sum(counter.count(p) for p in ["<g>" + pieces[0]] + pieces[1:-1] + [pieces[-1] + "</g> ", "<h>" + tags[0] + "</h>"]
                   if len(tags) > 1) == tok.count(xml) or len(tags) == 1, tags


def test_default_captions_have_no_variant_columns(built):
    inputs, _ = built
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        plain = CaptionConfig()
        th = compute_thresholds(db, plain)
        assert not any(c.startswith(("variant_", "tokens_")) for c in caption_posts(db, inputs.ids, plain, th).columns)
        assert not any(c.startswith(("variant_", "tokens_")) for c in caption_posts(db, [], plain, th).columns)
        asked = caption_posts(db, inputs.ids, plain, th, variants=True)
        assert [c for c in asked.columns if c.startswith(("variant_", "tokens_"))] == ["variant_kohaku", "tokens_kohaku"]
        assert caption_posts(db, [], plain, th, variants=True).columns == asked.columns


@pytest.mark.parametrize("changes", [{}, {"keep_separator": None, "tag_order": "shuffle"}])
def test_stored_token_counts_are_exact_and_spare_the_run(tmp_path, monkeypatch, changes):
    """The prepared tag summary stores each caption row's CLIP counts (text + separator, text
    alone): they equal the full tokenizer, and a run on them counts no tag (every count of the
    kohaku and plain ordered variants comes from the summary), its totals still exact."""
    import numpy as np

    from kohaku_data.captions import iter_captions, summaries
    from kohaku_data.captions.frame import TagSource, parse_page
    from kohaku_data.captions.layout import prepare_tags
    from kohaku_data.captions.parallel import caption_page
    from kohaku_data.db import summary
    from kohaku_data.db.pages import PageFetcher, open_reader
    from kohaku_data.keepers import SUMMARY_KEEPERS
    from kohaku_data.sample import write_sample

    # the bench's three extra variants: anima's `@` artists and xml's group tags are stored too
    config = CaptionConfig(variants={"add": [{"name": "noob", "kind": "ordered", "order": "noobai"},
                                             {"name": "anima", "kind": "ordered", "order": "anima", "artist_prefix": "@"},
                                             {"name": "xml", "kind": "xml", "order": "animagine4"}]}, **changes)
    monkeypatch.setattr(summaries, "STORE_PREPARED_TAGS_FROM", 0)  # as for a 1M-row tag table
    monkeypatch.setattr(summaries, "standard_configs", lambda: [config])
    write_sample(tmp_path, posts=300, seed=3, images=0, migrate=True)
    path = tmp_path / "danbooru.db"
    tok = ClipTokenizer()
    with DanbooruDB.open(path) as db:
        summary.refresh(db, SUMMARY_KEEPERS)
        th = compute_thresholds(db, config)
        conn = open_reader(path)
        try:
            stored = summaries.stored_prepared_tags(conn, config)
            # the table is the layout's: the same recipe without (or with other) variants reads it
            assert summaries.stored_prepared_tags(conn, CaptionConfig(**changes)) is not None
            counts = stored.cache[stored.token_counts_key("clip", config.separator)]
            counted = np.flatnonzero(counts[:, 0] >= 0)
            assert len(counted) > 100 and (counts[counted, 1] >= 0).all()
            texts = stored.strings.gather(counted + stored.caption_start).to_list()
            assert counts[counted, 0].tolist() == [tok.count(t + config.separator) for t in texts]
            assert counts[counted, 1].tolist() == [tok.count(t) for t in texts]
            # the xml / `@` forms of every plain counted row, each as the full tokenizer counts it
            from kohaku_data.captions.layout import row_groups
            from kohaku_data.captions.variants import _form_texts

            separator, forms = stored.cache[stored.token_forms_key("clip")]
            assert separator == config.separator
            groups = row_groups(stored)
            checked = 0
            for r in counted[counted < stored.prefixed_offset].tolist():
                for column, form in enumerate(_form_texts(int(groups[r + stored.caption_start]), separator)):
                    if form is not None:
                        text = stored.strings[r + stored.caption_start]
                        assert forms[r, column] == tok.count(form[0] + text + form[1]), (text, form)
                        checked += 1
                    else:
                        assert forms[r, column] == -1
            assert checked > 500
            source = TagSource(conn, True, lambda t: prepare_tags(t, config), lambda: summaries.stored_prepared_tags(conn, config))
            frames = []
            with PageFetcher(db.path, None, 100, with_rids=config.needs_relation_ids) as pages:
                for raw in pages:
                    if raw.count:
                        frames.append(caption_page(*parse_page(raw), source, config, th, True))
        finally:
            conn.close()
        # pages captioned two at a time in threads sharing the table and its per-job counts
        # (another config: no stored table, every count made in this run)
        threaded = pl.concat(list(iter_captions(db, CaptionConfig(variants=NUMERIC, **changes), th, chunk_size=16,
                                                variants=True)))
    counter = source.job_cache["tokens:clip"]
    assert counter.row_lookups > 1000 and counter.row_counted == 0
    frame = pl.concat(frames)
    for name in ("kohaku", "noob", "anima", "xml"):
        assert frame[f"tokens_{name}"].to_list() == [tok.count(t) for t in frame[f"variant_{name}"].to_list()], name
    assert threaded.height == frame.height
    for name in ("kohaku", "noob", "anima", "xml", "plain"):
        assert threaded[f"tokens_{name}"].to_list() == [tok.count(t) for t in threaded[f"variant_{name}"].to_list()], name


def _card_token_rows(card: str) -> dict[str, list[str]]:
    section = card.split("\n## Caption tokens\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return {r[0].strip().split("`")[1]: [c.strip() for c in r[1:]] for r in rows}


def test_card_shows_token_distribution_per_variant(built):
    """The card's token section: per variant its median, p95, max and the share past 75/150/225,
    equal to the samples' own json counts; the figure marks the windows (drawn, decodes)."""
    _, out = built
    card = (out / "README.md").read_text()
    rows = _card_token_rows(card)
    assert list(rows) == ["kohaku", "noob", "anima", "xml"]
    counts: dict[str, list[int]] = {n: [] for n in rows}
    for members in _samples(out).values():
        for n, c in json.loads(members["json"])["caption_tokens"].items():
            counts[n].append(c)
    for name, cells in rows.items():
        values = pl.Series(counts[name])
        n = values.len()
        assert cells[0] == f"{n:,}"
        assert cells[1] == f"{values.quantile(0.5, 'linear'):g}" and cells[3] == f"{values.max():,}"
        for cell, w in zip(cells[4:], (75, 150, 225)):
            past = int((values > w).sum())
            assert cell == f"{100 * past / n:.1f}% ({past:,})", (name, w)
    assert any(int((pl.Series(v) > 75).sum()) for v in counts.values())  # the shares are not all trivially 0
    assert "`noob` (`.txt`)" in card and "![Caption tokens](card/tokens.png)" in card
    from PIL import Image

    with Image.open(out / "card" / "tokens.png") as im:
        assert im.height > 4 * 150  # one panel per variant
        im.load()


SENTENCES = ("A girl stands by the window in the evening light.", "Her hair is long and silver, tied with a red "
             "ribbon!", "Is that a cat on the sill?", "The room behind her is dark", "and quiet.\nOutside, rain falls "
             "on the rooftops of an old town.")


def test_budgets_for_xml_text_and_mixed(built, tmp_path):
    """xml drops whole rest tags (kept groups intact), text whole sentences from the end (the
    first stays), mixed tags first then sentences; every result fits and is counted exactly;
    a kept part over the budget is refused with the reason."""
    import re
    import shutil

    from kohaku_data.captions.variants import sentence_cuts
    from kohaku_data.curation.attached import attach_column
    from kohaku_data.curation.captions import curated_thresholds

    inputs, _ = built
    db_path = tmp_path / "danbooru.db"
    shutil.copy(inputs.db, db_path)
    texts = {i: " ".join(SENTENCES[: 1 + k % len(SENTENCES)]) for k, i in enumerate(inputs.ids)}
    pl.DataFrame({"id": list(texts), "text": list(texts.values())}).write_parquet(tmp_path / "t.parquet")
    tok = ClipTokenizer()
    first = tok.count(SENTENCES[0])
    with DanbooruDB.open(db_path) as db:
        attach_column(db, tmp_path / "t.parquet", "nl")

        def run(budgets: dict[str, int | None]) -> pl.DataFrame:
            add = [{"name": "x", "kind": "xml", "order": "animagine4"},  # (half/keep: kept empty groups count too)
                   {"name": "kx", "kind": "xml", "order": ["count", "character", "copyright", "artist"]},
                   {"name": "t", "kind": "text"}, {"name": "m", "kind": "mixed", "order": "noobai"},
                   {"name": "km", "kind": "ordered", "order": ["count", "character", "copyright", "artist"]}]
            for v in add:
                if budgets.get(v["name"]):
                    v["max_tokens"] = budgets[v["name"]]
            config = CaptionConfig(text_fields=("nl",), text_joiner=" ", variants={"add": add})
            return caption_posts(db, inputs.ids, config, curated_thresholds(db, config))

        full = run({})
        kept_m = [tok.count(k + " " + SENTENCES[0]) for k in full["variant_km"]]
        limits = {"x": max(full["tokens_kx"]) + 3, "t": first + 2, "m": max(kept_m) + 2}
        for name, limit in limits.items():
            assert (full[f"tokens_{name}"] > limit).any() and (name != "t" or (full[f"tokens_{name}"] <= limit).any())
        cut = run(limits)
        for name in limits:
            assert cut[f"tokens_{name}"].to_list() == [tok.count(t) for t in cut[f"variant_{name}"]]
            assert (cut[f"tokens_{name}"] <= limits[name]).all()
        groups = re.compile(r"<(\w+)>(.*?)</\1>")
        for before, after, kept in zip(full["variant_x"], cut["variant_x"], full["variant_kx"]):
            b, a = dict(groups.findall(before)), dict(groups.findall(after))
            for g in ("count", "character", "copyright", "artist"):
                assert a.get(g) == b.get(g)  # kept groups never cut
            for g, tags in a.items():  # rest groups: whole tags, in order
                assert [t for t in b[g].split(", ") if t in tags.split(", ")] == [t for t in tags.split(", ") if t]
            assert before == after or tok.count(before) > limits["x"]
        for before, after in zip(full["variant_t"], cut["variant_t"]):
            assert after == before or (after in [before[:c] for c in sentence_cuts(before)]
                                       and tok.count(before) > limits["t"])
            assert after.startswith(SENTENCES[0])
        for before, after, kept, text in zip(full["variant_m"], cut["variant_m"], full["variant_km"], full["text_nl"]):
            tags, _, rest = after.partition(" " + SENTENCES[0])
            assert after.startswith(kept) and (" " + SENTENCES[0] + rest) == " " + SENTENCES[0] + rest
            if len(rest) < len(text) - len(SENTENCES[0]):  # a sentence went: every rest tag went first
                assert tags == kept
        assert any(len(a) < len(b) for a, b in zip(cut["variant_t"], full["variant_t"]))
        for name, reason in (("t", "first sentence"), ("x", "artist groups"), ("m", "first sentence")):
            with pytest.raises(BudgetError, match=rf"kept part alone of \d+ posts \(\d+.*{reason}"):
                run({name: 2})
