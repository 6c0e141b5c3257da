"""Upscaling: by about what factor was this image enlarged from a smaller original?

Two model-free tests on the luma window:

- smooth filters (bilinear, bicubic, Lanczos, and most upscalers): an image enlarged s times
  holds almost no energy above 0.5 / s cycles per pixel, the old Nyquist frequency. The mean
  row and column power spectra (Hann-windowed) in log10 show a cliff there; for each candidate
  s the cliff's height is the mean log power just below 0.5 / s minus the mean just above it.
  The highest cliff gives the factor; a clean drawing's spectrum falls smoothly (no cliff).
- nearest neighbour keeps its aliases (no cliff) but repeats whole columns and rows: a column
  identical to its left neighbour over the window's full height, right beside columns that
  change, happens in a share 1 - 1/s of the columns. Empty bands (a gradient sky) repeat too,
  so only columns with a changing column within 3 either side count.

The factor is the larger of the two estimates when it passes its threshold, else 1.0.
"""

from __future__ import annotations

import numpy as np

GRID = 257  # frequencies 0..0.5 on which the spectra are compared
FACTORS = np.round(np.arange(1.1, 5.001, 0.05), 2)
MIN_SIDE = 64  # a window side below this gives no estimate
ROW_STEP_FROM = 256  # a plane with this many rows or more: every 2nd row's spectrum is averaged
CLIFF = 1.0  # log10 power drop (decades) that counts as a cut-off (bench_artifacts)
NEAREST_SHARE = 0.12  # repeated-column share that counts as a nearest-neighbour upscale


def spectrum(y: np.ndarray) -> np.ndarray:
    """log10 of the mean row + column power on GRID frequencies 0..0.5."""
    total = np.zeros(GRID)
    grid = np.linspace(0.0, 0.5, GRID)
    for plane in (y, y.T):
        plane = plane[::2] if plane.shape[0] >= ROW_STEP_FROM else plane  # the mean spectrum, at half the cost
        rows = plane - plane.mean(axis=1, keepdims=True)
        window = np.hanning(rows.shape[1]).astype(np.float32)
        f = np.fft.rfft(rows * window, axis=1)
        power = (f.real ** 2 + f.imag ** 2).mean(axis=0)
        total += np.interp(grid, np.fft.rfftfreq(rows.shape[1]), power)
    return np.log10(total + 1e-3)


def cliff(log_power: np.ndarray) -> tuple[float, float]:
    """(factor, cliff height in decades) of the highest cliff over the candidate factors."""
    grid = np.linspace(0.0, 0.5, GRID)
    best = (1.0, 0.0)
    for s in FACTORS:
        fc = 0.5 / s
        below = log_power[(grid >= 0.7 * fc) & (grid <= 0.95 * fc)]
        above = log_power[(grid >= 1.05 * fc) & (grid <= min(0.5, 1.6 * fc))]
        if min(0.5, 1.6 * fc) - 1.05 * fc < 0.15 * fc:  # too narrow a band above (near Nyquist)
            continue
        if below.size and above.size:
            drop = float(below.mean() - above.mean())
            if drop > best[1]:
                best = (float(s), drop)
    return best


def repeated_share(y: np.ndarray, axis: int) -> float:
    """Share of columns (axis=1) or rows (axis=0) equal to their predecessor, among those near
    a changing one."""
    change = np.abs(np.diff(y, axis=axis)).max(axis=1 - axis) >= 0.5
    if change.size < 8 or not change.any():
        return 0.0
    near = np.convolve(change.astype(np.float32), np.ones(7, np.float32), mode="same") > 0
    return float((~change & near).sum() / max(1, near.sum()))


def upscale_factor(y: np.ndarray) -> tuple[float | None, str | None, float | None]:
    """(factor, "nearest" | "smooth" | None, cliff height) of a luma window; factor 1.0 when
    not upscaled; (None, None, None) for a window too small to tell."""
    if min(y.shape) < MIN_SIDE:
        return None, None, None
    share = min(repeated_share(y, 0), repeated_share(y, 1))
    factor, height = cliff(spectrum(y))
    if share >= NEAREST_SHARE:
        return round(1.0 / (1.0 - share), 2), "nearest", round(height, 3)
    if height >= CLIFF:
        return factor, "smooth", round(height, 3)
    return 1.0, None, round(height, 3)
