"""The dataset card: the ONE writer of a dataset folder's `README.md` and its `card/*.png`.

    write_card(Path("datasets/demo-1"), lock)   # every build and re-caption, before dataset.lock

The README is a 🤗 dataset card: the YAML header of `sample_schema.hf_yaml_header` (configs /
data_files over the shards, the features of the json), then in plain words what the folder
holds and how it was made — recipe and hash, DB fingerprint and date range, counts, the
thresholds actually used, rejects with examples — and the pictures of `card_plots`. It is made
from the folder's files and the lock dict alone (`card_data`), holds no time or path, and the
same build gives the same bytes. Values that come from the data (tags, file names, details) are
escaped, so the markdown renders the same on the Hub, on GitHub and in `kdata serve`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kohaku_data.assembly.card_data import TOKEN_WINDOWS, CardFacts, card_facts, token_summary
from kohaku_data.assembly.card_plots import render_plots
from kohaku_data.assembly.lock import write_atomic
from kohaku_data.captions.thresholds import RATING_NAMES

README_NAME = "README.md"
CARD_DIR = "card"
PICTURE_RE = re.compile(r"^[a-z_]+\.png$")
# Picture file → (heading, what it answers); README order.
PICTURES = {
    "buckets.png": ("Buckets", "How many samples each aspect-ratio bucket holds, from the tallest to the widest."),
    "shares.png": ("Quality, year and rating", "The share of each quality, year and rating tag in the captions."),
    "year_quality.png": ("Quality per year", "The quality mix of each year's posts: does one era dominate a band?"),
    "tags.png": ("Top tags", "The most frequent artists, characters, copyrights, general and meta tags."),
    "tokens.png": ("Caption tokens", "CLIP tokens per caption of each stored variant; the dashed lines are "
                   "sd-scripts' 75 / 150 / 225-token windows (the table under Caption tokens gives the shares)."),
    "scores.png": ("Score and favourites", "Distributions of the posts' score and fav_count (the quality metrics)."),
    "rejects.png": ("Rejects", "Inputs left out of the dataset, by reason (examples in the table below)."),
    "artifacts.png": ("Source artifacts", "What the kept sources already carried: JPEG quality, upscale "
                      "factor, JPEG history and palette shares, and what the recipe's `[artifacts]` rules did."),
}


@dataclass(frozen=True)
class Card:
    readme: Path
    pictures: tuple[Path, ...]


def write_card(folder: Path, lock: dict[str, Any], json_docs: list[str] | None = None) -> Card:
    """Write `card/*.png` then `README.md` into `folder` (atomically each); stale pictures go.
    `json_docs`: the samples' `.json` members, when the shards are not in `folder` (see card_facts)."""
    folder = Path(folder)
    facts = card_facts(folder, lock, json_docs)
    pngs = render_plots(facts)
    card_dir = folder / CARD_DIR
    card_dir.mkdir(exist_ok=True)
    for old in card_dir.glob("*.png"):
        if old.name not in pngs:
            old.unlink()
    for name, data in pngs.items():
        write_atomic(card_dir / name, data)
    readme = folder / README_NAME
    write_atomic(readme, card_markdown(facts, list(pngs)).encode())
    return Card(readme, tuple(card_dir / name for name in pngs))


def card_markdown(facts: CardFacts, pictures: list[str]) -> str:
    parts = [
        _yaml_header(facts.index, facts.recipe), _title(facts), _overview(facts), _thresholds(facts),
        _tokens(facts), _pictures(pictures), _rejects(facts), _artifacts(facts), latents_section(facts.latents),
        _files(facts), _loading(facts), _recipe_table(facts),
    ]
    return "\n".join(p for p in parts if p).rstrip() + "\n"


def _yaml_header(index: dict[str, Any], recipe: dict[str, Any]) -> str:
    from kohaku_data.assembly.sample_schema import hf_yaml_header, variants_of

    return hf_yaml_header(index, variants_of(recipe))


