"""Discover UXB pair folders and check them (what ``uxbseg inspect`` reports)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..classes import CLASSES
from ..errors import BadDataError
from ..io.las import read_las, units_warning
from ..io.raster import open_image, open_image_noted
from .overlap import GroundRaster

__all__ = [
    "ASPECT_TOLERANCE",
    "DENSITY_TRIGGER",
    "STRAY_FACTOR",
    "STRAY_SHARE",
    "Pair",
    "PairReport",
    "Problem",
    "aspect_note",
    "bulk_limits",
    "check_pair",
    "density_note",
    "find_pairs",
    "find_splits",
    "stray_points",
    "tile_density",
    "tile_extent",
]

LAS_PATTERNS = ("*.las", "*.laz", "*.LAS", "*.LAZ")
KNOWN_SPLITS = ("train", "test", "predict")


@dataclass
class Problem:
    """Something wrong with one file of a pair, and what to do about it."""

    file: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason} -> {self.fix}"


@dataclass
class Pair:
    """One ``pair_*`` folder: its id and the three files (None when not found)."""

    pair_id: str
    folder: Path
    image: Path | None
    mask: Path | None
    las: Path | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        """``pair_0042`` -> ``0042`` (used in ``pred_<id>`` file names)."""
        return self.pair_id[len("pair_") :] if self.pair_id.startswith("pair_") else self.pair_id


def find_splits(root: str | Path) -> list[str]:
    """Split folders under ``root`` that hold ``pair_*`` folders (train/test/predict first)."""
    root = Path(root)
    found = [p.name for p in root.iterdir() if p.is_dir() and any(p.glob("pair_*"))]
    return sorted(
        found,
        key=lambda s: (s not in KNOWN_SPLITS, KNOWN_SPLITS.index(s) if s in KNOWN_SPLITS else 0, s),
    )


def _one(folder: Path, patterns: tuple[str, ...], what: str, required: bool, problems: list):
    matches = sorted({m for pat in patterns for m in folder.glob(pat)})
    if not matches:
        if required:
            problems.append(
                Problem(
                    str(folder),
                    f"no {what} ({' or '.join(patterns)})",
                    f"add the {what} to the pair folder or remove the folder",
                )
            )
        return None
    if len(matches) > 1:
        problems.append(
            Problem(
                str(folder),
                f"{len(matches)} candidate {what}s: " + ", ".join(m.name for m in matches),
                f"keep exactly one {what} in the folder",
            )
        )
    return matches[0]


def find_pairs(
    root: str | Path,
    split: str,
    image_glob: str = "tpi_100m*.png",
    mask_glob: str = "uxb_msk_pl_st*.png",
    require_mask: bool | None = None,
) -> list[Pair]:
    """The ``pair_*`` folders of ``root/split``, sorted by name, with their files resolved.

    The mask is required except in the ``predict`` split (``require_mask=None`` decides by name).
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise BadDataError(f"{split_dir}: split folder not found; expected ROOT/{split}/pair_*/")
    if require_mask is None:
        require_mask = split != "predict"
    pairs = []
    for folder in sorted(p for p in split_dir.glob("pair_*") if p.is_dir()):
        problems: list[Problem] = []
        image = _one(folder, (image_glob,), "image", True, problems)
        mask = _one(folder, (mask_glob,), "mask", require_mask, problems)
        las = _one(folder, LAS_PATTERNS, "point cloud", True, problems)
        pairs.append(Pair(folder.name, folder, image, mask, las, problems))
    return pairs


@dataclass
class PairReport:
    """What ``inspect`` shows for one pair."""

    pair: Pair
    points: int | None = None
    point_format: int | None = None
    extent: tuple[float, float] | None = None
    las_classes: dict[int, int] = field(default_factory=dict)
    mask_values: dict[int, int] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    mask_size: tuple[int, int] | None = None
    units: str | None = None  # what is wrong with the LAS's CRS units (not metres), if anything
    notes: list[str] = field(default_factory=list)
    ground: GroundRaster | None = field(default=None, repr=False)  # its terrain, coarsely

    @property
    def problems(self) -> list[Problem]:
        return self.pair.problems

    @property
    def density(self) -> float | None:
        """Points per square CRS unit of the XY bounding box (None without an area)."""
        if not self.points or not self.extent or not self.extent[0] * self.extent[1] > 0:
            return None
        return self.points / (self.extent[0] * self.extent[1])

    @property
    def ok(self) -> bool:
        return not self.pair.problems


_MASK_VALUES = {c.mask_value for c in CLASSES}
_LAS_CODES = {c.las_code for c in CLASSES}


def tile_extent(reports: list[PairReport]) -> float | None:
    """The side of a split's tiles: the median over its pairs of the larger XY extent (None
    when no pair has one)."""
    sides = [max(r.extent) for r in reports if r.extent]
    return float(np.median(sides)) if sides else None


