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

__all__ = ["GridSpec", "VoxelizedTile", "bin_points", "tile_labels", "voxel_labels", "voxelize"]


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


def _bin_axis(
    v: np.ndarray,
    n: int,
    binning: str,
    limits: tuple[int, int] | None = None,
    want_frac: bool = False,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Bin index (int32 or int64) of one axis, the position inside the bin if asked, the span.

    Exact integer arithmetic on the raw coordinates (scale and offset cancel in min-max
    binning), in int32 when the products fit (any tile under ~80 km at 1 cm scale), after one
    gather into a contiguous array (LAS fields are strided views into the point records); the
    other steps work in place. ``flip`` counts bins from the top (row 0 = north).
    """
    # one gather into a contiguous copy that the steps below change in place
    t = np.empty(len(v), dtype=np.int32 if v.dtype.itemsize <= 4 else np.int64)
    np.copyto(t, v, casting="unsafe")
    lo, hi = limits if limits is not None else (int(t.min()), int(t.max()))
    span = hi - lo
    if span <= 0 or n == 1:  # flat axis or single point: everything in bin 0, mid-height
        frac = np.full(len(v), 0.5, dtype=np.float32) if want_frac else None
        return np.zeros(len(v), dtype=np.int64), frac, 0
    mult = n - 1 if binning == "seed" else n
    small = span * mult < 2**31 - 1 and lo > -(2**31) + 1 and hi < 2**31 - 1
    dtype = np.int32 if small else np.int64
    t = t.astype(dtype, copy=False)
    if limits is not None:
        np.clip(t, lo, hi, out=t)
    t -= dtype(lo)
    t *= dtype(mult)
    frac = None
    if want_frac:
        idx, rem = np.divmod(t, dtype(span))
        del t
        frac = np.multiply(rem, np.float32(1.0 / span), dtype=np.float32)
        del rem
        if binning != "seed":
            top = idx >= n  # only the maximum itself lands on n
            idx[top] = n - 1
            frac[top] = 1.0
    else:
        idx = t
        idx //= dtype(span)
        if binning != "seed":
            np.minimum(idx, n - 1, out=idx)
    if flip:
        np.subtract(n - 1, idx, out=idx)
    return idx, frac, span


_Z_SAMPLE = 1 << 16
_THREAD_MIN_POINTS = 1 << 20  # below this, thread start-up costs more than it saves


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
    returns None for the heights (the point -> voxel mapping alone). From 1 M points the three
    axes are binned in parallel threads (numpy releases the GIL in these loops).
    """
    flat, zfrac, _cell = _bin_points(points, spec, z_limits, with_height)
    return flat, zfrac


def _bin_points(
    points: PointArrays,
    spec: GridSpec,
    z_limits: tuple[int, int] | None,
    with_height: bool,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """:func:`bin_points` plus the voxel side in XY (CRS units), from the spans it measured."""
    d, h, w = spec.shape
    if z_limits is None:
        z_limits = _z_limits(points.Z, spec)
    jobs = (
        (points.Z, d, spec.binning, z_limits, with_height),
        (points.Y, h, spec.binning, None, False, True),  # row 0 = north
        (points.X, w, spec.binning),
    )
    if len(points) < _THREAD_MIN_POINTS:
        (flat, zfrac, _), (y, _, y_span), (x, _, x_span) = (_bin_axis(*job) for job in jobs)
    else:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(_bin_axis, *job) for job in jobs]
            (flat, zfrac, _), (y, _, y_span), (x, _, x_span) = (f.result() for f in futures)
    if spec.num_voxels < 2**31 and flat.dtype == y.dtype == x.dtype == np.int32:
        flat = flat * np.int32(h)  # in int32 (half the bytes), widened once at the end
    else:
        flat = flat.astype(np.int64) * h
    flat += y
    flat *= w
    flat += x
    cell = max(x_span * points.scales[0] / w, y_span * points.scales[1] / h)
    return flat.astype(np.int64, copy=False), zfrac, cell


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
    class_counts: np.ndarray, counts: np.ndarray, empty_label: Literal["ignore", "ground"]
) -> np.ndarray:
    """Majority vote per voxel from :func:`_class_counts` (``counts``: its column sums).

    Only occupied voxels are visited. Ties go to the tile's rarer class.
    """
    k = NUM_CLASSES
    occupied = np.flatnonzero(counts)
    c = class_counts[:k, occupied]
    # rank k-1 for the rarest class of the tile, 0 for the most common; stable on equal counts
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-c.sum(axis=1), kind="stable")] = np.arange(k)
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
}
"""Half-size (CRS units, metres for most surveys) of the neighbourhood each relief compares with:
mounds stand out at 12.5 m, whole platforms (up to 40 m across) at 30 m. ``relief*`` is set in
occupied voxels only; ``surface_relief*`` is the column's ground relief in every voxel of the
column (a dense 2D map in each depth slice, whatever the terrain's slope)."""
SURFACE_FEATURES = (*RELIEF_RADIUS, "above_surface")
RELIEF_SCALE = 2.0
"""Relief (CRS units) mapped to 1.0; values are clipped to [-1, 1]."""


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
    out = np.clip(rel / RELIEF_SCALE, -1.0, 1.0).astype(np.float32)
    if name in ("relief", "relief_wide"):
        out[~geo.occupied] = 0.0
    return out


