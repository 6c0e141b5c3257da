"""Schema migrations: `migrations/NNNN_name.py`, applied in order, recorded in `kdata_schema_version`.

Each migration module defines `migrate(db: DanbooruDB) -> None`. The runner applies every
migration whose number is not yet recorded, each in its own transaction together with its
record, so a failure leaves the file at the last good version and running twice is a no-op.
Migrations only add kdata tables, indexes and missing published columns; they never change
published columns, so the published tools still read a migrated file.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Sequence
from types import ModuleType

from peewee import CharField

from kohaku_data.db import summary
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.keepers import DB_KEEPERS
# Read by the runner, and importable from here as before (kdata db migrate prints the version).
from kohaku_data.db.schema_version import applied_versions, current_version
from kohaku_data.errors import KdataError

_NAME = re.compile(r"^(\d{4})_(\w+)\.py$")


class MigrationError(KdataError):
    """The migrations folder is missing or a migration failed (the file keeps its last version)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # "0001_kdata_tables"
    path: Path


def migrations_dir() -> Path:
    """The installed `kohaku_data.migrations` package: the top-level `migrations/` folder, which
    setup.py maps into the wheel (and an editable install maps back to the checkout)."""
    return Path(str(importlib.resources.files("kohaku_data.migrations")))


def available(directory: Path | None = None) -> list[Migration]:
    """All migrations in `directory`, ordered by number; two with one number are an error."""
    directory = directory or migrations_dir()
    if not directory.is_dir():
        raise MigrationError(
            f"migrations folder {directory} not found: reinstall kohaku-data (pip install --force-reinstall kohaku-data)"
        )
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.py")):
        match = _NAME.match(path.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, path.stem, path)
    return [found[v] for v in sorted(found)]


def pending(db: DanbooruDB, directory: Path | None = None) -> list[Migration]:
    done = applied_versions(db)
    return [m for m in available(directory) if m.version not in done]


def migrate(db: DanbooruDB, directory: Path | None = None, *, keep_deferred: bool = False,
            refresh_summaries: bool = True, keepers: Sequence[summary.Keeper] = DB_KEEPERS) -> list[str]:
    """Apply pending migrations in order; return the names applied (empty: already current).

    Also rebuilds indexes left deferred by an interrupted bulk import, unless `keep_deferred`
    (a bulk import about to defer them again: rebuilding them first would be wasted work), puts
    back the write-counting triggers a killed import left dropped, and, unless
    `refresh_summaries` is False (a writer that refreshes when it is done), recomputes the
    summaries (db/summary.py) of `keepers` when a migration ran or they are stale. `keepers`
    defaults to the DB's own (db/keepers.py); callers above db/ pass the whole list
    (kohaku_data.keepers.SUMMARY_KEEPERS), which adds the caption summaries.
    """
    if not keep_deferred:
        restore_deferred_indexes(db)
    todo = pending(db, directory)
    if todo and db.readonly:
        raise MigrationError(
            f"{db.path} needs migrations {', '.join(m.name for m in todo)}: run `kdata db migrate --db {db.path}`"
        )
    applied = []
    for migration in todo:
        module = _load(migration)
        try:
            with db.database.atomic():
                module.migrate(db)
                db.connection().execute(
                    "INSERT INTO kdata_schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, datetime.now(timezone.utc).isoformat()),
                )
        except Exception as exc:
            raise MigrationError(
                f"migration {migration.name} failed on {db.path}: {exc} (the file stays at version "
                f"{current_version(db)})"
            ) from exc
        finally:
            _refresh(db)
        applied.append(migration.name)
    _keep_summaries(db, refresh=refresh_summaries, changed=bool(applied), keepers=keepers)
    return applied


def _keep_summaries(db: DanbooruDB, *, refresh: bool, changed: bool, keepers: Sequence[summary.Keeper]) -> None:
    if db.readonly or not summary.has_summaries(db):
        return
    summary.ensure_counting(db)
    # Also after an upgrade of kdata that stores other summaries: `kdata db migrate` brings them.
    if refresh and (changed or not summary.up_to_date(db, keepers)):
        summary.refresh(db, keepers)


