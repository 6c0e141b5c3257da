"""`kdata diff A B [--json]`: what changed between two built datasets. Exit 0 identical, 1
different, 2 on error (like `diff`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kohaku_data.cli.common import print_error
from kohaku_data.errors import KdataError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

SHOWN = 8  # rows per table in the terminal (--json has everything)


def diff(
    a: Annotated[str, typer.Argument(help="The old dataset folder (a `kdata build` output).")],
    b: Annotated[str, typer.Argument(help="The new dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON (for scripts).")] = False,
) -> None:
    """Samples added / removed / changed (images, captions, metadata), recipe and threshold keys
    that changed, bucket and quality shifts — from manifests, locks and indexes, no image opened."""
    from kohaku_data.assembly.diff import diff_datasets

    try:
        report = diff_datasets(a, b)
    except Exception as exc:  # like diff(1): any trouble is exit 2, said in one line
        text = str(exc) if isinstance(exc, KdataError) else f"cannot read a side ({type(exc).__name__}: {exc})"
        print_error(text)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=1, sort_keys=True, default=str))
    else:
        from rich.console import Console

        show(report, Console(highlight=False, emoji=False))
    raise typer.Exit(0 if report["identical"] else 1)


def show(report: dict[str, Any], console: Console) -> None:
    """The terminal summary: one verdict line, then only the tables that have something in them."""
    from rich.markup import escape

    s = report["samples"]
    colour = "green" if report["identical"] else "yellow"
    console.print(f"[bold]{escape(report['a'])}[/] → [bold]{escape(report['b'])}[/]: "
                  f"[{colour}]{escape(report['summary'])}[/]", soft_wrap=True)
    console.print(f"samples {s['a']:,} → {s['b']:,}: {s['added']:,} added, {s['removed']:,} removed, "
                  f"{s['changed']:,} changed of {s['common']:,} in both")
    for what in ("added", "removed", "changed"):
        if s[f"{what}_examples"]:
            console.print(f"  {what}: " + ", ".join(str(k) for k in s[f"{what}_examples"])
                          + (" …" if s[what] > len(s[f"{what}_examples"]) else ""))
    if report["columns"]:
        table = _table("column", "samples changed", "example (key: a → b)")
        for column, info in sorted(report["columns"].items(), key=lambda kv: (-kv[1]["changed"], kv[0])):
            ex = info["examples"][0]
            left, right = _changed_part(ex["a"], ex["b"])
            table.add_row(column, f"{info['changed']:,}", escape(f"{ex['key']}: {left} → {right}"))
        console.print(table)
    if report["lock"]:
        table = _table("dataset.lock key", "a", "b", wrap_first=False)
        for change in report["lock"][:SHOWN * 3]:
            table.add_row(escape(change["key"]), escape(_short(change["a"])), escape(_short(change["b"])))
        console.print(table)
    for name in ("buckets", "quality"):
        rows = [r for r in report[name] if r["delta"]][:SHOWN]
        if rows:
            table = _table(name, "a", "b", "share a → b")
            for r in rows:
                table.add_row(escape(str(r["value"])), f"{r['a']:,}", f"{r['b']:,}",
                              f"{100 * r['share_a']:.1f}% → {100 * r['share_b']:.1f}% ({100 * r['share_delta']:+.1f})")
            console.print(table)
    sh = report["shards"]
    console.print(f"shards {sh['a']} → {sh['b']}: " + ("identical bytes" if sh["identical"]
                                                       else f"{sh['same_bytes']} of {sh['a']} unchanged"))


def _table(*columns: str, wrap_first: bool = True) -> Table:
    """One bare table with these columns (rich is imported here: a plain exit-0 diff never needs it)."""
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(name, no_wrap=(i == 0 and not wrap_first), overflow="fold")
    return table


def _changed_part(a: Any, b: Any, context: int = 12, limit: int = 40) -> tuple[str, str]:
    """Both values cut to where they first differ (long captions differ far from their start)."""
    ta, tb = _short(a, 10_000), _short(b, 10_000)
    same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    start = max(0, same - context)
    lead = "…" if start else ""
    return lead + _short(ta[start:], limit), lead + _short(tb[start:], limit)


def _short(value: Any, limit: int = 60) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
