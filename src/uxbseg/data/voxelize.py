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
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bin index (int64) of one axis and, if asked, the position inside the bin.

    Exact integer arithmetic on the raw coordinates (scale and offset cancel in min-max
    binning), in int32 when the products fit (any tile under ~80 km at 1 cm scale), after one
    gather into a contiguous array (LAS fields are strided views into the point records).
    ``flip`` counts bins from the top (row 0 = north).
    """
    t = np.ascontiguousarray(v)
    lo, hi = limits if limits is not None else (int(t.min()), int(t.max()))
    span = hi - lo
    if span <= 0 or n == 1:  # flat axis or single point: everything in bin 0, mid-height
        frac = np.full(len(v), 0.5, dtype=np.float32) if want_frac else None
        return np.zeros(len(v), dtype=np.int64), frac
    mult = n - 1 if binning == "seed" else n
    small = span * mult < 2**31 - 1 and lo > -(2**31) + 1 and hi < 2**31 - 1
    dtype = np.int32 if small else np.int64
    t = t.astype(dtype)  # a copy we may change in place
    if limits is not None:
        np.clip(t, lo, hi, out=t)
    t -= dtype(lo)
    t *= dtype(mult)
    idx = t // dtype(span)
    frac = None
    if want_frac:
        t -= idx * dtype(span)
        frac = t.astype(np.float32)
        frac /= np.float32(span)
    del t
    if binning != "seed":
        top = idx >= n  # only the maximum itself lands on n
        idx[top] = n - 1
        if frac is not None:
            frac[top] = 1.0
    if flip:
        np.subtract(n - 1, idx, out=idx)
    return idx.astype(np.int64, copy=False), frac


def _z_limits(Z: np.ndarray, spec: GridSpec) -> tuple[int, int]:
    if spec.z_range == "minmax" or len(Z) < 3:
        return int(Z.min()), int(Z.max())
    # a regular subsample of at most ~1M points gives the clip range; deterministic and fast
    sample = np.asarray(Z[:: max(1, len(Z) // 1_000_000)])
    lo, hi = np.percentile(sample, spec.z_percentiles)
    return int(np.floor(lo)), int(np.ceil(hi))


def bin_points(points: PointArrays, spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Flat voxel index ``(d * H + h) * W + w`` of every point and its height inside its voxel.

    The three axes are binned in parallel threads (numpy releases the GIL in these loops).
    """
    d, h, w = spec.shape
    with ThreadPoolExecutor(max_workers=3) as pool:
        z = pool.submit(
            _bin_axis, points.Z, d, spec.binning, _z_limits(points.Z, spec), want_frac=True
        )
        y = pool.submit(_bin_axis, points.Y, h, spec.binning, flip=True)  # row 0 = north
        x = pool.submit(_bin_axis, points.X, w, spec.binning)
        flat, zfrac = z.result()
        flat *= h
        flat += y.result()[0]
        flat *= w
        flat += x.result()[0]
    return flat, zfrac


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
    k = NUM_CLASSES
    v = num_voxels
    # class-major counts: row c holds every voxel's count of class c (one pass over the points);
    # non-voting points go to one extra bin that is dropped
    key = classes.astype(np.int64) * v
    key += flat
    key[classes < 0] = k * v
    counts = np.bincount(key, minlength=k * v + 1)[: k * v].reshape(k, v)
    del key
    tile_counts = counts.sum(axis=1)
    # rank k-1 for the rarest class of the tile, 0 for the most common; stable on equal counts
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-tile_counts, kind="stable")] = np.arange(k)
    # row-wise running maximum of count * k + rank (faster than argmax over a short axis)
    best = counts[0] * k + rank[0]
    labels = np.zeros(v, dtype=np.int64)
    for c in range(1, k):
        score = counts[c] * k + rank[c]
        better = score > best
        labels[better] = c
        np.maximum(best, score, out=best)
    labels[best < k] = IGNORE  # no vote: only the rank was left
    if empty_label == "ground":
        occupied = np.bincount(flat, minlength=num_voxels) > 0
        labels[~occupied] = 0
    return labels


