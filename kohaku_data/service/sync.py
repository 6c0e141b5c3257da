"""Incremental sync of posts from a Danbooru-compatible API into a Danbooru2023 sqlite.

New posts: Danbooru's sequential paging `/posts.json?page=a<cursor>&limit=N` returns the N posts
with the smallest ids above the cursor, newest first within the page (the paginator orders by
`id asc`, takes N, then reverses). So after storing a page, every post with
`cursor < id <= max(page ids)` that the server shows has been stored: `max(page ids)` becomes
the new cursor. It is written to `kdata_sync_state` in the same transaction as the page's
upsert, so a killed sync loses at most the page in flight and a rerun continues from there.

Updated posts: Danbooru has no `updated:` search metatag, but `tags=order:change` lists posts
by `updated_at` descending. `refresh_updated(since=...)` walks those numbered pages until it
reaches posts changed before `since`. Posts edited while it runs move to the top and can be
seen twice (harmless: upserts are idempotent and newer `updated_at` wins); the next refresh
picks up anything edited after it started.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from peewee import fn

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.importer import RecordError, UpsertCounts, parse_post
from kohaku_data.db.upsert import write_parsed
from kohaku_data.errors import KdataError
from kohaku_data.progress import progress_bar
from kohaku_data.service.client import DanbooruClient, SyncError

log = logging.getLogger(__name__)

POSTS_PATH = "/posts.json"
MAX_PAGE_LIMIT = 200  # Danbooru's cap for posts.json
MAX_NUMBERED_PAGE = 1000  # Danbooru refuses numbered pages beyond this for most users


@dataclass
class SyncResult:
    pages: int = 0
    posts: int = 0  # distinct posts received
    cursor: int = 0
    counts: UpsertCounts = field(default_factory=UpsertCounts)
    complete: bool = False  # reached the end (False: stopped by max_pages)
    rejected: int = 0  # posts the server sent that are not valid posts (see rejects_path)
    rejects_path: Path | None = None

    def summary(self) -> str:
        c = self.counts
        state = "up to date" if self.complete else "stopped early (rerun to continue)"
        bad = f"; {self.rejected} rejected (see {self.rejects_path})" if self.rejected else ""
        return (
            f"{self.pages} pages, {self.posts} posts: {c.inserted} new, {c.updated} updated, "
            f"{c.unchanged} unchanged; cursor {self.cursor}; {state}{bad}"
        )


def sync_rejects_path(db_path: Path) -> Path:
    """Where sync records the posts it could not store: `<db>.sync-rejects.jsonl`."""
    return Path(f"{db_path}.sync-rejects.jsonl")


# --------------------------------------------------------------------------------------------
# Cursor state
# --------------------------------------------------------------------------------------------
def _require_sync_table(db: DanbooruDB) -> None:
    if db.readonly:
        raise KdataError(f"{db.path} is open read-only: sync needs to write to it")
    if not db.has_table(db.SyncState._meta.table_name):
        from kohaku_data.db.migrate import migrate

        migrate(db, refresh_summaries=False)  # the kdata tables (sync cursor, aliases) are created on first sync


def get_cursor(db: DanbooruDB, base_url: str) -> int:
    """The highest post id fully stored from `base_url`.

    Before the first sync from a URL this is the DB's highest post id: a DB imported from the
    Danbooru2023 dump already holds everything up to it, so the sync starts where the dump ends
    (an empty DB starts at 0)."""
    if db.has_table(db.SyncState._meta.table_name):
        row = db.SyncState.get_or_none(db.SyncState.base_url == base_url)
        if row is not None:
            return row.cursor
    return db.Post.select(fn.MAX(db.Post.id)).scalar() or 0


def _set_cursor(db: DanbooruDB, base_url: str, cursor: int) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (db.SyncState.insert(base_url=base_url, cursor=cursor, updated_at=now)
        .on_conflict(conflict_target=[db.SyncState.base_url],
                     update={db.SyncState.cursor: cursor, db.SyncState.updated_at: now})
        .execute())


# --------------------------------------------------------------------------------------------
# New posts
# --------------------------------------------------------------------------------------------
def sync_posts(
    db: DanbooruDB,
    client: DanbooruClient,
    *,
    limit_per_page: int = MAX_PAGE_LIMIT,
    max_pages: int | None = None,
    progress: bool = False,
) -> SyncResult:
    """Pull every post above the stored cursor, page by page; resumable and idempotent."""
    _check_limit(limit_per_page)
    _require_sync_table(db)
    result = SyncResult(cursor=get_cursor(db, client.base_url))
    with progress_bar(f"sync {client.base_url}", total=max_pages, enabled=progress) as bar:
        while max_pages is None or result.pages < max_pages:
            page = client.get_json(POSTS_PATH, {"limit": limit_per_page, "page": f"a{result.cursor}"})
            posts = _new_posts(page, result.cursor)
            result.pages += 1
            bar.advance(1)
            if not posts:
                result.complete = True
                break
            _store_page(db, client.base_url, posts, result)
    _refresh_summaries(db, result)
    return result


def _refresh_summaries(db: DanbooruDB, result: SyncResult) -> None:
    """After a sync that stored posts: the DB summaries (counts, thresholds, /stats) again, so
    readers get them without a scan (a stale one is never served either way: db/summary.py)."""
    if result.posts:
        from kohaku_data.db import summary
        from kohaku_data.keepers import SUMMARY_KEEPERS

        summary.refresh(db, SUMMARY_KEEPERS)


def _new_posts(page: object, cursor: int) -> list[dict]:
    """The page's posts above the cursor, once each (a server may repeat ids within or across
    pages; the first copy of an id in a page wins since upserts keep the newest anyway)."""
    if not isinstance(page, list):
        raise SyncError(f"expected a JSON list of posts, got {type(page).__name__}: {str(page)[:200]}")
    seen: dict[int, dict] = {}
    for post in page:
        pid = post.get("id") if isinstance(post, dict) else None
        if not isinstance(pid, int):
            raise SyncError(f"a post without an integer id in the response: {str(post)[:200]}")
        if pid > cursor and pid not in seen:
            seen[pid] = post
    return list(seen.values())


def _store_page(db: DanbooruDB, base_url: str, posts: list[dict], result: SyncResult) -> None:
    new_cursor = max(p["id"] for p in posts)
    parsed = _valid_posts(db, base_url, posts, result)
    # One transaction: the posts and the cursor that says they are stored land together.
    with db.database.atomic():
        counts = write_parsed(db, parsed)
        _set_cursor(db, base_url, new_cursor)
    result.counts.add(counts)
    result.posts += len(posts)
    result.cursor = new_cursor


def _valid_posts(db: DanbooruDB, base_url: str, posts: list[dict], result: SyncResult) -> list:
    """The posts that parse; the others are recorded (with the reason) before the page commits,
    so a bad post never stalls the sync and is never skipped silently."""
    parsed, rejected = [], []
    for post in posts:
        try:
            parsed.append(parse_post(post))
        except RecordError as exc:
            rejected.append({"base_url": base_url, "id": post.get("id"), "reason": exc.reason, "record": post})
    if rejected:
        result.rejects_path = sync_rejects_path(db.path)
        with open(result.rejects_path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejected)
            fh.flush()
            os.fsync(fh.fileno())
        result.rejected += len(rejected)
        log.warning("%d posts from %s rejected: see %s", len(rejected), base_url, result.rejects_path)
    return parsed


# --------------------------------------------------------------------------------------------
# Updated posts
# --------------------------------------------------------------------------------------------
def refresh_updated(
    db: DanbooruDB,
    client: DanbooruClient,
    since: datetime,
    *,
    limit_per_page: int = MAX_PAGE_LIMIT,
    max_pages: int | None = None,
    progress: bool = False,
) -> SyncResult:
    """Re-fetch posts changed at or after `since` (via `tags=order:change`) and upsert them.

    Only posts at or below the stored cursor are upserted: newer ones belong to `sync_posts`,
    which keeps the cursor's promise (everything up to it is stored)."""
    _check_limit(limit_per_page)
    _require_sync_table(db)
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    result = SyncResult(cursor=get_cursor(db, client.base_url))
    limit_pages = min(max_pages or MAX_NUMBERED_PAGE, MAX_NUMBERED_PAGE)
    with progress_bar(f"refresh {client.base_url}", total=None, enabled=progress) as bar:
        for number in range(1, limit_pages + 1):
            page = client.get_json(POSTS_PATH, {"limit": limit_per_page, "page": number,
                                                "tags": "order:change"})
            posts, reached_end = _changed_since(page, since)
            result.pages += 1
            bar.advance(1)
            _upsert_known(db, client.base_url, posts, result)
            if reached_end or len(page) < limit_per_page:
                result.complete = True
                break
    _refresh_summaries(db, result)
    return result


