"""The read-only HTTP API (FastAPI) and browse page.

    app = create_app("danbooru.db", datasets_dir=Path("datasets"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The DB is opened read-only (sqlite `mode=ro`). Endpoints are plain `def`s, so FastAPI runs them
in its threadpool; peewee keeps one sqlite connection per thread (its connection state is
thread-local and it connects on first use), so concurrent requests never share a connection.
All state (DB handle, dataset caches, thresholds) lives in one `ServiceState` per app.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from kohaku_data import __version__
from kohaku_data.db.enums import Rating, TagType
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.errors import KdataError
from kohaku_data.service.datasets import DatasetCatalog, DatasetError
from kohaku_data.service.thumbs import SIZES, NoImage, SourceSet, Thumb, ThumbConfig, Thumbnailer

STATIC = Path(__file__).parent / "static"
MAX_POSTS = 200
MAX_TAGS = 100
MAX_SAMPLES = 500
_RECIPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_LIST_FIELDS = ("id", "created_at", "rating", "score", "fav_count", "image_width", "image_height",
                "file_ext", "md5")
_SIZE_HELP = f"Longest side in pixels, one of {', '.join(map(str, SIZES))}"
_MEDIA = {"webp": "image/webp", "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}


class NotFound(KdataError):
    """The requested post, tag or recipe does not exist (HTTP 404)."""


class ServiceState:
    """Everything one app instance holds: the read-only DB, datasets and computed caches."""

    def __init__(self, db_path: Path, datasets_dir: Path | None, pipelines_dir: Path | None,
                 sources: list[str] | None = None, thumbs: ThumbConfig | None = None) -> None:
        self.db = DanbooruDB.open(db_path, readonly=True)
        self.catalog = DatasetCatalog(datasets_dir)
        self.sources = SourceSet(sources or [])
        self.thumbs = Thumbnailer(thumbs or ThumbConfig())
        self.pipelines = Path(pipelines_dir) if pipelines_dir else None
        self.has_aliases = self.db.has_table("kdata_tag_alias")
        self._lock = threading.Lock()
        self._thresholds: dict[str, Any] = {}
        self._stats: dict[str, Any] | None = None
        self._version: Any = None  # db/summary.py's write version the caches were made at

    def recipe(self, name: str | None):
        """(caption config, thresholds) of pipelines/NAME.toml or the default recipe; cached."""
        from kohaku_data.config import load_recipe
        from kohaku_data.curation.captions import curated_thresholds

        path = None
        if name:
            if not _RECIPE_RE.match(name):
                raise KdataError(f"recipe name {name!r} must be letters, digits, '-' or '_' (a file in pipelines/)")
            path = self._recipe_path(name)
        config = load_recipe(path).caption
        key = config.model_dump_json()
        with self._lock:  # thresholds scan the whole DB: compute once per caption config
            self._forget_if_written()
            if key not in self._thresholds:
                self._thresholds[key] = curated_thresholds(self.db, config)
            return config, self._thresholds[key]

    def _recipe_path(self, name: str) -> Path:
        """pipelines/NAME.toml of the served folder, else the recipe of that name shipped with kdata."""
        from kohaku_data.config import shipped_recipes

        local = self.pipelines / f"{name}.toml" if self.pipelines is not None else None
        if local is not None and local.is_file():
            return local
        if name in (shipped := shipped_recipes()):
            return shipped[name]
        raise NotFound(f"no recipe {name!r} in {self.pipelines}/ nor among the shipped recipes ({', '.join(shipped)})")

    def stats(self) -> dict[str, Any]:
        """Counts, thresholds and band shares: whole-DB scans, so read from the DB's stored
        summaries when current (db/summary.py; `kdata db import/sync/migrate` keep them), else
        computed; kept in memory until the file's write counter moves (a sync into the file
        shows at the next request; a DB without summaries keeps them for the app's life)."""
        from kohaku_data.captions import caption_stats

        config, thresholds = self.recipe(None)
        with self._lock:
            self._forget_if_written()
            if self._stats is None:
                self._stats = {**_compute_stats(self.db), "quality_thresholds": thresholds.to_dict(),
                               "caption": caption_stats(self.db, config, thresholds)}
            return self._stats

    def _forget_if_written(self) -> None:
        """Drop the in-memory caches when the DB was written since they were made (under the lock)."""
        from kohaku_data.db import summary

        version = summary.version(self.db)
        if version != self._version:
            self._thresholds.clear()
            self._stats = None
            self._version = version

    def post_image(self, post_id: int) -> bytes:
        """The post's original bytes from the sources, else its image in a built dataset."""
        data = self.sources.read(post_id, self.thumbs.config.max_bytes)
        if data is not None:
            return data
        dataset = self.catalog.holding(str(post_id))
        if dataset is not None:
            return dataset.image(str(post_id))[0]
        where = "the image sources or " if self.sources.roots else ""
        raise NoImage(f"post {post_id} has no image in {where}any served dataset")

    def close(self) -> None:
        self.thumbs.close()
        self.db.close()