def tile_density(reports: list[PairReport]) -> float | None:
    """The point density of a split's tiles: the median over its pairs of points per square
    CRS unit of their XY bounding box (None when no pair has one)."""
    found = [r.density for r in reports if r.density is not None]
    return float(np.median(found)) if found else None


DENSITY_TRIGGER = 4.0
"""A file more than this many times sparser or denser than the training tiles is noted: the
voxel features (occupancy, point density, height within the voxel) change with density."""


def density_note(density: float, typical: float, of: str) -> str | None:
    """What to tell about a file of ``density`` points per square unit against the ``typical``
    density of the training tiles (``of`` names them), or None when it is within
    :data:`DENSITY_TRIGGER` times of it."""
    if not (density > 0 and typical > 0):
        return None
    ratio = density / typical
    if 1 / DENSITY_TRIGGER <= ratio <= DENSITY_TRIGGER:
        return None
    how = f"{1 / ratio:.3g}x sparser" if ratio < 1 else f"{ratio:.3g}x denser"
    return (
        f"{density:.3g} points per square unit, {how} than {of} ({typical:.3g}): the voxel "
        "features (occupancy, point density) differ from those the model learnt, so expect "
        "poorer classes; train on tiles of this density, or thin the denser data to match "
        "(e.g. PDAL's filters.sample)"
    )


def check_pair(pair: Pair) -> PairReport:
    """Read every file of a pair and record what is there and what is wrong (never raises)."""
    rep = PairReport(pair)
    probs = pair.problems
    if pair.las is not None:
        try:
            las = read_las(pair.las)
            rep.points = len(las.points)
            rep.point_format = las.header.point_format.id
            if rep.points == 0:
                probs.append(
                    Problem(
                        str(pair.las),
                        "the point cloud is empty",
                        "re-export the tile or remove the pair",
                    )
                )
            else:
                X, Y = np.asarray(las.X), np.asarray(las.Y)
                sx, sy = las.header.scales[:2]
                rep.extent = (float(X.max() - X.min()) * sx, float(Y.max() - Y.min()) * sy)
                if rep.extent[0] <= 0 or rep.extent[1] <= 0:
                    probs.append(
                        Problem(
                            str(pair.las),
                            f"zero XY extent {rep.extent}",
                            "a tile needs points spread in X and Y; remove the pair",
                        )
                    )
                stray = stray_points(X, Y, (sx, sy), tuple(las.header.offsets[:2]))
                if stray:
                    probs.append(
                        Problem(
                            str(pair.las),
                            stray,
                            "remove those points (e.g. PDAL's filters.crop or filters.outlier) "
                            "or re-export the tile",
                        )
                    )
                rep.ground = GroundRaster.from_points(las.x, las.y, las.z)
                rep.units = units_warning(las)
                if rep.units:
                    rep.notes.append(rep.units)
                codes, n = np.unique(np.asarray(las.classification), return_counts=True)
                rep.las_classes = {int(c): int(k) for c, k in zip(codes, n)}
                other = {c: k for c, k in rep.las_classes.items() if c not in _LAS_CODES}
                if other:
                    rep.notes.append(
                        f"{sum(other.values())} points with codes {sorted(other)} outside the "
                        "class map are ignored in training"
                    )
        except BadDataError as exc:
            probs.append(
                Problem(
                    str(pair.las),
                    str(exc).split(": ", 1)[-1],
                    "re-export the LAS/LAZ file or remove the pair",
                )
            )
    if pair.image is not None:
        try:
            im, depth = open_image_noted(pair.image, "RGB")  # a wide image decoded once
            rep.image_size = im.size
            if depth:
                rep.notes.append(f"image: {depth}")
        except BadDataError as exc:
            probs.append(
                Problem(
                    str(pair.image),
                    str(exc).split(": ", 1)[-1],
                    "re-export the PNG or remove the pair",
                )
            )
    if pair.mask is not None:
        try:
            m = np.asarray(open_image(pair.mask, "L"))
            rep.mask_size = (m.shape[1], m.shape[0])
            vals, n = np.unique(m, return_counts=True)
            rep.mask_values = {int(v): int(k) for v, k in zip(vals, n)}
            bad = {v: k for v, k in rep.mask_values.items() if v not in _MASK_VALUES}
            if bad:
                probs.append(
                    Problem(
                        str(pair.mask),
                        "mask values outside the class map {0, 76, 150}: "
                        + ", ".join(f"{v} ({k} px)" for v, k in sorted(bad.items())),
                        "repaint those pixels with 0 (ground), 76 (plazuela) or 150 (structure)",
                    )
                )
        except BadDataError as exc:
            probs.append(
                Problem(
                    str(pair.mask),
                    str(exc).split(": ", 1)[-1],
                    "re-export the mask PNG or remove the pair",
                )
            )
    if rep.image_size and rep.mask_size and rep.image_size != rep.mask_size:
        probs.append(
            Problem(
                str(pair.mask),
                f"mask size {rep.mask_size} differs from image size {rep.image_size}",
                "export image and mask on the same raster",
            )
        )
    shape = aspect_note(rep.image_size, rep.extent)
    if shape:
        rep.notes.append(shape)
    return rep


