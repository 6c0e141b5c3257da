"""Trigram index for `source:` patterns (issue 20).

`kdata_source_fts`: an FTS5 table with the trigram tokenizer over `post.source` (external
content: no copy of the text, ~the size of the trigram lists), kept current by triggers on
`post` insert/delete/update of id or source. `source:https://*pixiv*` takes its candidates from
the trigrams of its longest literal run after the start (`pixiv`, when few posts hold it) and
re-checks each against today's LIKE, so its answer is unchanged; other patterns keep 0014's
NOCASE index range or the scan (kohaku_data/db/query_plan.py `_source_sql`). Where this SQLite has
no FTS5 trigram tokenizer (before 3.34) the migration adds nothing and source: keeps 0014's path.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db import source_trigrams


def migrate(db: DanbooruDB) -> None:
    source_trigrams.install(db.connection())