def create_app(db_path: str | Path, datasets_dir: str | Path | None = None, *,
               pipelines_dir: str | Path | None = "pipelines", threads: int = 40,
               sources: list[str] | None = None, thumbs: ThumbConfig | None = None) -> FastAPI:
    """The FastAPI app over one DB file (opened read-only), one datasets folder and optional
    image sources (for thumbnails of any post, like `kdata build --src`)."""
    state = ServiceState(Path(db_path), Path(datasets_dir) if datasets_dir else None,
                         Path(pipelines_dir) if pipelines_dir else None, sources, thumbs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield
        state.close()

    app = FastAPI(title="kohaku-data", version=__version__, lifespan=lifespan,
                  description="Read-only Danbooru2023 metadata and built datasets.")
    app.state.kdata = state
    _add_error_handlers(app)
    _add_post_routes(app, state)
    _add_dataset_routes(app, state)
    _add_thumb_routes(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


# --------------------------------------------------------------------------------------------
# Errors: bad input → 400 with one clear message; missing things → 404.
# --------------------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "bad parameters: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(KdataError)
    async def kdata_error(request: Request, exc: KdataError) -> JSONResponse:
        status = 404 if isinstance(exc, (NotFound, DatasetError)) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)


# --------------------------------------------------------------------------------------------
# Posts, tags, stats
# --------------------------------------------------------------------------------------------
def _add_post_routes(app: FastAPI, state: ServiceState) -> None:
    db = state.db

    @app.get("/posts", summary="Search posts (Danbooru syntax), cursor-paged by the last post's id")
    def posts(
        q: Annotated[str, Query(description="Query, e.g. `1girl -solo rating:g score:>10`, "
                                "`(cat_ears or dog_ears) *_hair -id:1,2 order:score`")] = "",
        limit: Annotated[int, Query(ge=1, description=f"Posts per page (at most {MAX_POSTS})")] = 50,
        cursor: Annotated[int | None, Query(ge=0, description="`next_cursor` of the previous page")] = None,
    ) -> dict[str, Any]:
        from kohaku_data.db.query import query_ids

        limit = min(limit, MAX_POSTS)
        ids = query_ids(db, q, limit=limit + 1, after_id=cursor)
        page = ids[:limit]
        return {"query": q, "posts": _post_rows(db, page),
                "next_cursor": page[-1] if len(ids) > limit else None}

    @app.get("/posts/{post_id}", summary="One post with its tags by category")
    def post(post_id: int) -> dict[str, Any]:
        row = db.Post.select().where(db.Post.id == post_id).dicts().first()
        if row is None:
            raise NotFound(f"no post {post_id}")
        row["rating_letter"] = Rating(row["rating"]).letter
        return {**row, "tags": _post_tags(db, post_id)}

    @app.get("/posts/{post_id}/caption", summary="The post's training caption under a recipe")
    def caption(post_id: int, recipe: Annotated[str | None, Query(description="pipelines/NAME.toml; default recipe if absent")] = None) -> dict[str, Any]:
        from kohaku_data.captions import caption_posts

        config, thresholds = state.recipe(recipe)
        frame = caption_posts(db, [post_id], config, thresholds)
        if frame.height == 0:
            raise NotFound(f"no post {post_id}")
        return {"recipe": recipe or "default", **_jsonable_row(frame.row(0, named=True))}

    @app.get("/tags", summary="Tag autocomplete by prefix, most popular first (aliases resolved)")
    def tags(prefix: str = "", limit: Annotated[int, Query(ge=1)] = 20) -> dict[str, Any]:
        return {"prefix": prefix, "tags": _autocomplete(state, prefix, min(limit, MAX_TAGS))}

    @app.get("/stats", summary="Counts and quality thresholds of the default recipe")
    def stats() -> dict[str, Any]:
        return state.stats()


def _post_rows(db: DanbooruDB, ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    fields = [getattr(db.Post, f) for f in _LIST_FIELDS]
    rows = {r["id"]: r for r in db.Post.select(*fields).where(db.Post.id.in_(ids)).dicts()}
    return [rows[i] for i in ids if i in rows]


def _post_tags(db: DanbooruDB, post_id: int) -> dict[str, list[str]]:
    rel, tag = db.PostTagRelation, db.Tag
    query = (tag.select(tag.name, tag.type)
             .join(rel, on=(rel.tag_id == tag.id))
             .where(rel.post_id == post_id)
             .order_by(tag.popularity.desc(), tag.name)
             .tuples())
    out: dict[str, list[str]] = {t.category_name: [] for t in TagType}
    for name, kind in query:
        out[TagType(kind).category_name].append(name)
    return out


def _autocomplete(state: ServiceState, prefix: str, limit: int) -> list[dict[str, Any]]:
    """Tags whose name, or one of whose aliases, starts with `prefix`; best-known first.

    A range on the unique name index (`name >= p AND name < p || U+10FFFF`) instead of LIKE:
    sqlite's LIKE is case-insensitive and so cannot use the BINARY index."""
    prefix = prefix.strip().lower().replace(" ", "_")
    upper = prefix + "\U0010ffff"
    conn = state.db.connection()
    found: dict[str, dict[str, Any]] = {}
    sql = ("SELECT name, type, popularity, NULL FROM tag WHERE name >= ? AND name < ? "
           "ORDER BY popularity DESC LIMIT ?")
    rows = list(conn.execute(sql, (prefix, upper, limit)))
    if state.has_aliases and prefix:
        rows += conn.execute(
            "SELECT t.name, t.type, t.popularity, a.alias FROM kdata_tag_alias a "
            "JOIN tag t ON t.name = a.tag_name WHERE a.alias >= ? AND a.alias < ? "
            "ORDER BY t.popularity DESC LIMIT ?", (prefix, upper, limit))
    for name, kind, popularity, alias in rows:
        if name not in found or (found[name]["alias"] and alias is None):
            found[name] = {"name": name, "category": TagType(kind).category_name,
                           "popularity": popularity, "alias": alias}
    return sorted(found.values(), key=lambda t: (-t["popularity"], t["name"]))[:limit]


def _compute_stats(db: DanbooruDB) -> dict[str, Any]:
    from kohaku_data.db.info import service_stats

    return service_stats(db)


def _jsonable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)) for k, v in row.items()}