STRAY_SHARE = 0.001
"""The share of points at either end of an axis that :func:`stray_points` leaves out to find
where the bulk of a tile lies."""

STRAY_FACTOR = 4.0
"""How many times wider than the bulk of a tile's points (:data:`STRAY_SHARE`) its box may be
before :func:`stray_points` calls the points beyond the bulk stray."""

_STRAY_SAMPLE = 131_072


def _bulk(v: np.ndarray) -> tuple[float, float]:
    """Where all but :data:`STRAY_SHARE` of the values at each end lie (a regular subsample)."""
    sample = np.asarray(v[:: max(1, len(v) // _STRAY_SAMPLE)], dtype=np.int64)
    lo, hi = np.quantile(sample, [STRAY_SHARE, 1 - STRAY_SHARE])
    return float(lo), float(hi)


def bulk_limits(
    X: np.ndarray, Y: np.ndarray, limits: tuple[tuple[int, int], tuple[int, int]] | None = None
) -> tuple[tuple[float, float], ...] | None:
    """Raw XY limits of the bulk of the points, ((X lo, X hi), (Y lo, Y hi)), when a few stray
    ones (:func:`stray_points`) widen their box (raw ``limits``, computed when not given) more
    than :data:`STRAY_FACTOR` times on an axis; None when they do not (or there are fewer than
    1000 points to judge)."""
    if len(X) < 1000:
        return None
    if limits is None:
        limits = ((int(X.min()), int(X.max())), (int(Y.min()), int(Y.max())))
    bulk = (_bulk(X), _bulk(Y))
    for (vmin, vmax), (lo, hi) in zip(limits, bulk, strict=True):
        if vmax - vmin > STRAY_FACTOR * max(hi - lo, 1):
            return bulk
    return None


def stray_points(
    X: np.ndarray, Y: np.ndarray, scales: tuple[float, float], offsets: tuple[float, float]
) -> str | None:
    """What is wrong when a few points lie far outside the others (a GPS glitch, a point of
    another tile): the grid and the image span the points' box, so the tile's content is
    squeezed into part of it. None when the box is no more than :data:`STRAY_FACTOR` times as
    wide, on both axes, as the span of all but :data:`STRAY_SHARE` of the points at each end
    (a tile of water with an islet is not refused; a tile of fewer than 1000 points is not
    judged)."""
    if len(X) < 1000:
        return None
    limits = ((int(X.min()), int(X.max())), (int(Y.min()), int(Y.max())))
    bulk = bulk_limits(X, Y, limits)
    if bulk is None:
        return None
    axes = zip("XY", (X, Y), limits, bulk, scales, offsets, strict=True)
    for name, v, (vmin, vmax), (lo, hi), scale, offset in axes:
        span = max(hi - lo, 1)
        if vmax - vmin <= STRAY_FACTOR * span:
            continue
        far = int(np.count_nonzero((v < lo - span) | (v > hi + span)))
        return (
            f"{far} of {len(X)} points lie far outside the others: {name} spans "
            f"{vmin * scale + offset:.2f}..{vmax * scale + offset:.2f} where all but "
            f"{2 * STRAY_SHARE:.1%} of the points lie within {lo * scale + offset:.2f}.."
            f"{hi * scale + offset:.2f}; the grid and the image span all the points' box, so "
            f"the tile's content fills {span / (vmax - vmin):.0%} of it along {name}"
        )
    return None


ASPECT_TOLERANCE = 0.05
"""How far (relative) an image's width / height may differ from its points' X / Y extent
before ``inspect`` notes it: a tile's points rarely reach its edges exactly."""


def aspect_note(
    image_size: tuple[int, int] | None, extent: tuple[float, float] | None
) -> str | None:
    """A note when an image's shape is not that of the points' XY box it is laid over (the
    image is stretched over the box, as in the original script: an image covering more ground
    than the points, e.g. a survey's edge tile, then lies misplaced on them); None when they
    agree within :data:`ASPECT_TOLERANCE` or either is unknown."""
    if not image_size or not extent or min(*image_size, *extent) <= 0:
        return None
    (w, h), (ex, ey) = image_size, extent
    if abs(math.log((w / h) / (ex / ey))) <= math.log1p(ASPECT_TOLERANCE):
        return None
    return (
        f"the image is {w} x {h} pixels ({w / h:.2f}:1) but the points span {ex:.1f} x "
        f"{ey:.1f} units ({ex / ey:.2f}:1): uxbseg lays the image over the points' box, so if "
        "it covers other ground (a survey's edge tile whose points fill only part of it), its "
        "pixels and the points disagree; crop the image to the points' box"
    )
