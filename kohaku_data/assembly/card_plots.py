"""The card's pictures: one PNG per question a trainer asks, drawn by matplotlib (Agg, headless).

    pngs = render_plots(facts)   # {"buckets.png": b"\\x89PNG...", ...}

Same facts, same bytes: every figure is drawn under matplotlib's built-in defaults (never the
user's matplotlibrc) plus the fixed style below, with its bundled DejaVu Sans (matplotlib lists
its own fonts before the system's, so an installed DejaVu never takes over), rendered by Agg and
written by Pillow as a bare RGB PNG (no text chunk, no time). No pyplot: plain `Figure` objects, so
nothing global is touched and two builds in one process cannot share a figure.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import polars as pl

from kohaku_data.assembly.card_data import NONE_LABEL, CardFacts

WIDTH = 9.0  # inches; 100 dpi → 900 px, readable on the Hub's card column
DPI = 100
INK, MUTED, GRID = "#222222", "#666666", "#dddddd"
BAR = "#4c72b0"
TAG_LABEL_CHARS = 32  # longest tag shown whole in a top-tags panel (half the width)
ORIENTATION = {"portrait": "#4c72b0", "square": "#55a868", "landscape": "#dd8452"}
_STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 11, "axes.titleweight": "bold",
    "axes.edgecolor": MUTED, "axes.labelcolor": INK, "xtick.color": MUTED, "ytick.color": INK,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.axisbelow": True,
    "grid.color": GRID, "grid.linewidth": 0.6, "figure.facecolor": "white", "savefig.facecolor": "white",
    "svg.hashsalt": "kdata", "path.simplify": True,
}


def render_plots(facts: CardFacts) -> dict[str, bytes]:
    """Every picture of the card, by file name (in `card/`), as PNG bytes."""
    import matplotlib

    plots: dict[str, Callable] = {
        "buckets.png": _buckets, "shares.png": _shares, "year_quality.png": _year_quality,
        "tags.png": _tags, "tokens.png": _tokens, "scores.png": _scores, "rejects.png": _rejects,
        "artifacts.png": _artifacts,
    }
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # inside the context: restored afterwards
        matplotlib.rcParams.update(_STYLE)
        return {name: _png(draw(facts)) for name, draw in plots.items()}


def _png(fig) -> bytes:
    """One Agg draw (savefig would lay out and draw twice), written by Pillow as plain RGB PNG:
    no text chunks, no time, the same bytes for the same figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _figure(height: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _empty(ax, title: str, text: str = "nothing to show") -> None:
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, text, ha="center", va="center", color=MUTED, transform=ax.transAxes)
    ax.set_axis_off()


def _hbars(ax, labels: list[str], counts: list[int], colors=BAR, total: int | None = None,
           narrow: bool = False) -> None:
    """Horizontal bars, first label on top, each with its count and share written beside it.
    `narrow` (a panel of a grid): the counts are the tick labels of a right-hand axis instead, so
    the layout makes room for them — text placed in data units past the bars grows with the
    panel's width, never fits a narrow one and ran off the picture's edge."""
    y = np.arange(len(labels))
    ax.barh(y, counts, color=colors, height=0.7)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    total = total or max(1, sum(counts))
    top = max(counts) if counts else 1
    texts = [f"{n:,}  ({100 * n / total:.1f}%)" for n in counts]
    if narrow:
        right = ax.secondary_yaxis("right")
        right.set_yticks(y, texts)
        right.tick_params(length=0, labelsize=8, labelcolor=MUTED)
        right.spines["right"].set_visible(False)
        ax.set_xlim(0, top * 1.02)
    else:
        for yi, text in zip(y, texts):
            ax.text(top * 0.01 + counts[yi], yi, text, va="center", fontsize=8, color=MUTED)
        ax.set_xlim(0, top * 1.28)
    _integer_axis(ax.xaxis)


# -- the pictures ------------------------------------------------------------------------------
def _buckets(facts: CardFacts):
    b = facts.buckets
    fig, axes = _figure(max(2.2, 0.6 + 0.24 * b.height))
    ax = axes[0, 0]
    if b.height == 0:
        _empty(ax, "Buckets")
        return fig
    orient = [("square" if w == h else "portrait" if w < h else "landscape") for w, h in zip(b["width"], b["height"])]
    labels = [f"{w}×{h}   ar {a:.2f}" for w, h, a in zip(b["width"], b["height"], b["aspect"])]
    _hbars(ax, labels, b["n"].to_list(), [ORIENTATION[o] for o in orient])
    ax.set_title("Samples per bucket (width × height, aspect ratio w/h; tall → wide)", loc="left")
    ax.set_xlabel("samples")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in ORIENTATION.items()], loc="lower right", frameon=False)
    return fig


def _shares(facts: CardFacts):
    names = ("quality", "year", "rating")
    tallest = max(facts.shares[n].height for n in names)
    fig, axes = _figure(max(2.2, 0.9 + 0.26 * tallest), 1, 3)
    for ax, name in zip(axes[0], names):
        frame = facts.shares[name]
        if frame.height == 0:
            _empty(ax, name.title())
            continue
        colors = _band_colors(frame["value"].to_list()) if name == "quality" else BAR
        _hbars(ax, frame["value"].to_list(), frame["n"].to_list(), colors)
        ax.set_title(f"{name.title()} tags", loc="left")
        ax.set_xticks([])
    return fig