# -- sections ----------------------------------------------------------------------------------
def _title(facts: CardFacts) -> str:
    recipe = facts.recipe
    lines = [f"# {esc(recipe.get('name', '?'))}-{esc(recipe.get('version', '?'))}", ""]
    if recipe.get("description"):
        lines += [f"> {esc(recipe['description'])}", ""]
    n, shards = facts.stats.get("samples", 0), len(facts.index.get("shardlist", []))
    lines += [
        f"A kohaku-data (`kdata build`) dataset for anime text-to-image training: "
        f"**{n:,} samples** in {shards:,} webdataset shards ({human_bytes(facts.stats.get('bytes', 0))}). "
        "Each sample is one Danbooru post: its image, resized once (LANCZOS) into an aspect-ratio bucket "
        "and stored losslessly, its caption (`.txt`) and its metadata (`.json`). Everything below was "
        "computed from this folder's own files; `dataset.lock` holds the full record.",
        "",
    ]
    return "\n".join(lines)


def _overview(facts: CardFacts) -> str:
    lock, stats, recipe = facts.lock, facts.stats, facts.recipe
    first, last = facts.date_range
    shards = [s["url"] for s in facts.index.get("shardlist", [])]
    rejects = facts.rejects
    reject_text = ", ".join(f"{esc(r)} {n:,}" for r, n in zip(rejects["reason"], rejects["n"]))
    tool = lock.get("toolchain", {})
    rows = [
        ("recipe", f"{code(recipe.get('name', '?'))} version {code(recipe.get('version', '?'))}, "
                   f"sha256 `{lock.get('recipe_sha256', '?')}`"),
        ("query", code(recipe['query']) if recipe.get("query") else "every post of the DB that has a file"),
        ("DB fingerprint", f"`{lock.get('db_fingerprint', '?')}`"),
        ("DB sources", "; ".join(f"{code(s['name'])} ({s['size']:,} bytes, sha256 `{s['sha256']}`)"
                                 for s in lock.get("db_sources", [])) or "not recorded"),
        ("posts dated", f"{first} … {last}" if first else "no dated posts"),
        ("inputs sha256", f"`{lock.get('inputs_sha256', '?')}`"),
        ("samples", f"{stats.get('samples', 0):,}"),
        ("shards", f"{len(shards):,}" + (f" ({code(shards[0])} … {code(shards[-1])})" if shards else "")),
        ("bytes", f"{stats.get('bytes', 0):,} in shards ({human_bytes(stats.get('bytes', 0))}), "
                  f"{stats.get('image_bytes', 0):,} of them image bytes"),
        ("rejects", f"{int(rejects['n'].sum()):,}" + (f" ({reject_text})" if reject_text else "")),
        ("images", f"bucket preset {code(_get(recipe, 'image.bucket'))}, codec {code(_get(recipe, 'image.codec'))}"),
        *((f"level {code(name)}", ", ".join(f"{b} {n:,}" for b, n in counts.select("bucket", "n").iter_rows()))
          for name, counts in facts.level_buckets.items()),  # `[image] levels`: samples per bucket
        ("built with", f"kdata {esc(lock.get('kdata_version', '?'))}"
                       + "".join(f", {esc(k)} {esc(v)}" for k, v in sorted(tool.items()) if v)),
    ]
    return "\n".join(["## At a glance", "", *_table(["", ""], rows), ""])


def _thresholds(facts: CardFacts) -> str:
    caption = facts.recipe.get("caption", {})
    t = facts.lock.get("caption_thresholds") or {}
    lines = ["## Thresholds used", ""]
    lines += _quality_table(caption, t)
    lines += _year_table(caption, t)
    lines += _attached_tables(t.get("curation") or {})
    for key in sorted(k for k in facts.lock if k.endswith("_thresholds") and k != "caption_thresholds"):
        flat = flatten(facts.lock[key])
        lines += [f"**{esc(key.removesuffix('_thresholds').replace('_', ' ').title())}** (from `dataset.lock`, `{key}`):", ""]
        lines += _table(["key", "value"], [(code(k), _show(v)) for k, v in flat.items()]) + [""]
    return "\n".join(lines)