def _load(migration: Migration) -> ModuleType:
    # Loaded by path under a private name: migration files start with a digit and are not a package.
    spec = importlib.util.spec_from_file_location(f"_kdata_migration_{migration.version:04d}", migration.path)
    if spec is None or spec.loader is None:
        raise MigrationError(f"cannot load migration {migration.path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "migrate", None)):
        raise MigrationError(f"migration {migration.path} defines no migrate(db) function")
    return module


def _refresh(db: DanbooruDB) -> None:
    """Bring the open handle up to date after a migration added `post.updated_at`."""
    has = "updated_at" in db.columns("post")
    if has and not db.has_updated_at:
        db.Post._meta.add_field("updated_at", CharField())
    db.has_updated_at = has


# --------------------------------------------------------------------------------------------
# Helpers for migrations
# --------------------------------------------------------------------------------------------
def make_covering(db: DanbooruDB, name: str, table: str, columns: tuple[str, ...]) -> None:
    """Define index `name` as `table(columns)`. Used to turn a published single-column index
    into a covering one under the same name: its leading column is unchanged, so every query
    that used it still can, and one index serves where two would otherwise be kept."""
    conn = db.connection()
    quoted = ", ".join(f'"{c}"' for c in columns)
    want = f'CREATE INDEX "{name}" ON "{table}" ({quoted})'
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone()
    if row is not None and row[0] == want:
        return
    if row is not None:
        conn.execute(f'DROP INDEX "{name}"')
    conn.execute(want)


# --------------------------------------------------------------------------------------------
# Deferred indexes (bulk imports)
# --------------------------------------------------------------------------------------------
# A bulk import into a (nearly) empty file is several times cheaper when the secondary indexes of
# `post` and `posttagrelation` (the published ones and migration 0003's) are built once at the
# end instead of row by row. Their DDL is kept in this table in the same transaction that drops
# them, so a killed import loses nothing: the next import or `kdata db migrate` rebuilds them.
# `posttagrelation_post_id` is dropped too; the importer restores it alone (`restore_deferred_
# indexes(db, {name})`) the first time it must read a stored post's relations.
_DEFERRED_TABLE = "kdata_deferred_index"


def defer_indexes(db: DanbooruDB) -> list[str]:
    """Drop the secondary indexes of post/posttagrelation, remembering their DDL; return names."""
    conn = db.connection()
    with db.database.atomic():
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{_DEFERRED_TABLE}" (name TEXT PRIMARY KEY, sql TEXT NOT NULL)')
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name IN ('post', 'posttagrelation')"
        ).fetchall()
        conn.executemany(f'INSERT OR REPLACE INTO "{_DEFERRED_TABLE}" (name, sql) VALUES (?, ?)', rows)
        for name, _ in rows:
            conn.execute(f'DROP INDEX "{name}"')
    return [name for name, _ in rows]


def deferred_indexes(db: DanbooruDB) -> list[str]:
    """Names of the indexes currently dropped by `defer_indexes` (empty: none)."""
    if not db.has_table(_DEFERRED_TABLE):
        return []
    return [r[0] for r in db.connection().execute(f'SELECT name FROM "{_DEFERRED_TABLE}" ORDER BY name')]


def restore_deferred_indexes(db: DanbooruDB, names: set[str] | None = None) -> list[str]:
    """Rebuild indexes dropped by `defer_indexes` (also after a killed import); return names.

    `names` restores only those (the rest stay deferred); None restores all of them.
    """
    if db.readonly or not db.has_table(_DEFERRED_TABLE):
        return []
    conn = db.connection()
    with db.database.atomic():
        rows = conn.execute(f'SELECT name, sql FROM "{_DEFERRED_TABLE}" ORDER BY name').fetchall()
        rows = [(name, sql) for name, sql in rows if names is None or name in names]
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        for name, sql in rows:
            if name not in existing:
                conn.execute(sql)
        conn.executemany(f'DELETE FROM "{_DEFERRED_TABLE}" WHERE name = ?', [(n,) for n, _ in rows])
        if conn.execute(f'SELECT count(*) FROM "{_DEFERRED_TABLE}"').fetchone()[0] == 0:
            conn.execute(f'DROP TABLE "{_DEFERRED_TABLE}"')
    return [name for name, _ in rows]
