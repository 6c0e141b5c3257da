"""Each post's tag ids in compressed blocks of post ids, for bulk caption reads
(`kohaku_data.db.post_tags`). kdata tables only, no change to the published ones:
`kdata_post_tags` (block → blob) and `kdata_post_tags_state` (layout, and the summary write
counter and fingerprint the blocks match: any later write makes readers use SQL until the
next import, sync or migrate rebuilds them). ~1.3 bytes per relation, ~2% of the file.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.post_tags import install


def migrate(db: DanbooruDB) -> None:
    install(db)
