"""`kdata query EXPR`: Danbooru-style tag query over the metadata DB (opened read-only)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from kohaku_data.cli.common import DbOption, clean_errors, db_path

# A query may start with '-' (`kdata query "-comic 1girl"`): an argument that is no option of
# this command is taken as the query, not refused as "No such option".
CONTEXT = {"ignore_unknown_options": True}


def query(
    expr: Annotated[str, typer.Argument(
        help="Tags and metatags, e.g. '1girl solo -comic rating:g,s score:>10 order:score'. "
        "May start with '-'.")],
    db: DbOption = None,
    count: Annotated[bool, typer.Option(
        "--count", help="Print only the number of matches (a flag: takes no value).")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="At most N results.")] = None,
    after: Annotated[int | None, typer.Option(
        "--after", help="Cursor: the last id of the previous page.")] = None,
    fmt: Annotated[Literal["ids", "jsonl"], typer.Option(
        "--format", help="ids: one id per line; jsonl: post rows with tags by category.")] = "ids",
    allow_unknown: Annotated[bool, typer.Option(
        "--allow-unknown", help="A name that is neither a tag nor an alias in the DB matches no "
        "post instead of stopping the query with a did-you-mean.")] = False,
) -> None:
    """Find posts matching a Danbooru-style tag query: tags, -tag, `a or b`, (groups), ~a ~b,
    wildcards (*_hair), metatags with lists and ranges (id:1,2,3 score:5..10,>100 date:2020-01-01...2021-01-01),
    status:/is:deleted|banned|active (deleted posts are hidden unless the query names one of
    these, as on Danbooru), is:sfw|nsfw|png.., has:/parent:/child:, md5:, source:, pixiv_id:,
    filesize:, upvotes:, downvotes:, tagcount: gentags: arttags: copytags: chartags: metatags:,
    age:, order:, order:random / random:N with seed:S, limit:N. A name that is neither a tag
    nor an alias stops the query with a did-you-mean; --allow-unknown searches it anyway."""
    # Imported here: numpy and the query engine are not needed by the other commands.
    import json

    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.query import count_posts, post_records, query_ids

    strict = not allow_unknown
    with clean_errors():
        path = db_path(db)
        with DanbooruDB.open(path, readonly=True) as handle:
            if count:
                typer.echo(count_posts(handle, expr, strict=strict))
                return
            ids = query_ids(handle, expr, limit=limit, after_id=after, strict=strict)
            if fmt == "ids":
                typer.echo("\n".join(map(str, ids)) if ids else "", nl=bool(ids))
                return
            for record in post_records(handle, ids):
                typer.echo(json.dumps(record, ensure_ascii=False))