def voxelize(points: PointArrays, spec: GridSpec, with_labels: bool = True) -> VoxelizedTile:
    """Turn one tile's points into features (C, D, H, W), labels (D, H, W) and point indices.

    The classification field is read only for ``labels``; features never see it.
    """
    if len(points) == 0:
        raise ValueError("cannot voxelise an empty point cloud")
    z_limits = _z_limits(points.Z, spec)
    flat, zfrac, cell = _bin_points(points, spec, z_limits, with_height=True)
    v = spec.num_voxels
    need_height = any(f in ("height", *SURFACE_FEATURES) for f in spec.features)
    if not with_labels or points.classification is None:
        counts = np.bincount(flat, minlength=v)
        z_sums = np.bincount(flat, weights=zfrac, minlength=v) if need_height else None
        return VoxelizedTile(
            features=_features(points, flat, counts, z_sums, spec, z_limits, cell),
            labels=None,
            point_voxel=flat,
        )
    # one pass gives the class counts and (their sum) the point counts; numpy releases the GIL,
    # so the per-voxel height sums and then the features run beside it and the vote
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_class_counts, flat, points.classification, v, _ROW_OF_CODE)
        z_sums = np.bincount(flat, weights=zfrac, minlength=v) if need_height else None
        class_counts = future.result()
        counts = class_counts.sum(axis=0)
        future = pool.submit(_vote, class_counts, counts, spec.empty_label)
        features = _features(points, flat, counts, z_sums, spec, z_limits, cell)
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
) -> np.ndarray:
    """(C, D, H, W) float32 channels; per-voxel work only where points fall.

    ``cell``: voxel side in XY (CRS units), for the relief neighbourhoods."""
    out = np.zeros((len(spec.features), spec.num_voxels), dtype=np.float32)
    occ = np.flatnonzero(counts)
    n_occ = counts[occ].astype(np.float64)
    mean_frac = geo = None
    for i, name in enumerate(spec.features):
        if name == "occupancy":
            out[i, occ] = 1.0
        elif name == "log_density":
            out[i, occ] = np.log1p(n_occ / n_occ.mean())
        elif name == "height" or name in SURFACE_FEATURES:
            if mean_frac is None:
                mean_frac = np.zeros(spec.num_voxels, dtype=np.float32)
                mean_frac[occ] = z_sums[occ] / n_occ
            if name == "height":
                out[i] = mean_frac
                continue
            if geo is None:
                geo = _surface(counts, mean_frac, spec, z_limits, points.scales[2], cell)
            out[i] = _surface_feature(name, geo).ravel()
        elif name == "intensity":
            inten = points.intensity if points.intensity is not None else np.zeros(len(flat))
            ref = max(float(np.percentile(inten, 99)), 1.0)
            sums = np.bincount(flat, weights=inten, minlength=spec.num_voxels)
            out[i, occ] = np.minimum(sums[occ] / n_occ / ref, 1.0)
        elif name == "return_ratio":
            rn, nr = points.return_number, points.number_of_returns
            if rn is None or nr is None:
                out[i, occ] = 1.0
                continue
            ratio = rn.astype(np.float32) / np.maximum(nr, 1).astype(np.float32)
            out[i, occ] = np.bincount(flat, weights=ratio, minlength=spec.num_voxels)[occ] / n_occ
        else:  # pragma: no cover - GridSpec validates names
            raise ConfigError(f"unknown voxel feature {name!r}")
    return out.reshape(len(spec.features), *spec.shape)
