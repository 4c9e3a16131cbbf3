"""``uxbseg tile``: cut labelled pairs larger than a tile into tiles of that size.

The grid spans each tile, so a labelled 1 km pair among 100 m ones would be trained on at a
tenth of their scale. ``predict`` and ``evaluate`` cut such files into windows; for training
this cuts the pair itself - point cloud, TPI image and mask - into a UXB dataset of tiles of
``side``: the same window plan as ``predict`` (:mod:`uxbseg.windows`, without overlap), each
point in exactly one tile (the window whose centre is nearest), the image and mask cut to each
tile's points' bounding box at their own resolution. Pairs no larger than
:data:`~uxbseg.windows.WINDOW_TRIGGER` tiles are copied unchanged.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import laspy
import numpy as np
from PIL import Image

from .data.pairs import LAS_PATTERNS, Pair, find_pairs, find_splits
from .data.voxelize import raw_xy_limits
from .errors import BadDataError
from .io.las import PointArrays, read_las, xy_box
from .io.raster import open_image
from .run_dirs import require_folder
from .runtime import progress_options
from .windows import crs_bounds, plan_for

__all__ = ["HELD_SUFFIX", "HoldOut", "TiledPair", "hold_out", "tile_dataset"]

log = logging.getLogger(__name__)


@dataclass
class TiledPair:
    """What became of one pair: the pair folders written for it (one when copied)."""

    split: str
    pair_id: str
    extent: tuple[float, float]
    folders: list[Path]  # where its tiles are now
    cut: bool
    held: list[Path] = field(default_factory=list)  # those of them moved to test/ (hold_out)


@dataclass(frozen=True)
class HoldOut:
    """Training tiles set aside as a test split by blocks of ground (:func:`hold_out`)."""

    share: float  # of the training tiles asked for
    block: float  # side of a block (CRS units)
    tiles: int  # moved to test/
    of: int  # training tiles in all
    blocks: int  # blocks held out
    among: int  # blocks the training tiles lie in


def _crop(im: Image.Image, bounds, box, resample) -> Image.Image:
    """The part of an image over ``bounds`` (north-up) covering ``box`` (CRS units), at the
    image's own resolution."""
    w, h = im.size
    bx0, by0, bx1, by1 = bounds
    x0, y0, x1, y1 = box
    fx0, fx1 = ((x - bx0) / (bx1 - bx0) * w for x in (x0, x1))
    fy0, fy1 = ((by1 - y) / (by1 - by0) * h for y in (y1, y0))  # row 0 = north
    size = (max(1, round(fx1 - fx0)), max(1, round(fy1 - fy0)))
    return im.resize(size, resample, box=(fx0, fy0, fx1, fy1))


def _cut_pair(pair: Pair, las: laspy.LasData, side: float, out: Path) -> list[Path] | None:
    """Write the tiles of one pair into ``out/<pair_id>_r<row>_c<col>/``; None when the pair
    is no larger than :data:`~uxbseg.windows.WINDOW_TRIGGER` tiles."""
    points = PointArrays.from_las(las)
    limits = raw_xy_limits(points)
    plan = plan_for(las, limits, side, overlap=0.0)
    if plan is None:
        return None
    bounds = crs_bounds(las, limits)
    image = open_image(pair.image, "RGB")  # decoded once for all the tiles
    mask = None if pair.mask is None else open_image(pair.mask, "L")
    X, Y = np.asarray(points.X), np.asarray(points.Y)
    rows, cols = plan.shape
    own = plan.rows(Y) * cols + plan.columns(X)
    order = np.argsort(own, kind="stable")  # each tile's points in their file order
    starts = np.searchsorted(own[order], np.arange(rows * cols + 1))
    folders = []
    for k in range(rows * cols):
        idx = order[starts[k] : starts[k + 1]]
        if len(idx) == 0:
            continue
        row, col = divmod(k, cols)
        folder = out / f"{pair.pair_id}_r{row:02d}_c{col:02d}"
        folder.mkdir(parents=True)
        sub = laspy.LasData(copy.deepcopy(las.header))
        sub.points = las.points[idx]
        # laspy sets the header's bounds and counts; a tile of a COPC file is a plain LAZ
        sub.write(folder / pair.las.name.replace(".copc.laz", ".laz"))
        xs, ys = X[idx], Y[idx]
        box = crs_bounds(las, ((xs.min(), xs.max()), (ys.min(), ys.max())))
        _crop(image, bounds, box, Image.Resampling.BILINEAR).save(folder / pair.image.name)
        if mask is not None:
            _crop(mask, bounds, box, Image.Resampling.NEAREST).save(folder / pair.mask.name)
        folders.append(folder)
    return folders


