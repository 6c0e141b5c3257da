"""Grouping hashes into duplicate groups: near pairs by multi-index hashing, then components.

Near pairs (Hamming distance ≤ r between 64-bit hashes) come from a multi-index (Norouzi et
al., "Fast search in Hamming space with multi-index hashing"): the bits are cut into m blocks;
two hashes within r differ in some block by at most ⌊r/m⌋ bits (pigeonhole), so every pair is
found by probing, per block, each hash's block value XOR every pattern of ≤ ⌊r/m⌋ bits — no
pair is missed and nothing is compared all-pairs. m is chosen per call from the number of
distinct hashes to minimise probes × expected bucket size. Identical hashes are merged first
(a flat picture and its copies are one entry), blocks up to 24 bits use a dense count table (a
probe is one gather), and candidate lists are expanded in bounded slices so memory stays flat.

Groups are the connected components of the pair graph (so A~B and B~C group A, B, C): found
by label propagation (each node takes the smallest label of its neighbours until nothing
changes), which depends on the pairs only, never on their order — deterministic.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

_BITS = 64
_DENSE_MAX_WIDTH = 24
_SLICE = 4_000_000  # candidate pairs expanded per step


def components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Label of each of `n` nodes: the smallest node index of its component."""
    labels = np.arange(n, dtype=np.int64)
    if not len(left):
        return labels
    left, right = left.astype(np.int64), right.astype(np.int64)
    while True:
        low = np.minimum(labels[left], labels[right])
        before = labels.copy()
        np.minimum.at(labels, left, low)
        np.minimum.at(labels, right, low)
        labels = labels[labels]  # pointer jumping: long chains settle in log steps
        if np.array_equal(labels, before):
            return labels


def choose_blocks(n: int, radius: int) -> int:
    """Blocks m minimising m × probes(⌊r/m⌋) × (1 + n / 2^width) (cost per hash)."""
    best, best_cost = 1, math.inf
    for m in range(1, min(radius + 1, 16) + 1):
        width = _BITS // m
        probes = sum(math.comb(width, k) for k in range(radius // m + 1))
        cost = m * probes * (1 + n / 2.0 ** width)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _block_layout(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m blocks covering 64 bits (widths differ by at most one)."""
    widths = [_BITS // m + (1 if i < _BITS % m else 0) for i in range(m)]
    shifts = np.cumsum([0] + widths[:-1])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def _patterns(width: int, bits: int) -> np.ndarray:
    out = [0]
    for k in range(1, bits + 1):
        out += [sum(1 << b for b in combo) for combo in itertools.combinations(range(width), k)]
    return np.array(out, dtype=np.uint64)


def near_pairs(hashes: np.ndarray, radius: int, blocks: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance), i < j, of pairs of `hashes` (uint64) within `radius` bits: enough
    pairs for the components to be exact. Copies of one value are linked to its first
    occurrence (distance 0); distinct values are searched once, between first occurrences."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    ui, uj, ud = _unique_pairs(unique, radius, blocks)
    copies = np.nonzero(first[inverse] != np.arange(len(hashes)))[0]
    i = np.concatenate([first[inverse[copies]], first[ui]])
    j = np.concatenate([copies, first[uj]])
    d = np.concatenate([np.zeros(len(copies), dtype=np.int64), ud])
    return np.minimum(i, j), np.maximum(i, j), d


def _unique_pairs(unique: np.ndarray, radius: int, blocks: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(unique)
    empty = (np.empty(0, np.int64),) * 3
    if n < 2:
        return empty
    m = blocks or choose_blocks(n, radius)
    found_i, found_j, found_d = [], [], []
    for shift, width in _block_layout(m):
        values = (unique >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        index = _BlockIndex(values, width)
        for pattern in _patterns(width, radius // m):
            lo, count = index.lookup(values ^ pattern)
            for i, j in _expand(lo, count, index.order):
                keep = i < j
                i, j = i[keep], j[keep]
                d = np.bitwise_count(unique[i] ^ unique[j]).astype(np.int64)
                near = d <= radius
                found_i.append(i[near])
                found_j.append(j[near])
                found_d.append(d[near])
    if not found_i:
        return empty
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    key = i * n + j  # a pair found through several blocks once
    _, first = np.unique(key, return_index=True)
    return i[first], j[first], d[first]


class _BlockIndex:
    """Where each block value's hashes lie in `order` (hashes sorted by block value)."""

    def __init__(self, values: np.ndarray, width: int) -> None:
        self.order = np.argsort(values, kind="stable")
        self.dense = width <= _DENSE_MAX_WIDTH
        if self.dense:
            self.counts = np.bincount(values.astype(np.int64), minlength=1 << width)
            self.starts = np.cumsum(self.counts) - self.counts
        else:
            self.sorted = values[self.order]

    def lookup(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.dense:
            t = targets.astype(np.int64)
            return self.starts[t], self.counts[t]
        lo = np.searchsorted(self.sorted, targets, "left")
        return lo, np.searchsorted(self.sorted, targets, "right") - lo


def _expand(lo: np.ndarray, count: np.ndarray, order: np.ndarray):
    """(query index, candidate index) arrays, in slices of at most ~_SLICE pairs."""
    hit = np.nonzero(count)[0]
    if not len(hit):
        return
    total = np.cumsum(count[hit])
    start = 0
    while start < len(hit):
        base = total[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(total, base + _SLICE, "right")))
        rows = hit[start:stop]
        c = count[rows]
        query = np.repeat(rows, c)
        within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        yield query, order[np.repeat(lo[rows], c) + within]
        start = stop


def family_labels(ids: np.ndarray, parent_ids: np.ndarray) -> np.ndarray:
    """Family of each post: the component of parent links (a post, its parent, its siblings —
    the parent need not be among `ids`), labelled by the smallest id in it."""
    parents = np.where(parent_ids > 0, parent_ids, ids)  # 0 / null: its own family
    nodes, inverse = np.unique(np.concatenate([ids, parents]), return_inverse=True)
    n = len(ids)
    labels = components(len(nodes), inverse[:n], inverse[n:])
    return nodes[labels[:n]]
