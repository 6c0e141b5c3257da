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
  so only columns with a changing column within 3 either side count. Saved as a JPEG afterwards
  (most upscaled uploads are), the repeats are no longer exact: the coding noise changes every
  column a little. There a *quiet* column counts instead: one with almost none of the real
  steps (> STEP grey levels) that the busiest column within 3 either side has; such columns
  take the same share 1 - 1/s (a noisier JPEG breaks some: the factor comes out low). A smooth
  upscale of hard-edged art can have as many quiet columns, but also a high cliff (1.6-2.8
  decades; nearest, JPEG or not: 0.34-0.89), so the quiet test only counts below QUIET_MAX_CLIFF.

The factor is the larger of the two estimates when it passes its threshold, else 1.0.
"""

from __future__ import annotations

import functools

import numpy as np

GRID = 257  # frequencies 0..0.5 on which the spectra are compared
FACTORS = np.round(np.arange(1.1, 5.001, 0.05), 2)
MIN_SIDE = 64  # a window side below this gives no estimate
ROW_STEP_FROM = 256  # a plane with this many rows or more: every 2nd row's spectrum is averaged
CLIFF = 0.85  # log10 power drop (decades) that counts as a cut-off (bench_artifacts: clean art reaches 0.73; x1.5 bilinear/bicubic 0.93-0.97)
NEAREST_SHARE = 0.12  # repeated-column share that counts as a nearest-neighbour upscale
# the quiet-column test, for repeats under coding noise (bench_artifacts and a held-out set:
# nearest x1.25-x4 then JPEG q90 share >= 0.197 (x1.25's 1 - 1/s is 0.2); never-upscaled art,
# PNG, JPEG q30-95, WebP: <= 0.151)
STEP = 16.0  # grey levels: a real step, above JPEG q75-q95 noise beside an edge
QUIET = 0.15  # a column with at most this share of its neighbourhood's steps is quiet
BUSY_ROWS = 4  # a neighbourhood with fewer stepping rows says nothing
NEAREST_QUIET_SHARE = 0.18
QUIET_MAX_CLIFF = 1.2  # decades: above it the quiet columns are a smooth filter's (see above)


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
    below, above, usable = _bands()
    drops = np.where(usable, below @ log_power - above @ log_power, 0.0)
    best = int(np.argmax(drops))  # the first of equal heights, as a loop over FACTORS finds it
    return (float(FACTORS[best]), float(drops[best])) if drops[best] > 0 else (1.0, 0.0)


@functools.cache
def _bands() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate factor s (cut-off fc = 0.5 / s): averaging weights over GRID of the band
    just below (0.7-0.95 fc) and just above (1.05-1.6 fc, at most 0.5) the cut-off, and whether
    the band above is wide enough to test (not too near Nyquist). Read-only."""
    grid = np.linspace(0.0, 0.5, GRID)
    fc = 0.5 / FACTORS[:, None]
    below = (grid >= 0.7 * fc) & (grid <= 0.95 * fc)
    above = (grid >= 1.05 * fc) & (grid <= np.minimum(0.5, 1.6 * fc))
    usable = (np.minimum(0.5, 1.6 * fc[:, 0]) - 1.05 * fc[:, 0] >= 0.15 * fc[:, 0]) & below.any(1) & above.any(1)
    out = (below / np.maximum(1, below.sum(1, keepdims=True)), above / np.maximum(1, above.sum(1, keepdims=True)), usable)
    for a in out:
        a.flags.writeable = False
    return out


def repeated_share(steps: np.ndarray, axis: int) -> float:
    """Share of columns (axis=1) or rows (axis=0) equal to their predecessor, among those near
    a changing one. `steps`: |np.diff(y, axis=axis)| of the luma window."""
    change = steps.max(axis=1 - axis) >= 0.5
    if change.size < 8 or not change.any():
        return 0.0
    near = np.convolve(change.astype(np.float32), np.ones(7, np.float32), mode="same") > 0
    return float((~change & near).sum() / max(1, near.sum()))


def quiet_share(steps: np.ndarray, axis: int) -> float:
    """Share of columns (axis=1) or rows (axis=0) with at most QUIET of the real steps of the
    busiest one within 3 either side, among those whose neighbourhood steps in BUSY_ROWS rows or
    more. `steps`: |np.diff(y, axis=axis)| of the luma window."""
    real = (steps > STEP).sum(axis=1 - axis)
    if real.size < 8:
        return 0.0
    padded = np.pad(real, 3, mode="edge")
    busiest = np.lib.stride_tricks.sliding_window_view(padded, 7).max(axis=1)
    busy = busiest >= BUSY_ROWS
    return float((busy & (real <= QUIET * busiest)).sum() / max(1, busy.sum()))


def nearest_share(y: np.ndarray, cliff_height: float) -> float | None:
    """The repeated share of a nearest-neighbour upscale (its factor is 1 / (1 - share)), or
    None when neither the exact nor the quiet-column test finds one."""
    steps = [np.abs(np.diff(y, axis=axis)) for axis in (0, 1)]  # one difference per axis, both tests
    exact = min(repeated_share(steps[0], 0), repeated_share(steps[1], 1))
    if exact >= NEAREST_SHARE:
        return exact
    if cliff_height >= QUIET_MAX_CLIFF:
        return None
    quiet = min(quiet_share(steps[0], 0), quiet_share(steps[1], 1))
    return quiet if quiet >= NEAREST_QUIET_SHARE else None


def upscale_factor(y: np.ndarray) -> tuple[float | None, str | None, float | None]:
    """(factor, "nearest" | "smooth" | None, cliff height) of a luma window; factor 1.0 when
    not upscaled; (None, None, None) for a window too small to tell."""
    if min(y.shape) < MIN_SIDE:
        return None, None, None
    factor, height = cliff(spectrum(y))
    share = nearest_share(y, height)
    if share is not None:
        return round(1.0 / (1.0 - share), 2), "nearest", round(height, 3)
    if height >= CLIFF:
        return factor, "smooth", round(height, 3)
    return 1.0, None, round(height, 3)