def _changed_since(page: object, since: datetime) -> tuple[list[dict], bool]:
    posts = _new_posts(page, cursor=-1)
    fresh = [p for p in posts if _changed_at(p) >= since]
    return fresh, len(fresh) < len(posts)


def _changed_at(post: dict) -> datetime:
    """A malformed `updated_at` counts as fresh: the post then goes to validation (and to the
    rejects file) instead of ending the walk early."""
    try:
        return _parse_time(post.get("updated_at"))
    except ValueError:
        return datetime.max.replace(tzinfo=timezone.utc)


def _upsert_known(db: DanbooruDB, base_url: str, posts: list[dict], result: SyncResult) -> None:
    known = [p for p in posts if p["id"] <= result.cursor]
    if known:
        parsed = _valid_posts(db, base_url, known, result)
        with db.database.atomic():
            result.counts.add(write_parsed(db, parsed))
        result.posts += len(known)


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        return datetime.min.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_since(text: str) -> datetime:
    """`2024-05-01` or an ISO timestamp → an aware datetime (UTC when no offset is given)."""
    try:
        return _parse_time(text.strip())
    except ValueError:
        raise KdataError(f"--updated-since {text!r} is not a date: use YYYY-MM-DD or an ISO timestamp") from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise KdataError(f"--limit-per-page must be between 1 and {MAX_PAGE_LIMIT} (Danbooru's cap), got {limit}")



