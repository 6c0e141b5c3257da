"""The block geometry and layout version of the post tag blocks (migration 0011).

Shared by the tables (post_tags.py: sqlite only, so that caption reads fetch blobs while numpy
is still being imported) and the blob codec (post_tag_blocks.py: numpy). Kept apart so that
neither imports the other back: post_tags.py calls the codec to encode, the codec needs only
these numbers.
"""

from __future__ import annotations

BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS  # post ids per block
# Bumped whenever the blob layout changes: blocks of another layout count as stale.
LAYOUT = 1