# --------------------------------------------------------------------------------------------
# Built datasets
# --------------------------------------------------------------------------------------------
def _add_dataset_routes(app: FastAPI, state: ServiceState) -> None:
    catalog = state.catalog

    @app.get("/datasets", summary="Built dataset versions (from index.json and dataset.lock)")
    def datasets() -> dict[str, Any]:
        return {"datasets": catalog.list()}

    @app.get("/datasets/{name}/samples", summary="Samples of a dataset (manifest rows), paged")
    def samples(name: str, offset: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1)] = 60) -> dict[str, Any]:
        dataset = catalog.get(name)
        total = dataset.manifest().height
        return {"name": name, "total": total, "offset": offset,
                "samples": dataset.samples(offset, min(limit, MAX_SAMPLES))}

    @app.get("/datasets/{name}/histograms", summary="Bucket, quality, rating and year counts")
    def histograms(name: str) -> dict[str, Any]:
        return {"name": name, **catalog.get(name).histograms()}

    @app.get("/datasets/{name}/card", summary="The dataset card (README.md) as markdown and HTML, and its pictures")
    def card(name: str) -> dict[str, Any]:
        return {"name": name, **catalog.get(name).card(f"/datasets/{quote(name)}/card")}

    @app.get("/datasets/{name}/card/{picture}", summary="One picture of the dataset card (PNG)")
    def card_picture(name: str, picture: str) -> FileResponse:
        return FileResponse(catalog.get(name).card_picture(picture), media_type="image/png",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/datasets/{name}/samples/{key}",
             summary="A sample's image (caption in X-Kdata-Caption, percent-encoded UTF-8); "
                     "`{key}.json` gives caption and metadata as JSON")
    def sample(name: str, key: str) -> Response:
        dataset = catalog.get(name)
        if key.endswith(".json"):
            return JSONResponse(_sample_json(dataset, key.removesuffix(".json")))
        data, ext = dataset.image(key)
        caption = dataset.read_member(key, "txt").decode("utf-8")
        # Headers are latin-1 only; percent-encoding keeps any caption intact.
        return Response(data, media_type=_MEDIA.get(ext, "application/octet-stream"),
                        headers={"X-Kdata-Caption": quote(caption, safe=""),
                                 "Cache-Control": "public, max-age=86400"})


