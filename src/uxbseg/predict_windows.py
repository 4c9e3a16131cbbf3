"""Predicting a file cut into windows (:mod:`uxbseg.windows`): each window's points and image
prepared in a background thread, run through the model in batches, and each point given the
class of the window it belongs to; the windows' grids written to ``pred_<id>.windows/``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .classes import CLASSES
from .config import Config
from .data.voxelize import GridSpec, voxelize
from .decision import decide
from .inference import infer_tiles, tpi_cell
from .io.las import PointArrays
from .io.raster import (
    TPI_CLIP_M,
    TPI_RADIUS_M,
    colourise_tpi,
    mosaic_window,
    normalise_rgb,
    open_image,
    window_tpi,
)
from .runtime import progress_options
from .survey import SurveyContext, WindowDone
from .windows import WindowPlan, crs_bounds

__all__ = ["WindowGrids", "WindowInput", "predict_windows"]


class WindowGrids:
    """``pred_<id>.windows/``: a uint8 grid per window (``r<row>_c<col>.npy``, row 0 = north)
    and ``windows.json`` with each window's bounds (and, for a file of a survey, the survey's
    files, whose windows share the plan's rows and columns); written under a temporary name,
    then renamed over any earlier one."""

    def __init__(
        self,
        folder: Path,
        plan: WindowPlan,
        side: float,
        overlap: float,
        survey: list[str] | None = None,
    ) -> None:
        self.folder = folder
        self.tmp = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        rows, cols = plan.shape
        self.index = {
            "side": side,
            "overlap": overlap,
            "rows": rows,
            "columns": cols,
            "windows": [],
        }
        if survey is not None:
            self.index["survey"] = survey

    def __call__(self, w: WindowInput, grid: np.ndarray, pred2d: np.ndarray | None) -> None:
        """Save the grid of window ``w`` (a :func:`predict_windows` ``on_window``)."""
        name = f"r{w.row:03d}_c{w.col:03d}.npy"
        np.save(self.tmp / name, grid)
        self.index["windows"].append(
            {
                "row": w.row,
                "col": w.col,
                "npy": name,
                "bounds": [float(b) for b in w.bounds],
                "points": int(w.mine.sum()),
            }
        )

    def close(self) -> None:
        (self.tmp / "windows.json").write_text(json.dumps(self.index, indent=1))
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
        os.replace(self.tmp, self.folder)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class WindowInput:
    """One window, ready for the model: its points, their voxels, and which of them take their
    class from it."""

    row: int
    col: int
    bounds: tuple[float, float, float, float]  # CRS units (xmin, ymin, xmax, ymax)
    points: np.ndarray  # indices of the points inside the window
    point_voxel: np.ndarray  # each one's voxel (flat index)
    mine: np.ndarray  # bool: whether it takes its class from this window
    owned: np.ndarray  # bool: the same for the points of every file of a survey
    image: np.ndarray
    features: np.ndarray

    @property
    def taken(self) -> np.ndarray:
        """Indices of the points that take their class from this window."""
        return self.points[self.mine]

    @property
    def voxel(self) -> np.ndarray:
        """Each taken point's voxel."""
        return self.point_voxel[self.mine]


def _ownership(plan: WindowPlan, context: SurveyContext) -> tuple[np.ndarray, range, range]:
    """The window each point (the file's and its neighbours') takes its class from (row *
    columns + column), and the rows and columns of the windows the file's own points take."""
    xr, yr = np.asarray(context.points.X), np.asarray(context.points.Y)
    own = plan.rows(yr) * plan.shape[1] + plan.columns(xr)
    return own, *plan.over(context.limits)


def windows_to_run(plan: WindowPlan, context: SurveyContext, own: np.ndarray) -> int:
    """How many windows some point of the file takes its class from (``own``: each point's
    window, :func:`_ownership`): those run or reused, the rest passed by. A sparse file's plan
    can hold many more windows (simple.las: 1065 points, 2790 windows of 100 feet, 886 run)."""
    mine = own[context.own.start : context.own.stop]
    return int(np.count_nonzero(np.bincount(mine, minlength=len(plan)))) if len(mine) else 0


