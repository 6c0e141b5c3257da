"""`kdata sync` and `kdata serve`."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import DbOption, clean_errors, is_tty, say, settings


def sync(
    base_url: Annotated[str, typer.Option("--base-url", help="Danbooru-compatible site, e.g. https://danbooru.donmai.us")],
    db: DbOption = None,
    limit_per_page: Annotated[int, typer.Option("--limit-per-page", help="Posts per request (1-200).")] = 200,
    rate: Annotated[float, typer.Option("--rate", help="At most this many requests per second.")] = 2.0,
    max_pages: Annotated[int | None, typer.Option("--max-pages", min=1, help="Stop after N pages (rerun continues).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request before retrying.")] = 30.0,
    max_failures: Annotated[int, typer.Option("--max-failures", min=1, help="Give up after N consecutive failures.")] = 6,
    backoff: Annotated[float, typer.Option("--backoff", help="First retry delay in seconds (doubles, with jitter).")] = 1.0,
    user_agent: Annotated[str | None, typer.Option(
        "--user-agent", envvar="KDATA_USER_AGENT",
        help="User-Agent to send; add a contact, e.g. 'kohaku-data/0.1 (you@example.org)'.",
    )] = None,
    updated_since: Annotated[str | None, typer.Option(
        "--updated-since", help="Also re-fetch posts changed since DATE (YYYY-MM-DD or ISO time), via tags=order:change.",
    )] = None,
    tag_relations: Annotated[bool, typer.Option(
        "--tag-relations", help="Also replace the tag implications and aliases with the server's active ones.",
    )] = False,
) -> None:
    """Pull new posts (and optionally recently changed ones) from a Danbooru API into the DB.

    Resumable: the last stored post id is kept per base URL; rerunning continues from it.
    Credentials, if needed, come from KDATA_DANBOORU_LOGIN and KDATA_DANBOORU_API_KEY.
    """
    from kohaku_data.db.handle import DanbooruDB
    from kohaku_data.service.client import ClientSettings, DanbooruClient, credentials_from_env
    from kohaku_data.service.sync import parse_since, refresh_updated, sync_posts

    with clean_errors(kept="The posts stored so far and the sync position are kept", target="the DB"):
        since = parse_since(updated_since) if updated_since else None
        client_settings = ClientSettings(rate=rate, timeout=timeout, max_failures=max_failures, backoff_base=backoff,
                                         **({"user_agent": user_agent} if user_agent else {}))
        path = settings(db=db).require_db()
        with DanbooruDB.open(path) as handle, DanbooruClient(
            base_url, client_settings, credentials=credentials_from_env()
        ) as client:
            result = sync_posts(handle, client, limit_per_page=limit_per_page, max_pages=max_pages, progress=is_tty())
            say(f"new posts: {result.summary()}", stderr=True)
            if since is not None:
                refreshed = refresh_updated(handle, client, since, limit_per_page=limit_per_page, progress=is_tty())
                say(f"changed since {since.isoformat()}: {refreshed.summary()}", stderr=True)
            if tag_relations:
                from kohaku_data.service.sync import sync_tag_relations

                stored = sync_tag_relations(handle, client, progress=is_tty())
                say(f"tag relations: {stored}", stderr=True)


def serve(
    db: DbOption = None,
    datasets: Annotated[Path | None, typer.Option("--datasets", help="Folder of built datasets (else $KDATA_DATASETS, else ./datasets).")] = None,
    pipelines: Annotated[Path, typer.Option("--pipelines", help="Folder of recipes for /posts/{id}/caption?recipe=NAME.")] = Path("pipelines"),
    host: Annotated[str, typer.Option("--host", help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--threads", min=1, help="Threads answering requests.")] = 40,
    src: Annotated[list[str] | None, typer.Option("--src", help="Image source for thumbnails of any post, as for kdata build --src (folder, tars, URL); repeatable, first wins. Without it only posts in a built dataset get pictures.")] = None,
    src_index: Annotated[list[str] | None, typer.Option("--src-index", help="Where the .json indexes of the tars of each --src live (as for kdata build --src-index), given once per --src in the same order; '-' for a source whose indexes are beside its tars. E.g. --src hf://datasets/nyanko7/danbooru2023 --src-index hf://datasets/deepghs/danbooru2023_index --src ./local --src-index -")] = None,
    thumb_cache_mb: Annotated[int, typer.Option("--thumb-cache-mb", min=1, help="Memory for cached thumbnails (least recently used dropped).")] = 256,
) -> None:
    """Serve the DB (read-only) and built datasets over HTTP, with a browse page at /."""
    import uvicorn

    from kohaku_data.config import load_settings
    from kohaku_data.service.app import create_app
    from kohaku_data.service.thumbs import ThumbConfig

    with clean_errors():
        conf = load_settings(db=db, datasets=datasets)
        roots = _paired_sources(src or [], src_index or [])
        sock = _listen(host, port)  # before anything is said or loaded: a busy port is the first thing to know
        port = sock.getsockname()[1]  # --port 0: the one the system chose
        app = create_app(conf.require_db(), conf.datasets, pipelines_dir=pipelines, threads=workers,
                         sources=roots, thumbs=ThumbConfig(cache_bytes=thumb_cache_mb << 20))
        _warn_if_not_migrated(app.state.kdata.db)
        say(app.state.kdata.catalog.describe(), stderr=True)
        if roots:
            shown = [f"{r} (indexes in {r.index_root})" if getattr(r, "index_root", None) else r for r in roots]
            say(f"indexing image sources {', '.join(shown)} in the background (thumbnails wait for it)", stderr=True)
        say(f"serving {conf.require_db()} on http://{host}:{port}/ (API docs at /docs)", stderr=True)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])


def _paired_sources(src: list[str], src_index: list[str]) -> list[str]:
    """`--src` values with their `--src-index` (one per --src, in order; '-': beside the tars)."""
    from kohaku_data.errors import KdataError
    from kohaku_data.sources import source_root

    if src_index and len(src_index) != len(src):
        raise KdataError(f"{len(src_index)} --src-index for {len(src)} --src: give one --src-index per --src, "
                         "in the same order ('-' for a source whose indexes are beside its tars)")
    return [source_root(root, None if index in (None, "-") else index)
            for root, index in zip(src, src_index or [None] * len(src))]


def _listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here and handed to uvicorn: uvicorn binds only after
    the app is made and `serving on…` is said, then logs `[Errno 98] error while attempting to
    bind` and exits — a start that looked fine and then was not."""
    from kohaku_data.errors import KdataError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise KdataError(f"--host {host!r} is not an address of this machine ({exc.strerror}): "
                         "use 127.0.0.1, 0.0.0.0 or a local address") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise KdataError(f"port {port} is in use: pick another with --port") from None
        if exc.errno == errno.EACCES:
            raise KdataError(f"port {port} needs privileges: pick one above 1023 with --port") from None
        raise KdataError(f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port") from None
    return sock


def _warn_if_not_migrated(db) -> None:
    """Serving works on a file as published, but tag queries are several times slower."""
    from kohaku_data.db.migrate import pending

    missing = pending(db)
    if missing:
        say(f"warning: {db.path} lacks migrations {', '.join(m.name for m in missing)}; queries will be "
            f"slow. Run `kdata db migrate --db {db.path}` (serve itself never writes to the DB).", stderr=True)
