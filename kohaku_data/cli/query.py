"""`kdata query EXPR`: Danbooru-style tag query over the metadata DB (opened read-only)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from kohaku_data.cli.common import DbOption, clean_errors, db_path


def query(
    expr: Annotated[str, typer.Argument(
        help="Tags and metatags, e.g. '1girl solo -comic rating:g,s score:>10 order:score'.")],
    db: DbOption = None,
    count: Annotated[bool, typer.Option("--count", help="Print only the number of matches.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="At most N results.")] = None,
    after: Annotated[int | None, typer.Option(
        "--after", help="Cursor: the last id of the previous page.")] = None,
    fmt: Annotated[Literal["ids", "jsonl"], typer.Option(
        "--format", help="ids: one id per line; jsonl: post rows with tags by category.")] = "ids",
) -> None:
    """Find posts matching a Danbooru-style tag query: tags, -tag, `a or b`, (groups), ~a ~b,
    wildcards (*_hair), metatags with lists and ranges (id:1,2,3 score:5..10,>100), order:."""
    # Imported here: numpy and the query engine are not needed by the other commands.
    import json

    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.query import count_posts, post_records, query_ids

    with clean_errors():
        path = db_path(db)
        with DanbooruDB.open(path, readonly=True) as handle:
            if count:
                typer.echo(count_posts(handle, expr))
                return
            ids = query_ids(handle, expr, limit=limit, after_id=after)
            if fmt == "ids":
                typer.echo("\n".join(map(str, ids)) if ids else "", nl=bool(ids))
                return
            for record in post_records(handle, ids):
                typer.echo(json.dumps(record, ensure_ascii=False))
