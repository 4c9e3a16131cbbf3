"""Prediction windows: a point cloud larger than the training tiles, cut into tiles of their size.

The grid is laid over each tile's own XY extent (the seed's min-max binning), so a model trained
on 100 m tiles would see a 1 km file at a tenth of the scale it learnt. ``predict`` therefore cuts
such a file into windows with the training tiles' side (``grid.tile_extent``): along each axis as
few windows as overlap their neighbours by at least ``overlap`` of a side, evenly spaced from edge
to edge, or one centred window where the file is narrower than a tile. Every point is read by each
window that contains it (context) and takes its class from exactly one: the window whose centre is
nearest. So a point is classified at least ``overlap / 2`` of a side inside its window (except at
the file's own edges), where a mound cut by the window's edge has most of its shape in view.

All limits are raw integer LAS coordinates (``X = round((x - offset) / scale)``), so the windows,
the point selection and the voxel grids agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "WINDOW_OVERLAP",
    "WINDOW_TRIGGER",
    "Window",
    "WindowPlan",
    "crs_bounds",
    "plan_for",
    "plan_windows",
]

WINDOW_TRIGGER = 1.25
"""A file is cut when its larger side is more than this many training-tile sides: tiles of a
dataset are rarely all the same size, and a file 20 % larger than them is still one tile."""

WINDOW_OVERLAP = 0.25
"""Default least overlap of neighbouring windows, as a fraction of their side (MONAI's
``sliding_window_inference`` default too): each point is classified at least 1/8 of a side from
its window's edge, for (1 / 0.75)^2 = 1.8x the windows of no overlap."""