# --------------------------------------------------------------------------------------------
# Tag implications and aliases
# --------------------------------------------------------------------------------------------
RELATION_PAGE_LIMIT = 1000  # Danbooru's cap for index endpoints


def sync_tag_relations(db: DanbooruDB, client: DanbooruClient, *, progress: bool = False) -> dict[str, int]:
    """Pull every active implication and alias (`search[status]=active`, paged by id with
    `page=a<id>`) and make the kdata tables hold exactly those. A listing cut short by an error
    changes nothing: the tables are replaced only after the last page."""
    from kohaku_data.db.relations import ALIASES_PATH, IMPLICATIONS_PATH, parse_relation, replace_relations

    _require_sync_table(db)
    if not db.has_table("kdata_tag_implication"):
        from kohaku_data.db.migrate import migrate
        from kohaku_data.keepers import SUMMARY_KEEPERS

        migrate(db, keepers=SUMMARY_KEEPERS)
    stored: dict[str, int] = {}
    for kind, path in (("implications", IMPLICATIONS_PATH), ("aliases", ALIASES_PATH)):
        relations, bad, after = [], 0, 0
        with progress_bar(f"sync {kind}", total=None, enabled=progress) as bar:
            while True:
                page = client.get_json(path, {"limit": RELATION_PAGE_LIMIT, "page": f"a{after}",
                                              "search[status]": "active"})
                records = [r for r in page if isinstance(r, dict) and isinstance(r.get("id"), int)] \
                    if isinstance(page, list) else []
                bar.advance(1)
                if not records:
                    break
                for record in records:
                    try:
                        relations.append(parse_relation(record))
                    except RecordError:
                        bad += 1
                after = max(r["id"] for r in records)
        stored[kind] = replace_relations(db, kind, relations)
        stored[f"{kind}_rejected"] = bad
    return stored
