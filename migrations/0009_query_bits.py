"""Bitmap index for whole-result queries and counts (`kohaku_data.db.query_bits`).

kdata tables only, no change to the published ones: `kdata_query_bits` (one packed bitmap per
tag with at least 1/64 of the id span, a bitmap of the ids that are posts, dense rating /
score / fav_count arrays) and `kdata_query_bits_state` (base, span, threshold, valid). Triggers
on `post` and `posttagrelation` clear `valid` in the same transaction as any write that changes
an answer, so a stale index is never used; `query_bits.refresh_if_stale` rebuilds it.
Measured on the 1M-post sample: ~40 MB (3% of the file); see benchmarks/bench_query.py.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.query_bits import install


def migrate(db: DanbooruDB) -> None:
    install(db)
