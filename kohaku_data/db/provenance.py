"""Where a DB's rows came from: one `kdata_import_source` row per imported file (migration 0012).

The sha256 is computed by a thread that reads the file beside the import (`FileHash`): the
import's own reader (pyarrow, gzip, polars) never has to hand its bytes over, and hashlib
releases the GIL for each block, so the hash costs wall time only where a core is free.
`sources(db)` lists what was imported, for `kdata db info` and a build's lock and card.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kohaku_data.db.handle import DanbooruDB

TABLE = "kdata_import_source"
_BLOCK = 4 << 20


class FileHash:
    """sha256 of a file, computed in a thread started at construction; `hexdigest()` waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest: str | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=f"sha256 {path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        h = hashlib.sha256()
        try:
            with open(self.path, "rb") as fh:
                while block := fh.read(_BLOCK):
                    h.update(block)
        except OSError as exc:
            self._error = exc
            return
        self._digest = h.hexdigest()

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


@dataclass
class SourceRecord:
    """What one import of one file did (counts of this run)."""

    name: str
    size: int
    sha256: str
    format: str  # "jsonl", "json array", "tag csv", "parquet posts (dot-flattened, pandas index)"…
    rows: int
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    policies: dict[str, Any]


def record(db: DanbooruDB, src: SourceRecord) -> None:
    """Store `src` (one transaction). The same file again: `runs` + 1; its counts replace the
    stored ones only when this run changed the DB (a no-op rerun keeps what the first run did)."""
    if not db.has_table(TABLE):
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    changed = src.inserted + src.updated > 0
    values = (src.sha256, src.name, src.size, src.format, src.rows, src.inserted, src.updated,
              src.unchanged, src.rejected, json.dumps(src.policies, sort_keys=True), now, now)
    conn = db.connection()
    with db.database.atomic():
        conn.execute(
            f'INSERT INTO "{TABLE}" (sha256, name, size, format, rows, inserted, updated, unchanged, '
            "rejected, policies, first_imported_at, last_imported_at, runs) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
            "ON CONFLICT (sha256, name) DO UPDATE SET runs = runs + 1, last_imported_at = excluded.last_imported_at"
            + (", rows = excluded.rows, inserted = excluded.inserted, updated = excluded.updated, "
               "unchanged = excluded.unchanged, rejected = excluded.rejected, policies = excluded.policies, "
               "format = excluded.format" if changed else ""),
            values,
        )


def sources(db: DanbooruDB) -> list[dict[str, Any]]:
    """Every imported file, oldest first: name, size, sha256, format, counts, policies, times."""
    if not db.has_table(TABLE):
        return []
    cur = db.connection().execute(f'SELECT * FROM "{TABLE}" ORDER BY first_imported_at, name')
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        item = dict(zip(names, row))
        item["policies"] = json.loads(item["policies"])
        out.append(item)
    return out
