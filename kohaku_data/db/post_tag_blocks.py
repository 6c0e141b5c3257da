"""The blob layout of the post tag blocks (db/post_tags.py keeps the tables and their state;
post_tag_layout.py the block size both use).

A block holds the relations of `BLOCK` consecutive post ids: per id its number of relations,
then every relation's tag id as the difference from the post's previous (smaller) tag id, both
as little-endian uint32 split into byte planes, deflated at level 1.
"""

from __future__ import annotations

import zlib

import numpy as np

from kohaku_data.db.post_tag_layout import BLOCK, BLOCK_BITS


def encode_relations(packed_text: str, first: int, tag_bits: int) -> list[tuple[int, bytes]]:
    """(block, blob) rows of the relations in `packed_text` (PACKED_RELATIONS_SQL output for
    post ids from `first`, which starts a block)."""
    packed = np.sort(np.fromstring(packed_text, dtype=np.int64, sep=","))  # by post, then tag id
    offset, tag_id = packed >> tag_bits, packed & ((1 << tag_bits) - 1)
    block = offset >> BLOCK_BITS
    bounds = np.flatnonzero(np.diff(block)) + 1
    return [(int(b[0]) + (first >> BLOCK_BITS), encode_block(o & (BLOCK - 1), t))
            for b, o, t in zip(np.split(block, bounds), np.split(offset, bounds), np.split(tag_id, bounds))]


def relations_of_blocks(rows: list[tuple[int, bytes]], first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """(post_id, tag_id) of every relation in the fetched blocks whose post id lies in
    [first, last], by post id."""
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    parts = [decode_block(block, data) for block, data in rows]
    post_id = np.concatenate([p for p, _ in parts])
    tag_id = np.concatenate([t for _, t in parts])
    keep = slice(np.searchsorted(post_id, first), np.searchsorted(post_id, last, side="right"))
    return post_id[keep], tag_id[keep]


def encode_block(id_offset: np.ndarray, tag_id: np.ndarray) -> bytes:
    """One block's blob from its relations sorted by (id offset in the block, tag id)."""
    counts = np.bincount(id_offset, minlength=BLOCK).astype("<u4")
    delta = np.diff(tag_id, prepend=0)
    starts = _post_starts(counts)
    delta[starts] = tag_id[starts]
    return zlib.compress(_planes(counts) + _planes(delta.astype("<u4")), 1)


def decode_block(block: int, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(post_id, tag_id) of one block, by post id."""
    raw = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    counts = _unplanes(raw[:4 * BLOCK])
    delta = _unplanes(raw[4 * BLOCK:]).astype(np.int64)
    post_id = np.repeat(np.arange(block << BLOCK_BITS, (block + 1) << BLOCK_BITS, dtype=np.int64), counts)
    running = np.cumsum(delta)
    starts = _post_starts(counts)
    # cumsum restarts at each post: subtract what came before the post's first relation
    before = np.repeat(running[starts] - delta[starts], counts[counts > 0])
    return post_id, running - before


def _post_starts(counts: np.ndarray) -> np.ndarray:
    """Index of each post's first relation (posts with none left out)."""
    ends = np.cumsum(counts, dtype=np.int64)
    return (ends - counts)[counts > 0]


def _planes(values: np.ndarray) -> bytes:
    """Little-endian uint32s as four byte planes (low bytes first): deflate finds the long runs
    of zero high bytes that small counts and tag-id differences have."""
    return values.view(np.uint8).reshape(-1, 4).T.tobytes()


def _unplanes(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw.reshape(4, -1).T).view("<u4").ravel()