def _window_inputs(
    image_path: Path | None,
    las,
    plan: WindowPlan,
    cfg: Config,
    context: SurveyContext,
    ownership: tuple[np.ndarray, range, range],
):
    """:class:`WindowInput` of each window that some point of the file takes its class from:
    the window's points (the file's and its neighbours', ``context``) voxelised over its
    bounds, and its image (cut from ``image_path`` and the neighbours' images, or rendered from
    its points and those within the TPI radius around it)."""
    spec = GridSpec.from_config(cfg.grid)
    points = context.points
    xr, yr = np.ascontiguousarray(points.X), np.ascontiguousarray(points.Y)
    cols = plan.shape[1]
    own, row_range, col_range = ownership  # the one window each point takes
    first, stop = context.own.start, context.own.stop
    scale, offset = las.header.scales, las.header.offsets
    render = image_path is None
    images = _WindowImages(image_path, crs_bounds(las, context.limits), context.images, cfg)
    margin = [math.ceil(TPI_RADIUS_M / s) if render else 0 for s in scale[:2]]
    for col in col_range:
        (xlo, xhi), _ = plan.window(0, col).limits
        lo, hi = xlo - margin[0], xhi + margin[0]
        column = np.flatnonzero((xr >= lo) & (xr <= hi))
        yc = yr[column]
        for row in row_range:
            done = context.done.get((row, col))
            if done is not None:  # run for a neighbour already
                yield WindowInput(row, col, done.bounds, done.index, done.index[:0],
                                  np.ones(len(done.index), bool), None, None, None)  # fmt: skip
                continue
            win = plan.window(row, col)
            (ylo, yhi) = win.y
            lo, hi = ylo - margin[1], yhi + margin[1]
            near = column[(yc >= lo) & (yc <= hi)]
            xn, yn = xr[near], yr[near]
            inside = (xn >= xlo) & (xn <= xhi) & (yn >= ylo) & (yn <= yhi)
            idx = near[inside]
            owned = own[idx] == row * cols + col
            mine = owned & (idx >= first) & (idx < stop)
            if not mine.any():  # no point of the file takes its class from here
                yield None
                continue
            vox = voxelize(points.take(idx), spec, with_labels=False, xy_limits=win.limits)
            bounds = crs_bounds(las, win.limits)
            if render:
                x = xn * scale[0] + offset[0]
                y = yn * scale[1] + offset[1]
                z = np.asarray(points.Z)[near] * scale[2] + offset[2]
                t = window_tpi(x, y, z, bounds, tpi_cell(bounds))
                image = normalise_rgb(colourise_tpi(t, TPI_CLIP_M, cfg.data.image_size))
            else:
                image = images(bounds)
            yield WindowInput(
                row, col, bounds, idx, vox.point_voxel, mine, owned, image, vox.features
            )


class _WindowImages:
    """A window's part of the file's image (decoded once), completed beyond the file's edge by
    its neighbours' images (decoded when a window first reaches them)."""

    def __init__(self, path: Path | None, bounds, others: list, cfg: Config) -> None:
        self.size = cfg.data.image_size
        self.rgb = None if path is None else np.asarray(open_image(path, "RGB"))
        self.bounds = bounds
        self.others = others
        self.decoded: dict[Path, np.ndarray] = {}

    def __call__(self, window) -> np.ndarray:
        sources = [(self.rgb, self.bounds)]
        x0, y0, x1, y1 = window
        for path, box in self.others:
            if box[0] < x1 and x0 < box[2] and box[1] < y1 and y0 < box[3]:  # they overlap
                if path not in self.decoded:
                    self.decoded[path] = np.asarray(open_image(path, "RGB"))
                sources.append((self.decoded[path], box))
        return mosaic_window(sources, window, self.size)


def _prefetched(items, depth: int):
    """Iterate ``items`` (a generator) in a background thread, at most ``depth`` ahead, so that
    cutting, voxelising and rendering the next windows (numpy, which drops the GIL) overlaps
    the model's work on the current ones; ``depth`` 0 iterates in the caller's thread."""
    if depth < 1:
        yield from items
        return
    done = object()
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                box.put((item, None))
                if stop.is_set():  # the caller has stopped reading
                    return
            box.put((done, None))
        except BaseException as exc:  # re-raised in the caller's thread
            box.put((done, exc))

    thread = threading.Thread(target=produce, name="uxbseg-windows", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = box.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put, then let it end
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.1)
        thread.join()


