"""Danbooru tag implications (`cat_ears` → `animal_ears`): `kdata_tag_implication`.

One row per active implication, by tag *name* (as Danbooru's `/tag_implications.json` gives
them; names outlive ids across imports). Aliases already have `kdata_tag_alias` (0001), which
`/tag_aliases.json` fills too. Captions drop an implied tag when a tag implying it (through any
chain) is on the post: see `kohaku_data/curation/tagrules.py`.
"""

from kohaku_data.db.handle import DanbooruDB


def migrate(db: DanbooruDB) -> None:
    conn = db.connection()
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "kdata_tag_implication" ('
        '"antecedent" TEXT NOT NULL, "consequent" TEXT NOT NULL, '
        'PRIMARY KEY ("antecedent", "consequent")) WITHOUT ROWID'
    )
    conn.execute(
        'CREATE INDEX IF NOT EXISTS "kdata_tag_implication_consequent" ON "kdata_tag_implication" ("consequent")'
    )