def _quality_table(caption: dict[str, Any], t: dict[str, Any]) -> list[str]:
    if not caption.get("quality", True) or not t.get("by_rating"):
        return ["**Quality**: no quality tags in this recipe.", ""]
    bands, pcts = list(caption.get("quality_bands", ())), list(t.get("percentiles", ()))
    ratings = [r for r in RATING_NAMES if r in t["by_rating"]]
    ratings += sorted(set(t["by_rating"]) - set(ratings))
    rows = []
    for i, band in enumerate(bands):
        if i < len(pcts):
            rows.append((esc(band), f"> p{pcts[i]:g}", *(_num(t["by_rating"][r][i]) for r in ratings)))
        else:
            rows.append((esc(band), "the rest", *("" for _ in ratings)))
    counts = t.get("counts", {})
    lines = [f"**Quality** (metric {code(t.get('metric', '?'))}; a post gets the best band whose threshold its "
             f"metric is strictly above; thresholds are the {code(t.get('interpolation', 'linear'))} percentiles "
             "of the DB's posts of the same rating):", ""]
    lines += _table(["band", "percentile", *[f"{r} ({counts.get(r, 0):,} posts)" for r in ratings]], rows)
    if t.get("by_cohort"):
        lines += ["", f"{len(t['by_cohort'])} (rating, year) cohorts with at least "
                      f"{caption.get('cohort_min_posts', '?')} posts have thresholds of their own (in `dataset.lock`)."]
    if t.get("cutoff_date"):
        lines += ["", f"Posts written after {t['cutoff_date']} get no quality tag (their favourites are still growing)."]
    return lines + [""]


def _attached_tables(curation: dict[str, Any]) -> list[str]:
    """Percentile tags from attached columns (an aesthetic score …), ruled like quality, and any
    other curation rules the lock records."""
    lines: list[str] = []
    for column, t in sorted((curation.get("attached_tags") or {}).items()):
        groups = [g for g in (*RATING_NAMES, "all") if g in t.get("by_group", {})]
        groups += sorted(set(t.get("by_group", {})) - set(groups))
        pcts, counts = list(t.get("percentiles", ())), t.get("counts", {})
        rows = [(esc(band), f"> p{pcts[i]:g}", *(_num(t["by_group"][g][i]) for g in groups)) if i < len(pcts)
                else (esc(band), "the rest", *("" for _ in groups)) for i, band in enumerate(t.get("bands", ()))]
        lines += [f"**{esc(column)}** (attached column; a post gets the best band whose threshold its value is "
                  f"strictly above; percentiles per {esc(t.get('cohort', '?'))}):", ""]
        lines += _table(["band", "percentile", *[f"{esc(g)} ({counts.get(g, 0):,} posts)" for g in groups]], rows)
        lines.append("")
    others = {k: v for k, v in curation.items() if k != "attached_tags"}
    if others:
        lines += ["**Curation** (tag rules and attached data, from `dataset.lock`):", ""]
        lines += _table(["key", "value"], [(code(k), _show(v)) for k, v in flatten(others).items()]) + [""]
    return lines


def _year_table(caption: dict[str, Any], t: dict[str, Any]) -> list[str]:
    tags, edges = list(caption.get("year_tags", ())), list(t.get("year_edges", ()))
    if not caption.get("year", True) or not edges:
        return ["**Year**: no year tags in this recipe.", ""]
    rows = []
    for i, tag in enumerate(tags):
        start = edges[i] if i < len(edges) else "?"
        end = edges[i - 1] if i > 0 else None
        rows.append((esc(tag), start, f"before {end}" if end else "today"))
    return [f"**Year** (mode {code(caption.get('year_mode', '?'))}; a post gets the first tag whose start "
            "its written date is on or after):", "", *_table(["tag", "from", "until"], rows), ""]