def tile_dataset(
    root: str | Path,
    out: str | Path,
    side: float,
    splits: list[str] | None = None,
    image_glob: str = "tpi_100m*.png",
    mask_glob: str = "uxb_msk_pl_st*.png",
    progress: bool = True,
) -> list[TiledPair]:
    """Cut the pairs of ``root`` larger than tiles of ``side`` (CRS units) into such tiles
    under ``out`` (same splits, UXB layout) and copy the others. Before anything is written,
    every pair must have its files and every output folder must be new; a file that turns out
    unreadable stops the run with the pairs before it written."""
    from tqdm.auto import tqdm

    root, out = Path(root), require_folder(out)
    if not side > 0:
        raise BadDataError(f"--side {side}: give the tiles' side in CRS units, > 0")
    if out.resolve() == root.resolve():
        raise BadDataError(f"{out}: give another folder than the dataset itself")
    splits = splits or find_splits(root)
    pairs = [(s, p) for s in splits for p in find_pairs(root, s, image_glob, mask_glob)]
    if not pairs:
        raise BadDataError(f"{root}: no pair_* folders in {', '.join(splits) or 'any split'}")
    bad = [(s, p) for s, p in pairs if p.problems or p.las is None or p.image is None]
    if bad:
        lines = "\n".join(f"  {s}/{p.pair_id}: {q}" for s, p in bad for q in p.problems)
        raise BadDataError(
            f"{len(bad)} pair(s) cannot be tiled:\n{lines}\nFix them (`uxbseg inspect {root}`)."
        )
    taken = [out / s / p.pair_id for s, p in pairs if (out / s).is_dir()]
    taken = [t for t in taken if any(t.parent.glob(f"{t.name}*"))]
    if taken:
        raise BadDataError(
            f"{taken[0]} (or a tile of it) exists already; write the tiles to a new folder"
        )
    done = []
    for split, pair in tqdm(
        pairs, desc="tile", unit="pair", disable=not progress, **progress_options()
    ):
        las = read_las(pair.las)
        sx, sy = las.header.scales[:2]  # the points' extent (a header's box may be stale)
        X, Y = np.asarray(las.X), np.asarray(las.Y)
        extent = (
            (float(X.max() - X.min()) * sx, float(Y.max() - Y.min()) * sy) if len(X) else (0, 0)
        )
        folders = _cut_pair(pair, las, side, out / split)
        if folders is None:
            folder = out / split / pair.pair_id
            folder.mkdir(parents=True)
            for f in (pair.las, pair.image, pair.mask):
                if f is not None:
                    shutil.copy2(f, folder / f.name)
            done.append(TiledPair(split, pair.pair_id, extent, [folder], False))
        else:
            done.append(TiledPair(split, pair.pair_id, extent, folders, True))
        log.debug("%s/%s: %d folder(s)", split, pair.pair_id, len(done[-1].folders))
    return done


def hold_out_command(root: str | Path, side: float | None) -> str:
    """The ``uxbseg tile`` command that makes a test split of ``root``'s training tiles of
    ``side`` (S where it is not known): what ``train`` and ``inspect`` tell a dataset without
    one."""
    s = "S"
    if side is not None and side > 0:  # to four significant digits: a tile's points stop
        s = f"{round(side, 3 - math.floor(math.log10(side))):g}"  # short of its edge (1000)
    return f"uxbseg tile {root} NEW_ROOT --side {s} --hold-out 0.2"


HELD_SUFFIX = "_from_train"
"""Added to the folder name of a training tile moved to test/ (a test pair may share its id)."""


def hold_out(
    out: str | Path, done: list[TiledPair], share: float, block: float, seed: int = 0
) -> HoldOut:
    """Move about ``share`` of the training tiles of ``out`` (those :func:`tile_dataset` wrote,
    ``done``) to ``out/test/``, whole blocks of ground at a time: the tiles whose centre lies
    in a block of ``block`` x ``block`` CRS units (on a grid anchored at the origin) go
    together, the blocks drawn at random (``seed``) until the share is reached. A test tile
    then lies beside training tiles only along a block's edge, not among them: its score
    measures new ground, not the neighbours of the ground trained on. ``done`` is updated."""
    out = Path(out)
    if not 0 < share < 1:
        raise BadDataError(f"--hold-out {share}: give the share of training tiles, 0 < s < 1")
    if not block > 0:
        raise BadDataError(f"--block {block}: give the blocks' side in CRS units, > 0")
    tiles = [(t, f) for t in done if t.split == "train" for f in t.folders]
    if not tiles:
        raise BadDataError(f"{out}: no training tiles to hold out (--hold-out needs train/)")
    keys = []
    for _, folder in tiles:
        las = next(p for pat in LAS_PATTERNS for p in sorted(folder.glob(pat)))
        with laspy.open(las) as reader:  # a copied pair's header may state no box
            mins, maxs = xy_box(reader, las)
        cx, cy = (mins[0] + maxs[0]) / 2, (mins[1] + maxs[1]) / 2
        keys.append((math.floor(cx / block), math.floor(cy / block)))
    count = Counter(keys)
    blocks = sorted(count)
    held: set[tuple[int, int]] = set()
    moved = 0
    for i in np.random.default_rng(seed).permutation(len(blocks)):
        if moved >= share * len(tiles):
            break
        held.add(blocks[i])
        moved += count[blocks[i]]
    if len(held) == len(blocks):
        raise BadDataError(
            f"the {len(tiles)} training tiles lie in {len(blocks)} block(s) of {block:g}: "
            f"holding out {share:.0%} of them leaves none to train on, so none was moved "
            f"({out} holds the tiles as cut); give a smaller --block or --hold-out"
        )
    (out / "test").mkdir(exist_ok=True)
    for (t, folder), key in zip(tiles, keys, strict=True):
        if key in held:
            dest = out / "test" / f"{folder.name}{HELD_SUFFIX}"
            os.replace(folder, dest)
            t.folders[t.folders.index(folder)] = dest
            t.held.append(dest)
    log.info("held out %d of %d training tiles in %d blocks", moved, len(tiles), len(held))
    return HoldOut(share, block, moved, len(tiles), len(held), len(blocks))