def _year_quality(facts: CardFacts):
    frame = facts.year_quality
    fig, axes = _figure(3.6)
    ax = axes[0, 0]
    if frame.height == 0:
        _empty(ax, "Quality per year")
        return fig
    bands = [v for v in facts.shares["quality"]["value"].to_list()]
    wide = frame.pivot(on="quality", index="year", values="n").sort("year").fill_null(0)
    years = wide["year"].to_list()
    totals = np.zeros(len(years))
    for band in bands:
        if band in wide.columns:
            totals += wide[band].to_numpy()
    bottom = np.zeros(len(years))
    x = np.arange(len(years))
    for band, color in zip(bands, _band_colors(bands)):
        if band not in wide.columns:
            continue
        share = wide[band].to_numpy() / np.maximum(totals, 1)
        ax.bar(x, share, bottom=bottom, color=color, width=0.8, label=band)
        bottom += share
    for xi, n in zip(x, totals):
        ax.text(xi, 1.01, f"{int(n):,}", ha="center", va="bottom", fontsize=7, color=MUTED, rotation=90)
    ax.set_xticks(x, years, rotation=90 if len(years) > 12 else 0)
    ax.set_ylim(0, 1.12)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
    ax.set_title("Quality mix per year of posting (numbers: samples that year)", loc="left")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, reverse=True)
    return fig


def _tags(facts: CardFacts):
    order = ("artist", "character", "copyright", "general", "meta")
    per = {c: facts.tags.filter(pl.col("category") == c) for c in order}
    rows = max([p.height for p in per.values()] + [1])
    # Two panels a row: a third of the width could not hold real tag names beside their bars.
    fig, axes = _figure(max(2.4, 0.7 + 0.2 * rows) * 3, 3, 2)
    for ax, category in zip(axes.flat, order):
        frame = per[category]
        if frame.height == 0:
            _empty(ax, category.title(), "no tags")
            continue
        _hbars(ax, [_clip(t) for t in frame["tag"].to_list()], frame["n"].to_list(), total=facts.manifest.height,
               narrow=True)
        ax.set_title(f"Top {category} tags", loc="left")
        ax.set_xticks([])
        ax.tick_params(axis="y", labelsize=8)
    axes.flat[-1].set_axis_off()
    fig.suptitle("Most frequent tags per category (share: of all samples)", x=0.01, ha="left", color=MUTED, fontsize=9)
    return fig


def _tokens(facts: CardFacts):
    """One histogram per caption variant (bins of 5 tokens), the 75 / 150 / 225 windows marked."""
    from kohaku_data.assembly.card_data import TOKEN_WINDOWS, token_summary

    names = list(facts.tokens)
    fig, axes = _figure(max(2.0, 0.5 + 1.7 * len(names)), max(1, len(names)), 1)
    if not names:
        _empty(axes[0, 0], "Caption tokens", "no token counts in this manifest")
        return fig
    top = max([int(v.max() or 0) for v in facts.tokens.values() if v.len()] + [TOKEN_WINDOWS[-1]])
    edges = np.arange(0, top + 10, 5)
    for ax, name in zip(axes[:, 0], names):
        values = facts.tokens[name].to_numpy()
        t = token_summary(facts.tokens[name])
        ax.hist(values, bins=edges, color=BAR)
        for w in TOKEN_WINDOWS:
            ax.axvline(w, color="#c44e52", linestyle="--", linewidth=1)
        ax.set_xlim(0, edges[-1])
        ax.set_title(_clip(name), loc="left")
        n = max(1, t["captions"])
        past = " · ".join(f"past {w}: {100 * t['past'][w] / n:.1f}%" for w in TOKEN_WINDOWS)
        ax.set_title(f"median {t['median']:g} · p95 {t['p95']:g} · max {t['max']:,} · {past}",
                     loc="right", fontsize=8, color=MUTED, fontweight="normal")
        ax.set_ylabel("captions")
        _integer_axis(ax.yaxis)
    axes[-1, 0].set_xlabel("CLIP tokens (between the start and end tokens); dashed: 75 / 150 / 225")
    return fig


def _scores(facts: CardFacts):
    fig, axes = _figure(3.2, 1, 2)
    for ax, column in zip(axes[0], ("score", "fav_count")):
        values = facts.manifest[column].drop_nulls().to_numpy()
        if values.size == 0:
            _empty(ax, column)
            continue
        labels, counts = _power_bins(values)
        x = np.arange(len(labels))
        ax.bar(x, counts, color=BAR, width=0.8)
        ax.set_xticks(x, labels, rotation=90 if len(labels) > 16 else 0, fontsize=8)
        ax.grid(axis="x", visible=False)
        _log_counts(ax.yaxis)
        q = np.quantile(values, [0.5, 0.9, 0.99])
        ax.set_title(column, loc="left")
        ax.set_title(f"median {q[0]:,.0f} · p90 {q[1]:,.0f} · p99 {q[2]:,.0f} · max {values.max():,}",
                     loc="right", fontsize=8, color=MUTED, fontweight="normal")
        ax.set_xlabel("bins double in width: 4 = 4–7, 1k = 1024–2047")
        ax.set_ylabel("samples (log scale)")
    return fig


