"""`DanbooruDB`: one open Danbooru2023 sqlite file with models bound to it.

    with DanbooruDB.open("danbooru.db", readonly=True) as db:
        db.Post.select().where(db.Post.score > 10).count()

Each handle builds its own model subclasses, so two files can be open at once
(`src.Post` and `dst.Post` are different classes bound to different databases).
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path
from typing import Self

from peewee import Model, SqliteDatabase

from kohaku_data.db import models
from kohaku_data.errors import KdataError


class DatabaseError(KdataError):
    """A database file is missing, unreadable or not a Danbooru2023 sqlite."""


def published_schema_sql() -> str:
    """The DDL of the published Danbooru2023 sqlite (comments included)."""
    return resources.files("kohaku_data.resources").joinpath("danbooru2023-schema.sql").read_text()


# Pragmas for writers only: a reader must never change the file (WAL mode would).
_WRITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "cache_size": -64_000}
_READ_PRAGMAS = {"cache_size": -64_000, "mmap_size": 1 << 30, "temp_store": "memory"}


class DanbooruDB:
    """An open database file and the models bound to it."""

    Post: type[models.Post]
    Tag: type[models.Tag]
    PostTagRelation: type[models.PostTagRelation]
    TagAlias: type[models.TagAlias]
    SchemaVersion: type[models.SchemaVersion]
    SyncState: type[models.SyncState]

    def __init__(self, database: SqliteDatabase, path: Path, readonly: bool) -> None:
        self.database = database
        self.path = path
        self.readonly = readonly
        for base in models.PUBLISHED_MODELS + models.KDATA_MODELS:
            setattr(self, base.__name__, _bind(base, database))
        self.has_updated_at = "updated_at" in self.columns("post")
        if not self.has_updated_at:
            # Copies published before June 2024 lack the column: read them as they are.
            self.Post._meta.remove_field("updated_at")

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False) -> Self:
        """Open an existing file. `readonly=True` opens it with sqlite's `mode=ro`."""
        path = Path(path)
        if not path.is_file():
            raise DatabaseError(
                f"database {path} does not exist: create one with `kdata db init --db {path}` "
                f"or `kdata sample OUT`"
            )
        if readonly:
            database = SqliteDatabase(
                f"file:{path.resolve()}?mode=ro", uri=True, pragmas=_READ_PRAGMAS
            )
        else:
            database = SqliteDatabase(str(path), pragmas=_WRITE_PRAGMAS)
        try:
            database.connect()
            tables = set(database.get_tables())
        except Exception as exc:  # sqlite3.DatabaseError: "file is not a database"
            database.close()
            raise DatabaseError(f"cannot read {path} as sqlite: {exc}") from exc
        missing = {"post", "tag", "posttagrelation"} - tables
        if missing:
            database.close()
            raise DatabaseError(
                f"{path} is not a Danbooru2023 database (missing tables: {', '.join(sorted(missing))})"
            )
        return cls(database, path, readonly)

    @classmethod
    def create(cls, path: str | Path) -> Self:
        """Make an empty file with exactly the published schema (kdata tables come from migrate)."""
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            raise DatabaseError(f"{path} already exists: refusing to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.executescript(published_schema_sql())
        conn.close()
        return cls.open(path)

    # -- helpers ---------------------------------------------------------------------------
    def columns(self, table: str) -> list[str]:
        return [c.name for c in self.database.get_columns(table)]

    def has_table(self, table: str) -> bool:
        return self.database.table_exists(table)

    def connection(self) -> sqlite3.Connection:
        """The raw sqlite3 connection (for bulk reads that bypass the ORM)."""
        return self.database.connection()

    def close(self) -> None:
        if not self.database.is_closed():
            self.database.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.readonly else "rw"
        return f"<DanbooruDB {self.path} ({mode})>"


def _bind(base: type[Model], database: SqliteDatabase) -> type[Model]:
    """A subclass of `base` bound to `database`; the unbound base is left untouched."""
    meta = type("Meta", (), {"database": database, "table_name": base._meta.table_name})
    return type(base.__name__, (base,), {"Meta": meta, "__module__": base.__module__})
