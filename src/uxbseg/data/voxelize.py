"""Points to voxels: grid binning, geometry-only features, majority-vote labels, point->voxel index.

Grid axes are (D, H, W) = (z, y, x); row h = 0 is the northern edge (max Y), column w = 0 the
western edge (min X), depth d = 0 the lowest z. Binning works on the raw integer coordinates: the
header's scale and offset cancel in min-max normalisation, so no float64 (N, 3) array is made.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..classes import IGNORE, NUM_CLASSES, las_code_to_class
from ..config import VOXEL_FEATURES, GridConfig
from ..errors import ConfigError
from ..io.las import PointArrays

__all__ = [
    "GridSpec",
    "VoxelizedTile",
    "bin_points",
    "raw_xy_limits",
    "tile_labels",
    "voxel_labels",
    "voxelize",
]


@dataclass(frozen=True)
class GridSpec:
    """How a tile becomes a grid.

    Args:
        shape: (D, H, W) = (z, y, x) voxel counts.
        binning: ``seed`` is the original ``floor((v - min) / (max - min) * (n - 1))`` (only the
            maximum lands in bin n - 1); ``uniform`` uses n equal bins, aligned with image pixels.
        z_range: ``percentile`` clips z to ``z_percentiles`` so that a few noise points far above
            or below do not squeeze the terrain into a few bins; ``minmax``: the seed's exact range.
        z_percentiles: (low, high) percentiles for ``z_range='percentile'``.
        features: input channels, from geometry and radiometry only (never classification).
        empty_label: ``ignore`` (default) or the seed's ``ground`` for voxels without points.
    """

    shape: tuple[int, int, int] = (32, 256, 256)
    binning: Literal["seed", "uniform"] = "seed"
    z_range: Literal["percentile", "minmax"] = "percentile"
    z_percentiles: tuple[float, float] = (0.1, 99.9)
    features: tuple[str, ...] = ("occupancy", "log_density", "height")
    empty_label: Literal["ignore", "ground"] = "ignore"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ConfigError(f"grid shape must be three positive ints (D, H, W), got {self.shape}")
        bad = [f for f in self.features if f not in VOXEL_FEATURES]
        if bad:
            raise ConfigError(f"unknown voxel features {bad}; choose from {list(VOXEL_FEATURES)}")

    @classmethod
    def from_config(cls, cfg: GridConfig) -> GridSpec:
        """The grid of a :class:`~uxbseg.config.GridConfig`."""
        return cls(
            shape=tuple(cfg.shape),
            binning=cfg.binning,
            z_range=cfg.z_range,
            z_percentiles=tuple(cfg.z_percentiles),
            features=tuple(cfg.features),
            empty_label=cfg.empty_label,
        )

    @property
    def num_voxels(self) -> int:
        d, h, w = self.shape
        return d * h * w


@dataclass
class VoxelizedTile:
    """Result of :func:`voxelize`.

    Attributes:
        features: float32 (C, D, H, W), channels in ``spec.features`` order.
        labels: int64 (D, H, W) with IGNORE where no labelled point falls, or None.
        point_voxel: int64 (N,) flat voxel index ``(d * H + h) * W + w`` of every point.
    """

    features: np.ndarray
    labels: np.ndarray | None
    point_voxel: np.ndarray


@dataclass(frozen=True)
class _Axis:
    """How one axis is binned: ``idx = floor((clip(v) - lo) * mult / span)``, counted from the
    top when ``flip`` (row 0 = north), times ``weight`` (the axis' stride in the flat index).

    A degenerate axis (zero span or one bin) puts every point in bin 0 at mid-height.
    """

    lo: int
    hi: int
    n: int
    binning: str
    weight: int
    flip: bool = False
    clip: bool = False

    @property
    def span(self) -> int:
        return self.hi - self.lo

    @property
    def mult(self) -> int:
        return self.n - 1 if self.binning == "seed" else self.n

    @property
    def degenerate(self) -> bool:
        return self.span <= 0 or self.n == 1

    def fits_int32(self) -> bool:
        """Whether the raw values and ``(v - lo) * mult`` fit int32 arithmetic."""
        lim = 2**31 - 1
        return self.degenerate or (self.span * self.mult < lim and -lim < self.lo and self.hi < lim)

    def add_to(
        self,
        acc: np.ndarray,
        src: np.ndarray,
        t: np.ndarray,
        q: np.ndarray,
        frac: np.ndarray | None = None,
    ) -> None:
        """``acc += weight * bin(src)``; ``frac`` gets the position inside the bin, in [0, 1].

        Exact integer arithmetic in ``acc``'s type; ``t`` and ``q`` are scratch buffers.
        """
        if self.degenerate:
            if frac is not None:
                frac.fill(0.5)
            return
        dtype = t.dtype.type
        if self.clip:  # gather first: np.clip straight from a strided field is ~10x slower
            np.copyto(t, src, casting="unsafe")
            np.clip(t, dtype(self.lo), dtype(self.hi), out=t)
            t -= dtype(self.lo)
        else:
            np.subtract(src, dtype(self.lo), out=t, casting="unsafe")
        t *= dtype(self.mult)
        np.floor_divide(t, dtype(self.span), out=q)
        if self.binning != "seed":
            np.minimum(q, dtype(self.n - 1), out=q)  # only the maximum itself lands on n
        if frac is not None:  # (t - q * span) / span; the maximum of uniform binning gets 1.0
            np.subtract(t, q * dtype(self.span), out=t)
            np.multiply(t, 1.0 / self.span, out=frac)
        if self.flip:
            q *= dtype(-self.weight)
            q += dtype((self.n - 1) * self.weight)
        elif self.weight != 1:
            q *= dtype(self.weight)
        acc += q


_CHUNK = 1 << 16
"""Points per chunk: the dozen numpy passes that bin a chunk work in the CPU cache, so the point
records are read from memory about once instead of once per numpy operation."""
_THREAD_MIN_POINTS = 1 << 20  # below this, a second thread costs more than it saves
_Z_SAMPLE = 1 << 16


def _ranges(n: int) -> list[tuple[int, int]]:
    """[0, n) whole, or in two halves (one per thread) from :data:`_THREAD_MIN_POINTS` points."""
    return [(0, n)] if n < _THREAD_MIN_POINTS else [(0, n // 2), (n // 2, n)]


def _in_threads(fn, ranges: list[tuple[int, int]]) -> list:
    """``fn(start, stop)`` for each range, all but the last in threads (numpy drops the GIL)."""
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    with ThreadPoolExecutor(max_workers=len(ranges) - 1) as pool:
        futures = [pool.submit(fn, *r) for r in ranges[:-1]]
        last = fn(*ranges[-1])
        return [f.result() for f in futures] + [last]


def raw_xy_limits(points: PointArrays) -> tuple[tuple[int, int], tuple[int, int]]:
    """(min, max) of the raw X and of the raw Y, chunk by chunk: reducing a strided LAS field
    directly is several times slower than gathering a chunk and reducing that."""

    def limits(a: int, b: int) -> np.ndarray:
        buf = np.empty(min(_CHUNK, b - a), dtype=np.result_type(points.X, points.Y))
        out = []
        for s in range(a, b, _CHUNK):
            e = min(s + _CHUNK, b)
            c = buf[: e - s]
            for v in (points.X, points.Y):
                np.copyto(c, v[s:e])
                out.append((int(c.min()), int(c.max())))
        return np.array(out, dtype=np.int64).reshape(-1, 2, 2)

    lim = np.concatenate(_in_threads(limits, _ranges(len(points))))
    lo, hi = lim[:, :, 0].min(axis=0), lim[:, :, 1].max(axis=0)
    return (int(lo[0]), int(hi[0])), (int(lo[1]), int(hi[1]))


def _z_limits(Z: np.ndarray, spec: GridSpec) -> tuple[int, int]:
    if spec.z_range == "minmax" or len(Z) < 3:
        return int(Z.min()), int(Z.max())
    # a regular subsample of 64-128 k points gives the clip range (the 0.1 % tail still holds
    # 64 points or more); deterministic and fast
    sample = np.array(Z[:: max(1, len(Z) // _Z_SAMPLE)])
    # the bracketing order statistics of both percentiles in one partition (numpy's 'linear'
    # percentile lies between them; floor / ceil of the pair is what the grid needs)
    pos = [p / 100.0 * (len(sample) - 1) for p in spec.z_percentiles]
    kth = sorted({int(np.floor(pos[0])), int(np.ceil(pos[1]))})
    sample.partition(kth)  # in place: the sample is already a copy
    return int(sample[kth[0]]), int(sample[kth[-1]])


def bin_points(
    points: PointArrays,
    spec: GridSpec,
    z_limits: tuple[int, int] | None = None,
    with_height: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat voxel index ``(d * H + h) * W + w`` of every point and its height inside its voxel.

    ``z_limits`` (raw integer Z) defaults to the spec's ``z_range`` rule; ``with_height=False``
    returns None for the heights (the point -> voxel mapping alone).
    """
    flat, zfrac, _key, _cell = _bin_points(points, spec, z_limits, with_height)
    return flat, zfrac


def _bin_points(
    points: PointArrays,
    spec: GridSpec,
    z_limits: tuple[int, int] | None,
    with_height: bool,
    codes: np.ndarray | None = None,
    xy_limits: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """:func:`bin_points`, the class-major key of :func:`_class_counts` for LAS ``codes`` (None
    without codes) and the voxel side in XY (CRS units) from the spans it measured.

    One pass over the points in cache-sized chunks, in two threads from 1 M points. (Summing
    per voxel inside the chunk loop with ``np.add.at`` would spare the per-point key and height
    arrays, but ``ufunc.at`` holds the GIL: two threads then run slower than one.)
    """
    d, h, w = spec.shape
    n, v = len(points), spec.num_voxels
    if z_limits is None:
        z_limits = _z_limits(points.Z, spec)
    X, Y = points.X, points.Y
    if n < _THREAD_MIN_POINTS:  # the records fit the cache: gather X and Y once, bin the copies
        X, Y = np.ascontiguousarray(X), np.ascontiguousarray(Y)
    given = xy_limits is not None
    if given:
        (xlo, xhi), (ylo, yhi) = xy_limits
    elif n < _THREAD_MIN_POINTS:
        (xlo, xhi), (ylo, yhi) = (int(X.min()), int(X.max())), (int(Y.min()), int(Y.max()))
    else:
        (xlo, xhi), (ylo, yhi) = raw_xy_limits(points)
    axes = (
        (_Axis(*z_limits, d, spec.binning, h * w, clip=True), points.Z),
        (_Axis(ylo, yhi, h, spec.binning, w, flip=True, clip=given), Y),  # row 0 = north
        (_Axis(xlo, xhi, w, spec.binning, 1, clip=given), X),
    )
    dtype = np.int32 if v < 2**31 and all(a.fits_int32() for a, _ in axes) else np.int64
    flat = np.empty(n, dtype=np.int64)
    zfrac = np.empty(n, dtype=np.float64) if with_height else None  # what bincount weighs with
    key = np.empty(n, dtype=np.int64) if codes is not None else None
    lut = _ROW_OF_CODE.astype(np.int64) * v

    def work(a: int, b: int) -> None:
        acc, t, q = (np.empty(min(_CHUNK, b - a), dtype=dtype) for _ in range(3))
        for s in range(a, b, _CHUNK):
            e = min(s + _CHUNK, b)
            k = e - s
            acc[:k] = 0
            for i, (axis, src) in enumerate(axes):
                fr = zfrac[s:e] if i == 0 and zfrac is not None else None
                axis.add_to(acc[:k], src[s:e], t[:k], q[:k], fr)
            np.copyto(flat[s:e], acc[:k])
            if key is not None:  # class row * V + voxel, the row from a 256-entry code table
                np.take(lut, codes[s:e], out=key[s:e], mode="clip")
                key[s:e] += flat[s:e]

    _in_threads(work, _ranges(n))
    cell = max(axes[2][0].span * points.scales[0] / w, axes[1][0].span * points.scales[1] / h)
    return flat, zfrac, key, cell


def _class_counts(
    flat: np.ndarray, rows: np.ndarray, num_voxels: int, lut: np.ndarray | None = None
) -> np.ndarray:
    """(K + 1, V) class-major counts in one pass over the points; row K counts non-voting points.

    ``rows`` is each point's class index, with K for points that do not vote; with ``lut``,
    ``rows`` holds LAS codes and ``lut`` maps them to class rows (one gather from a 256-entry
    table of pre-multiplied keys).
    """
    if lut is not None:
        key = (lut.astype(np.int64) * num_voxels).take(np.asarray(rows, dtype=np.uint8))
    else:
        key = np.multiply(rows, num_voxels, dtype=np.int64)
    key += flat
    return np.bincount(key, minlength=(NUM_CLASSES + 1) * num_voxels).reshape(
        NUM_CLASSES + 1, num_voxels
    )


def _vote(
    class_counts: np.ndarray,
    counts: np.ndarray,
    empty_label: Literal["ignore", "ground"],
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """Majority vote per voxel from :func:`_class_counts` (``counts``: its column sums;
    ``occupied``: their nonzero indices, when known).

    Only occupied voxels are visited. Ties go to the tile's rarer class.
    """
    k = NUM_CLASSES
    if occupied is None:
        occupied = np.flatnonzero(counts)
    c = [class_counts[j].take(occupied) for j in range(k)]
    # rank k-1 for the rarest class of the tile, 0 for the most common; stable on equal counts
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort([-int(cj.sum()) for cj in c], kind="stable")] = np.arange(k)
    # running maximum of count * k + rank over the classes (distinct ranks: no exact ties)
    best = c[0] * k + rank[0]
    vote = np.zeros(len(occupied), dtype=np.int64)
    for j in range(1, k):
        score = c[j] * k + rank[j]
        vote[score > best] = j
        np.maximum(best, score, out=best)
    vote[best < k] = IGNORE  # no voting point: only the rank was left
    labels = np.full(counts.shape, 0 if empty_label == "ground" else IGNORE, dtype=np.int64)
    labels[occupied] = vote
    return labels


def voxel_labels(
    flat: np.ndarray,
    classes: np.ndarray,
    num_voxels: int,
    empty_label: Literal["ignore", "ground"] = "ignore",
) -> np.ndarray:
    """Majority vote of the points' classes in each voxel; ties go to the tile's rarer class.

    Points with class IGNORE do not vote. A voxel with no voting point is IGNORE, or ground (0)
    when ``empty_label='ground'`` and it holds no point at all.
    """
    rows = np.where(np.asarray(classes) < 0, NUM_CLASSES, classes)
    class_counts = _class_counts(flat, rows, num_voxels)
    return _vote(class_counts, class_counts.sum(axis=0), empty_label)


_CLASS_OF_CODE = las_code_to_class(np.arange(256))
_ROW_OF_CODE = np.where(_CLASS_OF_CODE < 0, NUM_CLASSES, _CLASS_OF_CODE).astype(np.uint8)
"""LAS code -> class row of :func:`_class_counts` (NUM_CLASSES for codes outside the map)."""


RELIEF_RADIUS = {
    "relief": 12.5,
    "relief_wide": 30.0,
    "surface_relief": 12.5,
    "surface_relief_wide": 30.0,
    "surface_relief_fine": 12.5,
    "surface_relief_wide_fine": 30.0,
}
"""Half-size (CRS units, metres for most surveys) of the neighbourhood each relief compares with:
mounds stand out at 12.5 m, whole platforms (up to 40 m across) at 30 m. ``relief*`` is set in
occupied voxels only; ``surface_relief*`` is the column's ground relief in every voxel of the
column (a dense 2D map in each depth slice, whatever the terrain's slope)."""
SURFACE_FEATURES = (*RELIEF_RADIUS, "above_surface")
RELIEF_SCALE = 2.0
"""Relief (CRS units) mapped to 1.0; values are clipped to [-1, 1]."""
FINE_RELIEF_SCALE = 0.5
"""Relief mapped to 1.0 by the ``*_fine`` features: low platforms (0.3-1.5 m) fill their range
(mounds saturate them, which the other reliefs resolve)."""


@dataclass
class _Surface:
    """Ground surface of a tile's voxel columns, from geometry only (CRS units, grid floor = 0).

    ``heights`` (D, H * W): mean height of each voxel's points; ``surface`` (H, W): the mean
    height in each column's lowest occupied voxel (the ground under any low returns; empty columns
    take the nearest occupied one); ``step``: voxel height; ``cell``: voxel side in XY.
    """

    heights: np.ndarray
    occupied: np.ndarray
    surface: np.ndarray
    step: float
    cell: float

    def level(self, radius: float) -> np.ndarray:
        """The surface averaged over a ``2 * radius`` box: the local terrain level (H * W,)."""
        from scipy import ndimage

        h, w = self.surface.shape
        size = min(max(1, round(2 * radius / max(self.cell, 1e-9)) | 1), 2 * max(h, w) + 1)
        return ndimage.uniform_filter(self.surface, size=size, mode="nearest").ravel()


def _surface(
    counts: np.ndarray,
    mean_frac: np.ndarray,
    spec: GridSpec,
    z_limits: tuple[int, int],
    z_scale: float,
    cell: float,
) -> _Surface:
    from scipy import ndimage

    d, h, w = spec.shape
    lo, hi = z_limits
    mult = d - 1 if spec.binning == "seed" else d
    step = (hi - lo) / mult * z_scale if hi > lo and d > 1 else 0.0
    heights = mean_frac.reshape(d, -1).astype(np.float64)
    heights += np.arange(d, dtype=np.float64)[:, None]
    heights *= step
    occupied = (counts > 0).reshape(d, h * w)
    surf = heights[occupied.argmax(axis=0), np.arange(h * w)].reshape(h, w)
    empty = ~occupied.any(axis=0).reshape(h, w)
    if empty.any():  # never all: voxelize rejects empty clouds
        idx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
        surf = surf[tuple(idx)]
    return _Surface(heights, occupied, surf, step, cell)


def _surface_feature(name: str, geo: _Surface) -> np.ndarray:
    """(D, H * W) float32 channel ``name`` of :data:`SURFACE_FEATURES`, in [-1, 1].

    A local relief model, as used in lidar archaeology: height above the local terrain level,
    so mounds and platforms stand out whatever the tile's slope. Works on voxels, not points:
    its cost does not grow with the point count.
    """
    d = geo.heights.shape[0]
    surf = geo.surface.reshape(1, -1)
    if name == "above_surface":  # voxel centre above the column's ground
        rel = (np.arange(d, dtype=np.float64)[:, None] + 0.5) * geo.step - surf
    elif name.startswith("surface_"):
        rel = np.broadcast_to(surf - geo.level(RELIEF_RADIUS[name]), geo.heights.shape)
    else:
        rel = geo.heights - geo.level(RELIEF_RADIUS[name])
    scale = FINE_RELIEF_SCALE if name.endswith("_fine") else RELIEF_SCALE
    out = np.clip(rel / scale, -1.0, 1.0).astype(np.float32)
    if name in ("relief", "relief_wide"):
        out[~geo.occupied] = 0.0
    return out


def voxelize(
    points: PointArrays,
    spec: GridSpec,
    with_labels: bool = True,
    xy_limits: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> VoxelizedTile:
    """Turn one tile's points into features (C, D, H, W), labels (D, H, W) and point indices.

    The classification field is read only for ``labels``; features never see it. The grid
    spans the points' own XY extent, or ``xy_limits`` = ((X min, X max), (Y min, Y max)) in raw
    integer coordinates (a prediction window; points outside are clipped to its edge).
    """
    if len(points) == 0:
        raise ValueError("cannot voxelise an empty point cloud")
    z_limits = _z_limits(points.Z, spec)
    v = spec.num_voxels
    need_height = any(f in ("height", *SURFACE_FEATURES) for f in spec.features)
    codes = points.classification if with_labels else None
    flat, zfrac, key, cell = _bin_points(points, spec, z_limits, need_height, codes, xy_limits)
    if key is None:
        counts = np.bincount(flat, minlength=v)
        z_sums = np.bincount(flat, weights=zfrac, minlength=v) if need_height else None
        return VoxelizedTile(
            features=_features(points, flat, counts, z_sums, spec, z_limits, cell),
            labels=None,
            point_voxel=flat,
        )
    # the class counts give (their sum) the point counts; numpy releases the GIL, so the
    # per-voxel height sums and then the features run beside the count and the vote
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(np.bincount, key, minlength=(NUM_CLASSES + 1) * v)
        z_sums = np.bincount(flat, weights=zfrac, minlength=v) if need_height else None
        del zfrac
        class_counts = future.result().reshape(NUM_CLASSES + 1, v)
        del key
        counts = class_counts.sum(axis=0)
        occupied = np.flatnonzero(counts)
        future = pool.submit(_vote, class_counts, counts, spec.empty_label, occupied)
        features = _features(points, flat, counts, z_sums, spec, z_limits, cell, occupied)
        labels = future.result().reshape(spec.shape)
    return VoxelizedTile(features=features, labels=labels, point_voxel=flat)


def tile_labels(codes: np.ndarray, flat: np.ndarray, spec: GridSpec) -> np.ndarray:
    """(D, H, W) labels of a tile from its LAS codes and the points' flat voxel indices."""
    class_counts = _class_counts(flat, codes, spec.num_voxels, _ROW_OF_CODE)
    labels = _vote(class_counts, class_counts.sum(axis=0), spec.empty_label)
    return labels.reshape(spec.shape)


def _features(
    points: PointArrays,
    flat: np.ndarray,
    counts: np.ndarray,
    z_sums: np.ndarray | None,
    spec: GridSpec,
    z_limits: tuple[int, int],
    cell: float,
    occ: np.ndarray | None = None,
) -> np.ndarray:
    """(C, D, H, W) float32 channels; per-voxel work only where points fall.

    ``cell``: voxel side in XY (CRS units), for the relief neighbourhoods; ``occ``: the
    occupied voxels (nonzero ``counts``), when known."""
    out = np.zeros((len(spec.features), spec.num_voxels), dtype=np.float32)
    if occ is None:
        occ = np.flatnonzero(counts)
    n_occ = counts[occ].astype(np.float64)
    mean_frac = geo = None
    for row, name in zip(out, spec.features):  # rows are views: 1D scatters, no 2D indexing
        if name == "occupancy":
            row[occ] = 1.0
        elif name == "log_density":
            row[occ] = np.log1p(n_occ / n_occ.mean())
        elif name == "height" or name in SURFACE_FEATURES:
            if mean_frac is None:
                mean_frac = row if name == "height" else np.zeros_like(row)
                mean_frac[occ] = z_sums.take(occ) / n_occ
            if name == "height":
                row[:] = mean_frac
                continue
            if geo is None:
                geo = _surface(counts, mean_frac, spec, z_limits, points.scales[2], cell)
            row[:] = _surface_feature(name, geo).ravel()
        elif name == "intensity":
            inten = points.intensity if points.intensity is not None else np.zeros(len(flat))
            ref = max(float(np.percentile(inten, 99)), 1.0)
            sums = np.bincount(flat, weights=inten, minlength=spec.num_voxels)
            row[occ] = np.minimum(sums[occ] / n_occ / ref, 1.0)
        elif name == "return_ratio":
            rn, nr = points.return_number, points.number_of_returns
            if rn is None or nr is None:
                row[occ] = 1.0
                continue
            ratio = rn.astype(np.float32) / np.maximum(nr, 1).astype(np.float32)
            row[occ] = np.bincount(flat, weights=ratio, minlength=spec.num_voxels)[occ] / n_occ
        else:  # pragma: no cover - GridSpec validates names
            raise ConfigError(f"unknown voxel feature {name!r}")
    return out.reshape(len(spec.features), *spec.shape)