def _rejects(facts: CardFacts):
    frame = facts.rejects
    fig, axes = _figure(max(1.8, 0.7 + 0.26 * frame.height))
    ax = axes[0, 0]
    if frame.height == 0:
        _empty(ax, "Rejects", "no rejects")
        return fig
    _hbars(ax, frame["reason"].to_list(), frame["n"].to_list(), "#c44e52")
    ax.set_title("Rejected inputs by reason", loc="left")
    ax.set_xlabel("inputs")
    return fig


def _artifacts(facts: CardFacts):
    """2x2: JPEG quality and upscale factor histograms, the shares, what the rules did."""
    a = facts.artifacts
    fig, axes = _figure(5.2, 2, 2)
    if not a:
        for ax in axes.flat:
            _empty(ax, "", "not measured (a build before the artifact measures)")
        return fig
    for ax, key, title in ((axes[0, 0], "jpeg_quality", "JPEG quality (JPEG sources)"),
                           (axes[0, 1], "upscale", "Measured upscale factor")):
        labels, counts = [label for label, _ in a[key]], [c for _, c in a[key]]
        if not sum(counts):
            _empty(ax, title, "none")
            continue
        ax.bar(np.arange(len(labels)), counts, color=BAR)
        # Seven quality bins do not fit side by side at this width: the labels slant.
        ax.set_xticks(np.arange(len(labels)), labels, rotation=30 if len(labels) > 5 else 0,
                      ha="right" if len(labels) > 5 else "center")
        ax.set_title(title, loc="left")
        ax.grid(axis="x", visible=False)
        _integer_axis(ax.yaxis)
    shares = [("JPEG source", a["jpeg_sources"], a["samples"]), ("once a JPEG", a["jpeg_history"], a["lossless_tested"]),
              ("upscaled", sum(c for label, c in a["upscale"] if label != "none"), sum(c for _, c in a["upscale"])),
              ("palette", a["palette"], a["colours_known"])]
    ax = axes[1, 0]
    ax.barh(np.arange(4), [100 * k / max(1, of) for _, k, of in shares], color=BAR, height=0.7)
    ax.set_yticks(np.arange(4), [name for name, _, _ in shares])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the samples measured")
    ax.set_title("Shares", loc="left")
    acted = [(f"rejected: {r}", c) for r, c in a["rejected"].items()] + [(f"tagged: {t}", c) for t, c in a["tagged"].items()]
    if not any(c for _, c in acted):
        _empty(axes[1, 1], "Recipe rules", "no [artifacts] rule acted")
    else:
        # Shares of the images the rules saw (samples kept + rejected by them), not of the actions.
        _hbars(axes[1, 1], [label for label, _ in acted], [c for _, c in acted], "#c44e52",
               total=max(1, a["samples"] + sum(a["rejected"].values())))
        axes[1, 1].set_title("Recipe rules", loc="left")
    return fig


# -- helpers -----------------------------------------------------------------------------------
def _clip(label: str, limit: int = TAG_LABEL_CHARS) -> str:
    """A tag cut to `limit` characters: real names run to 40 and more ("the_legend_of_zelda:_breath_
    of_the_wild"), and half the picture's width cannot hold them beside a bar and its count."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _band_colors(bands: list[str]) -> list:
    """Best band green → worst red; samples without a band grey."""
    from matplotlib import colormaps

    ranked = [b for b in bands if b != NONE_LABEL]
    cmap = colormaps["RdYlGn_r"]
    spots = np.linspace(0.08, 0.92, max(2, len(ranked)))
    colours = {b: cmap(float(s)) for b, s in zip(ranked, spots)}
    return [colours.get(b, "#bbbbbb") for b in bands]


def _power_bins(values: np.ndarray) -> tuple[list[str], list[int]]:
    """Counts in bins a person reads at once: `<0`, `0`, `1`, `2`, `4`, … `1k`, `2k` (each bin
    from its label to just below the next: powers of two)."""
    labels, counts = [], []
    negative = int((values < 0).sum())
    if negative:
        labels.append("<0")
        counts.append(negative)
    labels.append("0")
    counts.append(int((values == 0).sum()))
    low, top = 1, max(int(values.max()), 1)
    while low <= top:
        labels.append(_compact(low))
        counts.append(int(((values >= low) & (values < low * 2)).sum()))
        low *= 2
    return labels, counts


def _compact(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= size:
            return f"{n // size}{unit}"
    return str(n)


def _log_counts(axis) -> None:
    """A log count axis labelled 1, 2, 5, 10, 20, … in plain digits (no 6×10¹ minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axis.set_minor_formatter(NullFormatter())


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