def _mean_per_voxel(flat: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    sums = np.bincount(flat, weights=values, minlength=len(counts))
    out = np.zeros(len(counts), dtype=np.float32)
    nz = counts > 0
    out[nz] = sums[nz] / counts[nz]
    return out


RELIEF_RADIUS = {"relief": 12.5, "relief_wide": 30.0}
"""Half-size (CRS units, metres for most surveys) of the neighbourhood each relief compares with:
mounds stand out at 12.5 m, whole platforms (up to 40 m across) at 30 m."""
RELIEF_SCALE = 2.0
"""Relief (CRS units) mapped to 1.0; values are clipped to [-1, 1]."""


def _relief(
    points: PointArrays, flat: np.ndarray, counts: np.ndarray, spec: GridSpec, radius: float
) -> np.ndarray:
    """Mean height of the voxel's points above the local terrain level, from geometry only.

    A local relief model, as used in lidar archaeology: the terrain level of each column is the
    mean height of its points averaged over a ``2 * radius`` box around it (empty columns filled
    from the nearest occupied one), so mounds and platforms stand out whatever the tile's slope.
    """
    from scipy import ndimage

    _d, h, w = spec.shape
    z = points.Z.astype(np.float64) * points.scales[2]
    col = flat % (h * w)
    ncol = np.bincount(col, minlength=h * w)
    surf = np.bincount(col, weights=z, minlength=h * w)
    occupied = ncol > 0
    surf[occupied] /= ncol[occupied]
    surf = surf.reshape(h, w)
    empty = ~occupied.reshape(h, w)
    if empty.any():
        idx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
        surf = surf[tuple(idx)]
    ext_x = float(points.X.max() - points.X.min()) * points.scales[0]
    ext_y = float(points.Y.max() - points.Y.min()) * points.scales[1]
    cell = max(ext_x / w, ext_y / h, 1e-9)
    size = min(max(1, round(2 * radius / cell) | 1), 2 * max(h, w) + 1)  # capped: zero extents
    level = ndimage.uniform_filter(surf, size=size, mode="nearest").ravel()
    rel = np.clip((z - level[col]) / RELIEF_SCALE, -1.0, 1.0)
    return _mean_per_voxel(flat, rel, counts)


def voxelize(points: PointArrays, spec: GridSpec, with_labels: bool = True) -> VoxelizedTile:
    """Turn one tile's points into features (C, D, H, W), labels (D, H, W) and point indices.

    The classification field is read only for ``labels``; features never see it.
    """
    if len(points) == 0:
        raise ValueError("cannot voxelise an empty point cloud")
    flat, zfrac = bin_points(points, spec)
    labels = None
    with ThreadPoolExecutor(max_workers=1) as pool:  # labels beside the features (no GIL)
        if with_labels and points.classification is not None:
            labels = pool.submit(tile_labels, points.classification, flat, spec)
        features = _features(points, flat, zfrac, spec)
        labels = labels.result() if labels is not None else None
    return VoxelizedTile(features=features, labels=labels, point_voxel=flat)


def tile_labels(codes: np.ndarray, flat: np.ndarray, spec: GridSpec) -> np.ndarray:
    """(D, H, W) labels of a tile from its LAS codes and the points' flat voxel indices."""
    cls = las_code_to_class(codes)
    return voxel_labels(flat, cls, spec.num_voxels, spec.empty_label).reshape(spec.shape)


def _features(
    points: PointArrays, flat: np.ndarray, zfrac: np.ndarray, spec: GridSpec
) -> np.ndarray:
    counts = np.bincount(flat, minlength=spec.num_voxels).astype(np.float32)
    channels = []
    for name in spec.features:
        if name == "occupancy":
            ch = (counts > 0).astype(np.float32)
        elif name == "log_density":
            mean_nonempty = counts[counts > 0].mean()
            ch = np.log1p(counts / mean_nonempty).astype(np.float32)
        elif name == "height":
            ch = _mean_per_voxel(flat, zfrac, counts)
        elif name in RELIEF_RADIUS:
            ch = _relief(points, flat, counts, spec, RELIEF_RADIUS[name])
        elif name == "intensity":
            inten = points.intensity if points.intensity is not None else np.zeros(len(flat))
            ref = max(float(np.percentile(inten, 99)), 1.0)
            ch = np.minimum(_mean_per_voxel(flat, inten / ref, counts), 1.0)
        elif name == "return_ratio":
            rn, nr = points.return_number, points.number_of_returns
            if rn is None or nr is None:
                ratio = np.ones(len(flat), dtype=np.float32)
            else:
                ratio = rn.astype(np.float32) / np.maximum(nr, 1).astype(np.float32)
            ch = _mean_per_voxel(flat, ratio, counts)
        else:  # pragma: no cover - GridSpec validates names
            raise ConfigError(f"unknown voxel feature {name!r}")
        channels.append(ch)
    return np.stack(channels).reshape(len(channels), *spec.shape)
