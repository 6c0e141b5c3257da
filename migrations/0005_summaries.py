"""Whole-DB summaries kept in the file and never served stale (kohaku_data/db/summary.py).

- `kdata_write_counter` (one row) and triggers `kdata_count_<table>_<op>` that bump it after
  every INSERT/UPDATE/DELETE on post, tag, posttagrelation and kdata_tag_alias;
- `kdata_summary`: name → JSON payload with the counter value and max-id fingerprint it was
  computed at (`kdata db info` counts, caption thresholds and stats, the /stats payload).
Only kdata tables and triggers: the published tables and columns are unchanged. The summaries
themselves are computed after the migrations (`summary.refresh`), not here.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.summary import install


def migrate(db: DanbooruDB) -> None:
    install(db)