def _tokens(facts: CardFacts) -> str:
    """The token-length distribution of each caption variant and the share past each window."""
    lines = ["## Caption tokens", ""]
    if not facts.tokens:
        return "\n".join(lines + ["This manifest holds no caption token counts (a build before they were counted).", ""])
    txt = (facts.recipe.get("caption", {}).get("variants") or {}).get("txt", "kohaku")
    rows = []
    for name, values in facts.tokens.items():
        t = token_summary(values)
        n = max(1, t["captions"])
        rows.append((code(name) + (" (`.txt`)" if name == txt else ""), f"{t['captions']:,}", f"{t['median']:g}",
                     f"{t['p95']:g}", f"{t['max']:,}",
                     *(f"{100 * t['past'][w] / n:.1f}% ({t['past'][w]:,})" for w in TOKEN_WINDOWS)))
    lines += ["CLIP tokens of every stored caption variant (exact: the bundled open_clip BPE, tokens between "
              "the start and end tokens), from `manifest.parquet` (`tokens_<variant>`, else `variant_tokens`; "
              "each `.json` has them as `caption_tokens`). sd-scripts' text encoder sees 75 tokens, 150 or 225 with "
              "`max_token_length`: a caption past the window it is trained with loses its end.", ""]
    lines += _table(["variant", "captions", "median", "p95", "max", *(f"past {w}" for w in TOKEN_WINDOWS)], rows)
    return "\n".join(lines + [""])


def _pictures(pictures: list[str]) -> str:
    lines = ["## Pictures", ""]
    for name in pictures:
        heading, text = PICTURES.get(name, (name, ""))
        lines += [f"### {heading}", "", text, "", f"![{heading}]({CARD_DIR}/{name})", ""]
    return "\n".join(lines)


def _rejects(facts: CardFacts) -> str:
    frame = facts.rejects
    if frame.height == 0:
        return "## Rejects\n\nNo input was rejected.\n"
    rows = [(code(r), f"{n:,}", " · ".join(esc(_short(e)) for e in ex))
            for r, n, ex in frame.select("reason", "n", "examples").iter_rows()]
    return "\n".join(["## Rejects", "", "Every input left out, with the reason (all of them in `rejects.parquet`):",
                      "", *_table(["reason", "inputs", "examples (key: detail)"], rows), ""])


def _artifacts(facts: CardFacts) -> str:
    """The source artifact measures of the kept samples and the `[artifacts]` rules' effect."""
    a = facts.artifacts
    if not a:
        return ""
    n = max(1, a["samples"])
    rows = [("JPEG sources", a["jpeg_sources"], a["samples"]),
            (f"lossless, once a JPEG (jpeg_history ≥ {a['history_threshold']:g})", a["jpeg_history"],
             a["lossless_tested"]),
            ("upscaled (factor ≥ 1.05)", sum(c for label, c in a["upscale"] if label != "none"),
             sum(c for _, c in a["upscale"])),
            ("palette art (≤ 256 colours)", a["palette"], a["colours_known"])]
    lines = ["## Source artifacts", "", f"Measured on each kept source before any resize ({a['samples']:,} samples; "
             "columns of `manifest.parquet`, the `artifacts` object of each `.json`):", ""]
    lines += _table(["measure", "samples", "share of those measured"],
                    [(name, f"{k:,}", f"{100 * k / max(1, of):.1f}% of {of:,}") for name, k, of in rows])
    lines += ["", "JPEG quality of the JPEG sources: " + ", ".join(f"{q} {c:,}" for q, c in a["jpeg_quality"] if c)
              if a["jpeg_sources"] else "No JPEG source.",
              "", "Upscale factor: " + ", ".join(f"{esc(f)} {c:,} ({100 * c / n:.1f}%)" for f, c in a["upscale"] if c), ""]
    rejected = ", ".join(f"{code(r)} {c:,}" for r, c in a["rejected"].items() if c) or "none"
    tagged = ", ".join(f"{code(t)} {c:,}" for t, c in a["tagged"].items()) or "none"
    lines += [f"The recipe's `[artifacts]` rules rejected: {rejected}; added caption tags: {tagged}.", ""]
    return "\n".join(lines)


LATENTS_HEADING = "## Latents"


def latents_section(sets: list[dict[str, Any]]) -> str:
    """The dataset's latent sets (card_data.latent_facts), or "" when it has none. `kdata latents`
    puts the same section into an existing README (latents/card.py), before `## Files`."""
    if not sets:
        return ""
    rows = [("main images" if s["level"] is None else f"level {code(s['level'])}", code(s["folder"]),
             f"`{s['vae_sha256']}`", esc(s["channels"]), esc(s["dtype"]), esc(", ".join(s["what"])),
             f"{s['samples']:,}" + ("" if s["current"] else " (stale: made from other pixels; run `kdata latents` again)"))
            for s in sets]
    return "\n".join([LATENTS_HEADING, "", "VAE latents of the stored images (`kdata latents`, unscaled; "
                      "`KdataDataset(path, payload=\"latents\", level=...)` reads them; `latents.lock` in each "
                      "folder records how they were made):", "",
                      *_table(["images", "folder", "VAE sha256", "channels", "dtype", "stored", "samples"], rows), ""])


