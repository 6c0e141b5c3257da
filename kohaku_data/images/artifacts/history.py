"""JPEG history of a lossless image: were these pixels once a JPEG, and at about what quality?

A JPEG stores each 8x8 block's DCT coefficients as multiples of a step (its quantisation table).
Saved again losslessly (PNG, lossless WebP), the pixels keep that: the block DCT of the luma
plane, on the same grid, gives coefficients within rounding noise (~0.4) of multiples of the
step of each frequency. A picture that never was a JPEG gives coefficients with no such
lattice. Model-free: nothing is learned, only the lattice is tested.

Per frequency (DC and the first AC frequencies in zigzag order, where steps are small enough
to test and coefficients are non-zero often enough) the step is the largest Q whose "hit rate"
(share of coefficients within `TOL` of a multiple of Q), above the chance rate 2*TOL/Q, is
near the best; the frequency's evidence is that excess hit rate, 0 (no lattice) to 1 (every
coefficient on it). The image's score is the median evidence over the frequencies with enough
coefficients; its past quality is the IJG quality whose luma steps fit the found steps best.
"""

from __future__ import annotations

import numpy as np

from kohaku_data.images.artifacts.jpeg import IJG_LUMA, ijg_tables

# (row, column) of DC and the first 14 AC frequencies in zigzag order
ZIGZAG = ((0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0), (4, 0), (3, 1),
          (2, 2), (1, 3), (0, 4))
TOL = 0.75  # |coefficient - nearest multiple| counted as a hit (rounding noise: std ~0.4)
MIN_COEFS = 40  # coefficients a frequency needs to be tested
MIN_FREQS = 4  # tested frequencies an image needs for a score
MAX_BLOCKS = 1024  # busy blocks analysed (evenly spaced): bounds the cost on large images
MAX_COEFS = 256  # coefficients tested per frequency (evenly spaced; bench_artifacts: 512 found no more)
MAX_STEP = 64
SURE = 0.9  # evidence at phase (0, 0) this high: the lattice is found, no other phase is tried
NEAR_BEST = 0.85  # a step counts when its evidence is at least this share of the best


def dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II (JPEG's FDCT is this, applied to rows and columns)."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    m = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


def grid_phase(y: np.ndarray) -> tuple[int, int]:
    """(x, y) offset of the 8x8 grid where block edges are clearly stronger than at 0 (a JPEG
    cropped after decoding), else (0, 0). Flat art's own long edges can win too: a guess only,
    which `jpeg_history` tests beside phase (0, 0)."""
    return _phase(np.abs(np.diff(y, axis=1)).mean(axis=0)), _phase(np.abs(np.diff(y, axis=0)).mean(axis=1))


def _phase(edges: np.ndarray) -> int:
    if edges.size < 16:
        return 0
    # edges[c] is between pixel c and c+1: a block starting at p has an edge at c = p - 1 (mod 8)
    per = np.array([edges[(p - 1) % 8::8].mean() for p in range(8)])
    best = int(np.argmax(per))
    return best if per[best] > 1.15 * per[0] else 0


def block_coefficients(y: np.ndarray, phase: tuple[int, int]) -> np.ndarray | None:
    """(n, 8, 8) DCT coefficients of up to MAX_BLOCKS non-flat blocks on the grid at `phase`."""
    px, py = phase
    h, w = (y.shape[0] - py) // 8 * 8, (y.shape[1] - px) // 8 * 8
    if h < 16 or w < 16:
        return None
    blocks = y[py:py + h, px:px + w].reshape(h // 8, 8, w // 8, 8).swapaxes(1, 2).reshape(-1, 8, 8)
    busy = blocks[np.ptp(blocks, axis=(1, 2)) > 2]
    if len(busy) > MAX_BLOCKS:
        busy = busy[np.linspace(0, len(busy) - 1, MAX_BLOCKS).astype(np.int64)]
    d = dct_matrix()
    return d @ (busy - 128.0) @ d.T


def frequency_step(c: np.ndarray) -> tuple[int, float]:
    """(step, evidence) of one frequency's coefficients (|c| > 1.5 only: zeros fit any step)."""
    steps = np.arange(2, MAX_STEP + 1, dtype=np.float32)[:, None]
    off = np.abs(c[None, :] - steps * np.round(c[None, :] / steps))
    chance = np.minimum(1.0, 2 * TOL / steps[:, 0])
    excess = ((off < TOL).mean(axis=1) - chance) / np.maximum(1e-6, 1 - chance)
    top = float(excess.max())
    good = np.flatnonzero(excess >= (NEAR_BEST * top if top > 0 else top))
    best = int(good[-1])
    return best + 2, float(max(0.0, excess[best]))


def jpeg_history(y: np.ndarray) -> tuple[float | None, int | None]:
    """(evidence 0..1, estimated past IJG quality) of a luma plane; (None, None) when too few
    busy blocks or frequencies to say (tiny or flat images)."""
    best = _history_at(y, (0, 0))
    phase = grid_phase(y) if best[0] is None or best[0] < SURE else (0, 0)
    if phase == (0, 0):
        return best
    other = _history_at(y, phase)
    return other if other[0] is not None and (best[0] is None or other[0] > best[0]) else best


def _history_at(y: np.ndarray, phase: tuple[int, int]) -> tuple[float | None, int | None]:
    coefs = block_coefficients(y, phase)
    if coefs is None:
        return None, None
    found: list[tuple[int, int, float]] = []  # (natural index, step, evidence)
    for r, col in ZIGZAG:
        c = coefs[:, r, col]
        c = c[np.abs(c) > 1.5]
        if c.size > MAX_COEFS:
            c = c[np.linspace(0, c.size - 1, MAX_COEFS).astype(np.int64)]
        if c.size >= MIN_COEFS:
            step, evidence = frequency_step(c)
            found.append((r * 8 + col, step, evidence))
    if len(found) < MIN_FREQS:
        return None, None
    score = float(np.median([e for _, _, e in found]))
    return round(score, 4), past_quality(found)


def past_quality(found: list[tuple[int, int, float]]) -> int | None:
    """The IJG quality whose luma steps fit the steps found with strong evidence (log distance)."""
    strong = [(k, s) for k, s, e in found if e >= 0.5]
    if len(strong) < 2:
        return None
    idx = np.array([k for k, _ in strong])
    steps = np.log(np.array([s for _, s in strong], dtype=np.float64))
    cost = np.abs(np.log(ijg_tables(IJG_LUMA)[:, idx]) - steps[None, :]).sum(axis=1)
    return int(np.argmin(cost)) + 1
