"""Each post's tag ids in compressed blocks of post ids, for bulk caption reads
(`kohaku_data.db.post_tags`). kdata tables and triggers only, no change to the published
ones: `kdata_post_tags` (block → blob), `kdata_post_tags_state` (layout, complete) and
`kdata_post_tags_dirty` (blocks written since: triggers on `posttagrelation` note them in the
writing transaction; readers use SQL while any is noted, and the next import, sync or migrate
re-encodes just those). ~1.3 bytes per relation, ~2% of the file.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.post_tags import install


def migrate(db: DanbooruDB) -> None:
    install(db)
