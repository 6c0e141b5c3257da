"""Every summary kdata keeps current after a write: the one declared list (the composition root
of db/summary.py's keepers).

`summary.refresh(db, keepers)` runs the keepers it is given; db/ knows only its own
(db/keepers.py: query bitmap index, post tag blocks, counts), and may not import a layer above
it, so the layers that own summaries are put together here, lowest first, and passed down by the
writers above db/ (kdata db import/migrate/init, sync, attach, the sample DB):

    migrate(db, keepers=SUMMARY_KEEPERS); import_files(db, paths, keepers=SUMMARY_KEEPERS)

A plain tuple built from imports, not a registry that modules fill when imported: what is kept
does not depend on what happened to be imported first. A layer with new summaries adds its
keeper here.
"""

from __future__ import annotations

from kohaku_data.captions.summaries import refresh_caption_summaries
from kohaku_data.db.keepers import DB_KEEPERS
from kohaku_data.db.summary import Keeper

# Thresholds, caption stats and prepared tag tables of the default and shipped recipes.
SUMMARY_KEEPERS: tuple[Keeper, ...] = (*DB_KEEPERS, refresh_caption_summaries)
