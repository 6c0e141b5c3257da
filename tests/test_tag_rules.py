"""Tag cleanup (aliases, pruning, implications, year numbers) vs a plain reference: the rules are
applied by hand to a copy of the DB's relations, and the plain caption reference of that copy
must equal the engine's captions of the original with the options on."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.captions import compute_thresholds, iter_captions
from kohaku_data.curation.captions import curated_thresholds
from kohaku_data.captions.reference import reference_captions
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB
from kohaku_data.db.importer import import_files
from test_captions import make_db


def _relation_files(tmp: Path, names: list[str], seed: int) -> tuple[Path, Path, list, list]:
    """Random API-format implications (chains, a cycle, non-active ones) and aliases."""
    rng = random.Random(seed)
    pool = [n for n in names if n.strip()]
    imps, aliases = [], []
    for i in range(40):
        a, b = rng.sample(pool, 2)
        imps.append({"id": i + 1, "antecedent_name": a, "consequent_name": b,
                     "status": rng.choice(["active", "active", "active", "deleted"])})
    a, b = rng.sample(pool, 2)
    imps += [{"id": 100, "antecedent_name": a, "consequent_name": b, "status": "active"},
             {"id": 101, "antecedent_name": b, "consequent_name": a, "status": "active"}]  # a cycle
    for i in range(8):
        a, b = rng.sample(pool, 2)
        aliases.append({"id": i + 1, "antecedent_name": a, "consequent_name": b,
                        "status": rng.choice(["active", "active", "pending"])})
    aliases.append({"id": 50, "antecedent_name": "no_such_tag_anywhere", "consequent_name": pool[0], "status": "active"})
    imp_path, alias_path = tmp / "tag_implications.json", tmp / "tag_aliases.json"
    imp_path.write_text(json.dumps(imps))
    alias_path.write_text("\n".join(json.dumps(a) for a in aliases))  # JSONL works too
    return imp_path, alias_path, imps, aliases


def _reference_relations(conn: sqlite3.Connection, config: CaptionConfig) -> list[tuple[int, int, int]]:
    """(rid, post, tag) after the rules, by hand: alias, prune, then drop what another tag implies."""
    by_name = dict(conn.execute("SELECT name, id FROM tag"))
    name_of = {v: k for k, v in by_name.items()}
    info = {tid: (t, pop) for tid, t, pop in conn.execute("SELECT id, type, popularity FROM tag")}
    alias = dict(conn.execute("SELECT alias, tag_name FROM kdata_tag_alias")) if config.resolve_aliases else {}
    edges: dict[str, set[str]] = {}
    if config.drop_implied:
        for a, b in conn.execute("SELECT antecedent, consequent FROM kdata_tag_implication"):
            a, b = alias.get(a, a), alias.get(b, b)
            if a != b:
                edges.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    out, by_post = [], {}
    for rid, pid, tid in conn.execute("SELECT id, post_id, tag_id FROM posttagrelation ORDER BY id"):
        name = name_of.get(tid)
        if name is not None and name in alias and alias[name] in by_name:
            tid = by_name[alias[name]]
        by_post.setdefault(pid, {}).setdefault(tid, rid)  # first relation of a pair wins
    for pid, tags in by_post.items():
        kept = {t: r for t, r in tags.items()
                if not (t in info and info[t][0] == 0 and info[t][1] < config.min_general_posts)}
        implied = set()
        for t in kept:
            name = name_of.get(t)
            if name is not None:
                implied |= {x for x in reach(name) if name not in reach(x)}  # cycles ignored
        out += [(r, pid, t) for t, r in kept.items() if name_of.get(t) not in implied]
    return out


CONFIGS = [
    CaptionConfig(resolve_aliases=True),
    CaptionConfig(drop_implied=True),
    CaptionConfig(min_general_posts=8, tag_order="db"),
    CaptionConfig(resolve_aliases=True, drop_implied=True, min_general_posts=6, tag_order="shuffle", shuffle_seed=3),
    CaptionConfig(resolve_aliases=True, drop_implied=True, tag_order="alpha", keep_separator=None),
    CaptionConfig(resolve_aliases=True, tag_order="db"),  # an aliased pair keeps its first relation id
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_rules_match_reference(tmp_path: Path, seed: int, config: CaptionConfig) -> None:
    db = make_db(tmp_path / "a.db", seed)
    names = [r[0] for r in db.connection().execute("SELECT name FROM tag")]
    imp, alias, _, _ = _relation_files(tmp_path, names, seed)
    summary = import_files(db, [imp, alias])
    assert summary.relations.implications > 0 and summary.relations.aliases > 0
    th = curated_thresholds(db, config)
    ours = pl.concat(list(iter_captions(db, config, th, chunk_size=41))).to_dicts()
    # the reference: same DB, relations rewritten by hand, options off
    db.close()
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")
    conn = sqlite3.connect(tmp_path / "b.db")
    rows = _reference_relations(conn, config)
    assert rows != conn.execute("SELECT id, post_id, tag_id FROM posttagrelation ORDER BY id").fetchall()
    conn.execute("DELETE FROM posttagrelation")
    conn.executemany("INSERT INTO posttagrelation (id, post_id, tag_id) VALUES (?,?,?)", rows)
    conn.commit()
    conn.close()
    plain = config.model_copy(update={"resolve_aliases": False, "drop_implied": False, "min_general_posts": 0})
    ref_db = DanbooruDB.open(tmp_path / "b.db", readonly=True)
    expected = reference_captions(ref_db, [r["id"] for r in ours], plain, th)
    ref_db.close()
    assert len(expected) == len(ours)
    for got, want in zip(ours, expected):
        assert {k: got[k] for k in want} == want


def test_import_keeps_active_only_and_removes_retired(empty_db: DanbooruDB, tmp_path: Path) -> None:
    path = tmp_path / "tag_implications.json"
    records = [
        {"id": 1, "antecedent_name": "cat_ears", "consequent_name": "animal_ears", "status": "active"},
        {"id": 2, "antecedent_name": "dog_ears", "consequent_name": "animal_ears", "status": "active"},
        {"id": 3, "antecedent_name": "x y", "consequent_name": "z", "status": "active"},  # bad name
        {"id": 4, "antecedent_name": "a", "status": "active"},  # missing consequent
    ]
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")  # one per line
    summary = import_files(empty_db, [path])
    assert summary.rejected == 2
    rejects = [json.loads(line) for line in summary.rejects_path.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [4, 5]
    path.write_text(json.dumps([
        {"id": 2, "antecedent_name": "dog_ears", "consequent_name": "animal_ears", "status": "deleted"}]))
    summary = import_files(empty_db, [path])
    assert summary.relations.removed == 1
    rows = empty_db.connection().execute("SELECT antecedent, consequent FROM kdata_tag_implication").fetchall()
    assert rows == [("cat_ears", "animal_ears")]


def test_year_number_tags(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db", 5)
    for order in ("popularity", "shuffle"):
        config = CaptionConfig(year_number=True, tag_order=order)
        th = curated_thresholds(db, config)
        frame = pl.concat(list(iter_captions(db, config, th, chunk_size=50)))
        base = pl.concat(list(iter_captions(db, CaptionConfig(tag_order=order), compute_thresholds(db, CaptionConfig()))))
        for got, plain, year_tag, created in zip(frame["caption"], base["caption"], frame["year_tag"],
                                                 frame["created_at"]):
            if year_tag is None:
                assert got == plain
            else:  # "…, newest, year 2023, …": right after the period tag, nothing else moves
                year = created[:4]
                assert got == plain.replace(f"{year_tag}", f"{year_tag}, year {year}", 1)


def test_rules_are_in_the_lock_summary(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db", 0)
    names = [r[0] for r in db.connection().execute("SELECT name FROM tag")]
    imp, alias, _, _ = _relation_files(tmp_path, names, 0)
    import_files(db, [imp, alias])
    config = CaptionConfig(drop_implied=True, resolve_aliases=True)
    first = curated_thresholds(db, config).to_dict()
    assert first["curation"]["tag_rules"]["implied_pairs"] > 0
    assert curated_thresholds(db, config).to_dict() == first  # deterministic
    assert "curation" not in curated_thresholds(db, CaptionConfig()).to_dict()  # off: lock as before
    assert curated_thresholds(db, CaptionConfig()) == compute_thresholds(db, CaptionConfig())
    with pytest.raises(ValueError, match="curated_thresholds"):  # captions never caption uncurated
        compute_thresholds(db, config)
    imp.write_text(json.dumps([{"id": 999, "antecedent_name": names[1], "consequent_name": names[2],
                                "status": "active"}]))
    import_files(db, [imp])
    assert curated_thresholds(db, config).to_dict()["curation"]["tag_rules"]["sha256"] != \
        first["curation"]["tag_rules"]["sha256"]


def test_sync_replaces_relations_with_the_active_listing(empty_db: DanbooruDB) -> None:
    from fake_danbooru import FakeDanbooru
    from kohaku_data.service.client import ClientSettings, DanbooruClient
    from kohaku_data.service.sync import sync_tag_relations

    fast = ClientSettings(rate=10_000, timeout=5, max_failures=2, backoff_base=0.001, backoff_max=0.01)
    with FakeDanbooru({}) as server:
        server.relations["/tag_implications.json"] = [
            {"id": i, "antecedent_name": f"a{i}", "consequent_name": f"b{i}", "status": s}
            for i, s in enumerate(["active"] * 1500 + ["deleted"] * 3, start=1)]  # two pages of 1000
        server.relations["/tag_aliases.json"] = [
            {"id": 7, "antecedent_name": "kitty_ears", "consequent_name": "cat_ears", "status": "active"},
            {"id": 8, "antecedent_name": "old", "consequent_name": "new", "status": "pending"}]
        from kohaku_data.db.migrate import migrate

        migrate(empty_db)
        with empty_db.database.atomic():  # a pair the server no longer lists goes away
            empty_db.connection().execute("INSERT INTO kdata_tag_alias VALUES ('stale', 'gone')")
        with DanbooruClient(server.url, fast) as client:
            stored = sync_tag_relations(empty_db, client)
        pages = [r for r in server.requests if r["path"] == "/tag_implications.json"]
    assert stored["implications"] == 1500 and stored["aliases"] == 1
    assert len(pages) == 3 and all(r["params"]["search[status]"] == "active" for r in pages)
    conn = empty_db.connection()
    assert conn.execute("SELECT count(*) FROM kdata_tag_implication").fetchone()[0] == 1500
    assert conn.execute("SELECT alias, tag_name FROM kdata_tag_alias").fetchall() == [("kitty_ears", "cat_ears")]


def test_implied_sets_expand_in_slices(tmp_path: Path, monkeypatch) -> None:
    """The bounded-memory expansion gives the same result as one slice."""
    from kohaku_data.curation import tagrules

    db = make_db(tmp_path / "a.db", 4)
    names = [r[0] for r in db.connection().execute("SELECT name FROM tag")]
    imp, alias, _, _ = _relation_files(tmp_path, names, 4)
    import_files(db, [imp, alias])
    rules = tagrules.load_tag_rules(db, aliases=True, implications=True, min_general_posts=0)
    post, tag = (np.array(c, dtype=np.int64) for c in zip(*db.connection().execute(
        "SELECT post_id, tag_id FROM posttagrelation ORDER BY id")))
    whole = rules.apply(post, tag)
    monkeypatch.setattr(tagrules, "_EXPAND", 3)
    sliced = rules.apply(post, tag)
    assert (~whole[1]).sum() > 0 and np.array_equal(whole[0], sliced[0]) and np.array_equal(whole[1], sliced[1])