def predict_windows(
    model,
    cfg: Config,
    image_path: Path | None,
    las,
    points: PointArrays,
    plan: WindowPlan,
    device: torch.device,
    tta: bool,
    probabilities: bool,
    on_window: Callable[[WindowInput, np.ndarray, np.ndarray | None], None] | None,
    progress: bool,
    batch: int = 1,
    prefetch: int = 2,
    context: SurveyContext | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Classes (N,), with ``probabilities`` class probabilities (K, N), and the probability of
    its class (N, float16: :func:`~uxbseg.finds.find_objects`' scores) of every point of a
    file cut into windows, ``batch`` windows at a time through the model while the next
    ``prefetch`` batches are prepared. ``on_window(window, grid, classes2d)`` is called with
    each window's voxel classes (D, H, W) and 2D head's classes (H, W; None without one).
    ``context``: the file among its neighbours (:mod:`uxbseg.survey`), whose points the windows
    read too (a window's ``points`` then index ``context.points``). A window run for an earlier
    file of the survey is not run again: its classes for this file's points are taken, and
    ``on_window`` gets it with its points as positions in the file, no voxels and no image;
    windows run here that classify points of a neighbour still to come are kept for it."""
    from tqdm.auto import tqdm

    if context is None:
        context = SurveyContext(points, slice(0, len(points)), (plan.x_limits, plan.y_limits))
    n, start = len(points), context.own.start
    point_class = np.zeros(n, dtype=np.uint8)
    point_probs = np.zeros((len(CLASSES), n), dtype=np.float32) if probabilities else None
    point_score = np.zeros(n, dtype=np.float16)
    pending: list[WindowInput] = []
    weights, tau = cfg.loss.class_weights, cfg.model.logit_adjustment

    def run() -> None:
        images = np.stack([w.image for w in pending])
        features = np.stack([w.features for w in pending])
        # classes decided where the model ran: they (a byte a voxel) and their probability
        # (float16) come back, all the classes' probabilities only when asked for
        probs, probs2d = infer_tiles(model, images, features, device, tta, on_device=True)
        classes = decide(probs, weights, tau, dim=1)
        score_b = probs.gather(1, classes[:, None])[:, 0].half().cpu().numpy()
        grid_b = classes.to(torch.uint8).cpu().numpy()
        pred2d_b = [None] * len(pending)
        if on_window is not None and probs2d is not None:
            pred2d_b = decide(probs2d, weights, tau, dim=1).cpu().numpy()
        probs_b = [None] * len(pending) if point_probs is None else probs.cpu()
        for w, p, grid, score, pred2d in zip(pending, probs_b, grid_b, score_b, pred2d_b):
            taken, voxel = w.taken - start, w.voxel
            point_class[taken] = grid.ravel()[voxel]
            point_score[taken] = score.ravel()[voxel]
            flat = None if p is None else p.reshape(len(CLASSES), -1).numpy()
            if flat is not None:
                point_probs[:, taken] = flat[:, voxel]
            if on_window is not None:
                on_window(w, grid, pred2d)
            for nb in context.neighbours:
                sel = w.owned & (w.points >= nb.part.start) & (w.points < nb.part.stop)
                if sel.any():
                    voxel = w.point_voxel[sel]
                    nb.keep[(w.row, w.col)] = WindowDone(
                        w.bounds,
                        nb.index[w.points[sel] - nb.part.start],
                        grid.ravel()[voxel],
                        None if flat is None else flat[:, voxel],
                        grid,
                        score.ravel()[voxel],
                    )
        pending.clear()

    def reuse(w: WindowInput) -> None:
        done = context.done[(w.row, w.col)]
        point_class[done.index] = done.classes
        point_score[done.index] = done.scores
        if point_probs is not None:
            point_probs[:, done.index] = done.probs
        if on_window is not None:
            on_window(w, done.grid, None)

    ownership = _ownership(plan, context)
    bar = tqdm(total=windows_to_run(plan, context, ownership[0]), desc="windows",
               unit="window", leave=False, disable=not progress, **progress_options())  # fmt: skip
    inputs = _window_inputs(image_path, las, plan, cfg, context, ownership)
    for w in _prefetched(inputs, prefetch * batch):
        if w is not None:  # a window no point of the file takes its class from is passed by
            bar.update()
        if w is not None and w.image is None:
            reuse(w)
        elif w is not None:
            pending.append(w)
            if len(pending) == batch:
                run()
    if pending:
        run()
    bar.close()
    return point_class, point_probs, point_score