def _files(facts: CardFacts) -> str:
    name = facts.index.get("name", facts.recipe.get("name", "?"))
    rows = [
        (code(f"{name}-NNNNNN.tar"), "webdataset shards; per sample `<id>.webp` (or `.png`), `<id>.txt`, `<id>.json`"),
        ("`manifest.parquet`", "one row per sample: shard, bucket, crop, source size, sha256, caption, quality, …"),
        ("`rejects.parquet`", "one row per input left out: key, source, reason, detail"),
        ("`index.json`", "the shard list (wids shard index: url, nsamples, filesize, sha256)"),
        ("`stats.json`", "counts and bucket histograms, overall and per shard"),
        ("`dataset.lock`", "what this version was built from: recipe, DB fingerprint, thresholds, toolchain"),
        (f"`{CARD_DIR}/`", "the pictures of this card"),
    ]
    return "\n".join(["## Files", "", *_table(["file", "what it holds"], rows), ""])


def _loading(facts: CardFacts) -> str:
    shards = facts.index.get("shardlist", [])
    if not shards:
        return "## Loading\n\nThis build holds no samples (every post was left out: see the rejects).\n"
    name = facts.index.get("name", "NAME")
    pattern = f"{name}-{{000000..{len(shards) - 1:06d}}}.tar"
    return "\n".join([
        "## Loading", "", "```python",
        "import datasets  # the YAML header above declares the shards and the json's features",
        'ds = datasets.load_dataset("PATH/TO/THIS/FOLDER", split="train")', "",
        "import webdataset as wds",
        f'ds = wds.WebDataset("PATH/TO/THIS/FOLDER/{pattern}").decode("pil").to_tuple("webp;png", "txt", "json")',
        "```", "",
    ])


def _recipe_table(facts: CardFacts) -> str:
    rows = [(code(k), _show(v)) for k, v in flatten(facts.recipe).items()]
    return "\n".join(["## Recipe (every key)", "", *_table(["key", "value"], rows), ""])


# -- helpers -----------------------------------------------------------------------------------
def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (lists stay values), in sorted key order."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key in sorted(data):
        name = f"{prefix}.{key}" if prefix else str(key)
        value = data[key]
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


# Markdown punctuation that could start a construct in a table cell or a heading (emphasis,
# links, raw HTML, entities, code, strikethrough, a column break); `_` only outside a word.
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>&|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def esc(value: Any) -> str:
    """Text from the data made inert in markdown, on one line: its punctuation backslash-escaped,
    not turned into HTML entities — markdown renderers escape `<`, `>` and `&` themselves, so an
    entity here would show as `&gt;` (and in a code span it always does: see `code`)."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), _one_line(value))


def code(value: Any) -> str:
    """Text from the data as a code span that shows it exactly (`score:>5`, not `score:&gt;5`):
    nothing is interpreted inside a code span, so only the column break `|` is escaped (GFM
    tables read `\\|` as `|` there; outside a table a `|` would show its backslash) and a fence
    longer than any run of backticks is used. Padding keeps edge backticks and spaces as written
    (a renderer strips one space from each end when both ends have one)."""
    text = _one_line(value).replace("|", "\\|")
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    spaced = text.startswith(" ") and text.endswith(" ") and text.strip(" ")
    pad = " " if text.startswith("`") or text.endswith("`") or spaced else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _one_line(value: Any) -> str:
    return str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _table(header: list[str], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data if data != {} else "?"


def _show(value: Any) -> str:
    """A recipe value as read in a table: strings in code spans (a separator `, ` stays visible)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value) if value else "(none)"
    if value is None:
        return "(none)"
    if isinstance(value, str):
        if not value.strip():  # "", " ", "\n": say what it is
            return code(repr(value)) if value else "(empty)"
        return code(value)
    return esc(value)


def _num(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) else esc(value)


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