def _sample_json(dataset, key: str) -> dict[str, Any]:
    import json

    row = _jsonable_row(dataset.row(key))
    meta = json.loads(dataset.read_member(key, "json"))
    return {"key": key, "caption": dataset.read_member(key, "txt").decode("utf-8"),
            "manifest": row, "meta": meta}


# --------------------------------------------------------------------------------------------
# Thumbnails (service/thumbs.py): rendered in a bounded pool, cached by bytes on the state
# --------------------------------------------------------------------------------------------
def _add_thumb_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/posts/{post_id}/thumb",
             summary="A post's thumbnail (WebP) from the image sources (`--src`) or a built dataset; "
                     "a placeholder SVG with 404 (no image), 422 (unreadable or too big) or 503 (try again)")
    async def post_thumb(post_id: int, size: Annotated[int, Query(description=_SIZE_HELP)] = SIZES[0]) -> Response:
        _check_size(size)
        thumb = await state.thumbs.get(("post", post_id, size), lambda: state.post_image(post_id), size)
        return _thumb_response(state.thumbs, thumb)

    @app.get("/datasets/{name}/samples/{key}/thumb", summary="A sample's thumbnail (WebP), read from its shard")
    async def sample_thumb(name: str, key: str, size: Annotated[int, Query(description=_SIZE_HELP)] = SIZES[0]) -> Response:
        _check_size(size)
        thumb = await state.thumbs.get(("sample", name, key, size), lambda: _sample_image(state.catalog, name, key), size)
        return _thumb_response(state.thumbs, thumb)


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise KdataError(f"size must be one of {', '.join(map(str, SIZES))}, not {size}")


def _sample_image(catalog: DatasetCatalog, name: str, key: str) -> bytes:
    """The sample's image bytes (run in the thumbnail pool: the catalog lists a folder)."""
    try:
        return catalog.get(name).image(key)[0]
    except DatasetError as exc:
        raise NoImage(str(exc)) from None


def _thumb_response(thumbs: Thumbnailer, thumb: Thumb) -> Response:
    """The picture with its state in headers (a placeholder's reason is percent-encoded; the
    cache's fill shows how its bound holds)."""
    headers = {"X-Kdata-Thumb": thumb.state, "X-Kdata-Cache": "hit" if thumb.cached else "miss",
               "X-Kdata-Cache-Bytes": str(thumbs.cache.bytes)}
    if thumb.reason:
        headers["X-Kdata-Reason"] = quote(thumb.reason, safe=" ,:()'")
    if thumb.status == 200:
        headers["Cache-Control"] = "public, max-age=3600"
    elif thumb.status == 503:
        headers["Retry-After"] = "2"
        headers["Cache-Control"] = "no-store"
    return Response(thumb.data, status_code=thumb.status, media_type=thumb.media_type, headers=headers)
