"""Tiles that cover the same ground: a test tile that is also (in part) a training tile, or a tile
given twice.

A model scored on ground it was trained on measures its memory, not what it finds in new ground,
and training's validation (on ``test/``, as in the original script) then picks its best epoch by
that memory: label leakage through the data, however clean the code. Boxes alone cannot tell:
tiles in local coordinates all share the same numbers. So each tile's terrain is kept as a coarse
raster of its lowest point a cell (:class:`GroundRaster`, cells of :data:`GROUND_CELL` on a grid
anchored at the CRS origin, the same in every tile), and two tiles cover the same ground when
their point boxes overlap and, over the overlap, their terrain agrees
(:data:`SAME_TERRAIN`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GROUND_CELL",
    "LEAK_SHARE",
    "SAME_TERRAIN",
    "TWICE_SHARE",
    "GroundRaster",
    "SharedGround",
    "same_ground_pairs",
    "shared_ground",
]

GROUND_CELL = 4.0
"""Side of a :class:`GroundRaster` cell, in CRS units: 625 cells for a 100 m tile, 62,500 (250 KB)
for a 1 km one."""

SAME_TERRAIN = 0.5
"""Largest median difference (CRS units) of two tiles' lowest point a cell, over the cells both
cover, for their terrain to agree: the same lidar gives 0, another flight of the same ground some
centimetres; two places given the same local coordinates differ by metres."""

LEAK_SHARE = 0.01
"""Share of the smaller tile from which a test tile on training ground is noted (tiles cut side
by side from one area touch and share none)."""

TWICE_SHARE = 0.5
"""Share of the smaller tile from which two tiles of one split are noted as the same ground twice
(tiles cut with a margin overlap by less)."""

_MIN_CELLS = 4  # cells both must cover for their terrain to be compared
_BLOCK = 512  # tiles compared with all the others at a time (memory: block x tiles)


@dataclass(frozen=True)
class GroundRaster:
    """The lowest point of each :data:`GROUND_CELL` cell that holds points of a tile (cells
    listed, not a dense raster: a stray point kilometres away costs a cell, not the box between),
    and the tile's point box (CRS units)."""

    rows: np.ndarray  # (n,) cell rows on the grid anchored at the origin (y / cell), int32
    cols: np.ndarray  # (n,) cell columns (x / cell), int32 (int64 beyond its range)
    zmin: np.ndarray  # (n,) float32 lowest z of each cell
    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax

    @classmethod
    def from_points(cls, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> GroundRaster:
        """The raster of points at ``x``, ``y``, ``z`` (CRS units, at least one point)."""
        cols = np.floor(np.asarray(x) / GROUND_CELL).astype(np.int64)
        rows = np.floor(np.asarray(y) / GROUND_CELL).astype(np.int64)
        c0, r0 = int(cols.min()), int(rows.min())
        width = int(cols.max()) - c0 + 1
        flat = (rows - r0) * width + (cols - c0)
        z = np.asarray(z, dtype=np.float64)
        box = width * (int(rows.max()) - r0 + 1)
        if box <= max(len(flat), 1 << 16):  # a dense raster over the box is no larger
            dense = np.full(box, np.inf)
            np.minimum.at(dense, flat, z)
            cells = np.flatnonzero(np.isfinite(dense))
            zmin = dense[cells]
        else:  # sparse points over a large box (a stray point far off): sort the cells
            cells, which = np.unique(flat, return_inverse=True)
            zmin = np.full(len(cells), np.inf)
            np.minimum.at(zmin, which.ravel(), z)
        bounds = (float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y)))
        rows, cols = cells // width + r0, cells % width + c0
        if max(abs(r0), abs(c0), int(rows.max()), int(cols.max())) < 2**31:  # 12 bytes a cell
            rows, cols = rows.astype(np.int32), cols.astype(np.int32)
        return cls(rows, cols, zmin.astype(np.float32), bounds)

    @property
    def area(self) -> float:
        """Area of the point box."""
        x0, y0, x1, y1 = self.bounds
        return (x1 - x0) * (y1 - y0)

    def within(self, rows: range, cols: range) -> tuple[np.ndarray, np.ndarray]:
        """The cells in ``rows`` x ``cols`` as sorted keys (row, then column, from the range's
        first cell) and their lowest z."""
        keep = (self.rows >= rows.start) & (self.rows < rows.stop)
        keep &= (self.cols >= cols.start) & (self.cols < cols.stop)
        r, c = self.rows[keep].astype(np.int64), self.cols[keep].astype(np.int64)
        keys = (r - rows.start) * len(cols) + (c - cols.start)
        return keys, self.zmin[keep]


@dataclass(frozen=True)
class SharedGround:
    """How two tiles overlap: ``share`` of the smaller point box lies in the other's, and the
    median difference of their terrain over the overlap (None where they share too few cells to
    compare)."""

    share: float
    dz: float | None

    @property
    def same(self) -> bool:
        """Whether the overlap is the same ground (their terrain agrees)."""
        return self.dz is not None and self.dz <= SAME_TERRAIN


def shared_ground(a: GroundRaster, b: GroundRaster) -> SharedGround | None:
    """How much ground ``a`` and ``b`` share, or None when their point boxes do not overlap
    (touching tiles, cut from one area side by side, share none)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.bounds, b.bounds
    w, h = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
    if not (w > 0 and h > 0):
        return None
    smaller = min(a.area, b.area)
    share = w * h / smaller if smaller > 0 else 1.0
    # the cells wholly inside the overlap (not those a touching edge runs through)
    x0, x1 = max(ax0, bx0), min(ax1, bx1)
    y0, y1 = max(ay0, by0), min(ay1, by1)
    cols = range(math.ceil(x0 / GROUND_CELL), math.floor(x1 / GROUND_CELL))
    rows = range(math.ceil(y0 / GROUND_CELL), math.floor(y1 / GROUND_CELL))
    if not cols or not rows:
        return SharedGround(share, None)
    (ka, za), (kb, zb) = a.within(rows, cols), b.within(rows, cols)
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    if len(ia) < _MIN_CELLS:
        return SharedGround(share, None)
    return SharedGround(share, float(np.median(np.abs(za[ia] - zb[ib]))))


def same_ground_pairs(
    a: Sequence[GroundRaster | None],
    b: Sequence[GroundRaster | None] | None = None,
    least: float = 0.0,
) -> list[tuple[int, int, SharedGround]]:
    """(i, j, how) for each tile ``a[i]`` that covers the same ground as ``b[j]`` (with
    ``b`` None: as ``a[j]``, j > i) over at least ``least`` of the smaller tile; None entries
    (tiles without points) are skipped."""
    others = a if b is None else b
    ia = [i for i, g in enumerate(a) if g is not None]
    ib = [j for j, g in enumerate(others) if g is not None]
    if not ia or not ib:
        return []
    ba = np.array([a[i].bounds for i in ia])
    bb = np.array([others[j].bounds for j in ib])
    found = []
    for start in range(0, len(ia), _BLOCK):  # a block of a's boxes against all of b's
        blk = ba[start : start + _BLOCK]
        hit = (blk[:, None, 0] < bb[None, :, 2]) & (bb[None, :, 0] < blk[:, None, 2])
        hit &= (blk[:, None, 1] < bb[None, :, 3]) & (bb[None, :, 1] < blk[:, None, 3])
        for p, q in zip(*np.nonzero(hit), strict=True):
            i, j = ia[start + p], ib[q]
            if b is None and j <= i:
                continue
            sg = shared_ground(a[i], others[j])
            if sg is not None and sg.share >= least and sg.same:
                found.append((i, j, sg))
    return found