@dataclass(frozen=True)
class Window:
    """One window: grid position (row 0 = north, column 0 = west) and raw XY limits (inclusive)."""

    row: int
    col: int
    x: tuple[int, int]
    y: tuple[int, int]

    @property
    def limits(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((X min, X max), (Y min, Y max))``, the form :func:`~uxbseg.data.voxelize.voxelize`
        takes."""
        return self.x, self.y


def _starts(lo: int, hi: int, side: int, overlap: float) -> np.ndarray:
    span = hi - lo
    if span <= side:  # narrower than a tile: one window centred on the data
        return np.array([lo + span // 2 - side // 2], dtype=np.int64)
    stride = max(1, math.floor(side * (1.0 - overlap)))  # the longest step keeping the overlap
    n = 1 + math.ceil((span - side) / stride)
    return np.array([lo + (i * (span - side)) // (n - 1) for i in range(n)], dtype=np.int64)


def _boundaries(starts: np.ndarray, side: int) -> np.ndarray:
    """Where one window's points end and the next one's begin: the middle of their overlap
    (= between their centres), so each point lies inside the window it is given to."""
    return (starts[1:] + starts[:-1] + side) // 2


@dataclass(frozen=True)
class WindowPlan:
    """Windows of ``side`` (raw units per axis) starting at ``x_starts`` / ``y_starts``, over
    data spanning ``x_limits`` / ``y_limits``."""

    x_starts: np.ndarray
    y_starts: np.ndarray  # ascending, i.e. south first; rows count from the north
    side: tuple[int, int]
    x_limits: tuple[int, int]
    y_limits: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return len(self.y_starts), len(self.x_starts)

    def __len__(self) -> int:
        return len(self.x_starts) * len(self.y_starts)

    def window(self, row: int, col: int) -> Window:
        """The window at ``row`` (0 = north) and ``col`` (0 = west)."""
        sx, sy = self.side
        x0 = int(self.x_starts[col])
        y0 = int(self.y_starts[len(self.y_starts) - 1 - row])
        return Window(row, col, (x0, x0 + sx), (y0, y0 + sy))

    def __iter__(self) -> Iterator[Window]:
        rows, cols = self.shape
        for col in range(cols):  # column by column: the points of a column are selected once
            for row in range(rows):
                yield self.window(row, col)

    def columns(self, X: np.ndarray) -> np.ndarray:
        """The column each raw X is predicted in."""
        return np.searchsorted(_boundaries(self.x_starts, self.side[0]), X, side="right")

    def rows(self, Y: np.ndarray) -> np.ndarray:
        """The row (0 = north) each raw Y is predicted in."""
        south_first = np.searchsorted(_boundaries(self.y_starts, self.side[1]), Y, side="right")
        return len(self.y_starts) - 1 - south_first

    def over(self, limits: tuple[tuple[int, int], tuple[int, int]]) -> tuple[range, range]:
        """The rows and columns of the windows that points within raw XY ``limits`` take."""
        (x0, x1), (y0, y1) = limits
        cols, rows = self.columns(np.array([x0, x1])), self.rows(np.array([y0, y1]))
        return range(int(rows[1]), int(rows[0]) + 1), range(int(cols[0]), int(cols[1]) + 1)

    def owned_cells(self, win: Window, hw: tuple[int, int], binning: str) -> np.ndarray:
        """Bool (H, W): the cells of ``win``'s grid (row 0 = north) whose centre takes its class
        from ``win``, so that scoring each window's own cells scores every place once.
        ``binning`` is the grid's (:class:`~uxbseg.data.voxelize.GridSpec`)."""
        h, w = hw
        xs = _cell_centres(*win.x, w, binning)
        ys = _cell_centres(*win.y, h, binning)[::-1]  # row 0 = north
        return (self.rows(ys) == win.row)[:, None] & (self.columns(xs) == win.col)[None, :]


def _cell_centres(lo: int, hi: int, n: int, binning: str) -> np.ndarray:
    """Raw coordinates of the centres of ``n`` cells binned over [lo, hi] (south/west first):
    ``seed`` binning has n - 1 equal cells and the last holds the maximum alone."""
    mult = n - 1 if binning == "seed" else n
    if mult < 1:
        return np.full(n, (lo + hi) / 2)
    return np.minimum(lo + (np.arange(n) + 0.5) * (hi - lo) / mult, hi)


def plan_windows(
    x_limits: tuple[int, int],
    y_limits: tuple[int, int],
    side: tuple[int, int],
    trigger: float = WINDOW_TRIGGER,
    overlap: float = WINDOW_OVERLAP,
) -> WindowPlan | None:
    """Windows of ``side`` = (X side, Y side) raw units over the raw limits, neighbours
    overlapping by at least ``overlap`` (a fraction of the side, 0 <= overlap < 1), or None when
    the file is no more than ``trigger`` tile sides on either axis (it is predicted as one
    tile)."""
    if min(side) < 1:
        raise ValueError(f"window side must be >= 1 raw unit, got {side}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"window overlap must be a fraction in [0, 1), got {overlap}")
    (xlo, xhi), (ylo, yhi) = x_limits, y_limits
    if max((xhi - xlo) / side[0], (yhi - ylo) / side[1]) <= trigger:
        return None
    xs, ys = _starts(xlo, xhi, side[0], overlap), _starts(ylo, yhi, side[1], overlap)
    return WindowPlan(xs, ys, side, (xlo, xhi), (ylo, yhi))


def plan_for(
    las, limits: tuple[tuple[int, int], tuple[int, int]], side: float | None, overlap: float
) -> WindowPlan | None:
    """The windows a file with raw XY ``limits`` (:func:`~uxbseg.data.voxelize.raw_xy_limits`)
    is cut into for a window ``side`` (CRS units) and least ``overlap``, or None (one tile)."""
    if side is None:
        return None
    sx, sy = (max(1, round(side / float(s))) for s in las.header.scales[:2])
    return plan_windows(*limits, (sx, sy), overlap=overlap)


def crs_bounds(las, limits: tuple[tuple[int, int], tuple[int, int]]):
    """(xmin, ymin, xmax, ymax) in CRS units of raw XY ``limits`` ((X min, X max), (Y min,
    Y max)) of ``las``."""
    (x0, x1), (y0, y1) = limits
    (sx, sy), (ox, oy) = las.header.scales[:2], las.header.offsets[:2]
    return x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy
