"""Prediction: voxel grid from the model, classes back onto every point, classified LAS/LAZ out."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .classes import CLASSES, class_to_las_code
from .config import Config
from .data.voxelize import GridSpec, voxelize
from .decision import decide
from .errors import BadDataError, UXBError
from .io.las import PointArrays, is_compressed, read_las, units_warning, write_classified
from .io.raster import (
    TPI_CLIP_M,
    TPI_RADIUS_M,
    colourise_tpi,
    dem_from_points,
    load_image,
    load_image_window,
    normalise_rgb,
    tpi,
    window_tpi,
)
from .windows import WindowPlan, plan_windows

__all__ = [
    "PredictJob",
    "PredictResult",
    "check_jobs",
    "infer_tile",
    "infer_tiles",
    "output_paths",
    "predict_files",
    "render_tpi_image",
    "resolve_window",
]

log = logging.getLogger(__name__)


@dataclass
class PredictJob:
    """One input: its point cloud, optional image, and the id used in output names."""

    las: Path
    image: Path | None
    out_id: str


@dataclass
class PredictResult:
    """What happened to one input."""

    job: PredictJob
    npy: Path | None = None
    las: Path | None = None
    points: int = 0
    counts: dict[str, int] | None = None
    error: str | None = None
    windows: int = 0  # 0: predicted as one tile; else the windows it was cut into (npy: folder)


def output_paths(job: PredictJob, out_dir: Path) -> tuple[Path, Path]:
    """(classified LAS/LAZ, voxel grid .npy) that ``job`` writes into ``out_dir``. A file cut
    into windows writes ``pred_<id>.windows/`` (a grid per window) instead of the .npy."""
    ext = "laz" if is_compressed(job.las) else "las"
    return out_dir / f"pred_{job.out_id}.{ext}", out_dir / f"pred_{job.out_id}.npy"


def resolve_window(window: float | str | None, cfg: Config) -> float | None:
    """The window side for ``window``: a number of CRS units, "auto" (the training tiles' side,
    ``grid.tile_extent``, when the weights record it), or None / "off" (every file one tile)."""
    if window is None or window == "off":
        return None
    if window == "auto":
        if cfg.grid.tile_extent is None:
            log.info(
                "the weights do not record their training tiles' size (grid.tile_extent); every "
                "file is predicted as one tile. Pass --window SIDE to cut large files"
            )
        return cfg.grid.tile_extent
    side = float(window)
    if not side > 0:
        raise BadDataError(f"--window {window}: give a side > 0 in CRS units, auto or off")
    return side


def check_jobs(jobs: Sequence[PredictJob], out_dir: str | Path) -> None:
    """Refuse, before any work, jobs that would write the same output names (one would replace
    the other) or write over one of the inputs (``--out`` being the inputs' folder)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadDataError(f"{out_dir}: a file, not a folder; choose a folder for --out")
    inputs = {job.las.resolve(): job.las for job in jobs}
    first: dict[str, Path] = {}
    for job in jobs:
        other = first.setdefault(job.out_id, job.las)
        if other != job.las:
            raise BadDataError(
                f"{other} and {job.las} would both be written as pred_{job.out_id}.* (one output "
                "would replace the other); predict them into different --out folders, or rename "
                "one"
            )
        for out in output_paths(job, out_dir):
            hit = inputs.get(out.resolve())
            if hit is not None:
                raise BadDataError(
                    f"{hit}: the prediction of {job.las} would be written over this input file; "
                    "choose another --out folder"
                )


def render_tpi_image(las, size: int, cell: float | None = None) -> np.ndarray:
    """A TPI image (100 m radius) from the point cloud itself, normalised for SegFormer.

    Used when a LAS has no TPI image beside it: lowest point per ``cell`` as terrain (1 m, or
    coarser so the raster stays under ~1024 cells a side), holes filled,
    the same TPI and colour ramp as the synthetic data. There is no margin beyond the tile, so
    values near the edges use the part of the 100 m disc that lies inside it.
    """
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    bounds = (x.min(), y.min(), x.max(), y.max())
    if cell is None:
        cell = _tpi_cell(bounds)
    dem = dem_from_points(x, y, z, bounds, cell)
    return normalise_rgb(colourise_tpi(tpi(dem, cell, TPI_RADIUS_M), TPI_CLIP_M, size))


def _tpi_cell(bounds: tuple[float, float, float, float]) -> float:
    """1 m, coarser for large extents: the image is ``size`` pixels anyway."""
    return max(1.0, (bounds[2] - bounds[0]) / 1024, (bounds[3] - bounds[1]) / 1024)


def _device_autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


MIRRORS = ((), (-1,), (-2,), (-2, -1))
"""Test-time augmentation: the tile as it is, mirrored west-east, north-south, and both. The
last two axes are x (W) and y (H) in the image, the voxel grid and the logits alike."""


@torch.inference_mode()
def infer_tiles(
    model: torch.nn.Module,
    images: np.ndarray,
    voxels: np.ndarray,
    device: torch.device,
    tta: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities (B, K, D, H, W) of a batch of tiles and those of the 2D head
    (B, K, H, W; None without one), float32 on the CPU.

    With ``tta`` the probabilities are averaged over the four mirror images of each tile
    (:data:`MIRRORS`), each mapped back (4x the inference time).
    """
    img = torch.from_numpy(images).to(device)
    vox = torch.from_numpy(voxels).to(device)
    probs = probs2d = None
    for dims in MIRRORS if tta else MIRRORS[:1]:

        def flip(t: torch.Tensor, dims=dims) -> torch.Tensor:
            return t.flip(dims) if dims else t

        with _device_autocast(device):
            out = model(flip(img), flip(vox))
        p = flip(F.softmax(out["logits3d"].float(), dim=1))
        probs = p if probs is None else probs + p
        if out["logits2d"] is not None:
            p2 = flip(F.softmax(out["logits2d"].float(), dim=1))
            probs2d = p2 if probs2d is None else probs2d + p2
    n = len(MIRRORS) if tta else 1
    return probs.cpu() / n, None if probs2d is None else probs2d.cpu() / n


def infer_tile(
    model: torch.nn.Module,
    image: np.ndarray,
    voxels: np.ndarray,
    device: torch.device,
    tta: bool = False,
    class_weights: Sequence[float] = (),
    logit_adjustment: float = 0.0,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Class probabilities (K, D, H, W) of one tile (float32, CPU) and the 2D classes (H, W).

    :func:`infer_tiles` for one tile; the 2D classes are :func:`~uxbseg.decision.decide` with
    ``class_weights`` and ``logit_adjustment``.
    """
    probs, probs2d = infer_tiles(model, image[None], voxels[None], device, tta)
    pred2d = None
    if probs2d is not None:
        pred2d = decide(probs2d[0], class_weights, logit_adjustment).numpy()
    return probs[0], pred2d


def _save_npy(path: Path, grid: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        np.save(f, grid)
    os.replace(tmp, path)


def _windows(las, points: PointArrays, side: float | None) -> WindowPlan | None:
    """The windows a file is cut into for a window ``side`` (CRS units), or None (one tile)."""
    if side is None:
        return None
    sx, sy = (max(1, round(side / float(s))) for s in las.header.scales[:2])
    X, Y = points.X, points.Y
    return plan_windows((int(X.min()), int(X.max())), (int(Y.min()), int(Y.max())), (sx, sy))


class _WindowGrids:
    """``pred_<id>.windows/``: a uint8 grid per window (``r<row>_c<col>.npy``, row 0 = north)
    and ``windows.json`` with each window's bounds; written under a temporary name, then
    renamed over any earlier one."""

    def __init__(self, folder: Path, plan: WindowPlan, side: float) -> None:
        self.folder = folder
        self.tmp = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        rows, cols = plan.shape
        self.index = {"side": side, "rows": rows, "columns": cols, "windows": []}

    def add(self, row: int, col: int, bounds, points: int, grid: np.ndarray) -> None:
        name = f"r{row:03d}_c{col:03d}.npy"
        np.save(self.tmp / name, grid)
        self.index["windows"].append(
            {
                "row": row,
                "col": col,
                "npy": name,
                "bounds": [float(b) for b in bounds],
                "points": points,
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
class _WindowInput:
    """One window, ready for the model: which points take their class from which voxel."""

    row: int
    col: int
    bounds: tuple[float, float, float, float]
    taken: np.ndarray  # indices of the points that take their class from this window
    voxel: np.ndarray  # each taken point's voxel (flat index)
    image: np.ndarray
    features: np.ndarray


def _window_inputs(job: PredictJob, las, points: PointArrays, plan: WindowPlan, cfg: Config):
    """:class:`_WindowInput` of each window that some point takes its class from: the window's
    points voxelised over its bounds, and its image (cut from ``job.image``, or rendered from
    its points and those within the TPI radius around it)."""
    spec = GridSpec.from_config(cfg.grid)
    xr, yr = np.ascontiguousarray(points.X), np.ascontiguousarray(points.Y)
    rows, cols = plan.shape
    own = plan.rows(yr) * cols + plan.columns(xr)  # the one window each point takes
    scale, offset = las.header.scales, las.header.offsets

    def crs(raw: tuple[int, int], axis: int) -> tuple[float, float]:
        return raw[0] * scale[axis] + offset[axis], raw[1] * scale[axis] + offset[axis]

    (fx0, fx1), (fy0, fy1) = crs((xr.min(), xr.max()), 0), crs((yr.min(), yr.max()), 1)
    render = job.image is None
    margin = [math.ceil(TPI_RADIUS_M / s) if render else 0 for s in scale[:2]]
    for col in range(cols):
        (xlo, xhi), _ = plan.window(0, col).limits
        lo, hi = xlo - margin[0], xhi + margin[0]
        column = np.flatnonzero((xr >= lo) & (xr <= hi))
        yc = yr[column]
        for row in range(rows):
            win = plan.window(row, col)
            (ylo, yhi) = win.y
            lo, hi = ylo - margin[1], yhi + margin[1]
            near = column[(yc >= lo) & (yc <= hi)]
            xn, yn = xr[near], yr[near]
            inside = (xn >= xlo) & (xn <= xhi) & (yn >= ylo) & (yn <= yhi)
            idx = near[inside]
            mine = own[idx] == row * cols + col
            if not mine.any():  # no point takes its class from here (an empty corner)
                yield None
                continue
            vox = voxelize(points.take(idx), spec, with_labels=False, xy_limits=win.limits)
            (x0, x1), (y0, y1) = crs(win.x, 0), crs(win.y, 1)
            bounds = (x0, y0, x1, y1)
            if render:
                x = xn * scale[0] + offset[0]
                y = yn * scale[1] + offset[1]
                z = np.asarray(points.Z)[near] * scale[2] + offset[2]
                t = window_tpi(x, y, z, bounds, _tpi_cell(bounds))
                image = normalise_rgb(colourise_tpi(t, TPI_CLIP_M, cfg.data.image_size))
            else:
                file_bounds = (fx0, fy0, fx1, fy1)
                image = load_image_window(job.image, file_bounds, bounds, cfg.data.image_size)
            taken, voxel = idx[mine], vox.point_voxel[mine]
            yield _WindowInput(row, col, bounds, taken, voxel, image, vox.features)


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


def _predict_windows(
    model,
    cfg: Config,
    job: PredictJob,
    las,
    points: PointArrays,
    plan: WindowPlan,
    device: torch.device,
    tta: bool,
    probabilities: bool,
    grids: _WindowGrids,
    progress: bool,
    batch: int = 1,
    prefetch: int = 2,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Classes (N,) and, with ``probabilities``, class probabilities (K, N) of every point of a
    file cut into windows, ``batch`` windows at a time through the model while the next
    ``prefetch`` batches are prepared."""
    from tqdm.auto import tqdm

    n = len(points)
    point_class = np.zeros(n, dtype=np.uint8)
    point_probs = np.zeros((len(CLASSES), n), dtype=np.float32) if probabilities else None
    pending: list[_WindowInput] = []

    def run() -> None:
        images = np.stack([w.image for w in pending])
        features = np.stack([w.features for w in pending])
        probs, _ = infer_tiles(model, images, features, device, tta)
        grid_b = decide(probs, cfg.loss.class_weights, cfg.model.logit_adjustment, dim=1)
        grid_b = grid_b.numpy().astype(np.uint8)
        for w, p, grid in zip(pending, probs, grid_b):
            point_class[w.taken] = grid.ravel()[w.voxel]
            if point_probs is not None:
                point_probs[:, w.taken] = p.reshape(len(CLASSES), -1).numpy()[:, w.voxel]
            grids.add(w.row, w.col, w.bounds, len(w.taken), grid)
        pending.clear()

    bar = tqdm(total=len(plan), desc=job.las.name, unit="window", leave=False, disable=not progress)
    inputs = _window_inputs(job, las, points, plan, cfg)
    for w in _prefetched(inputs, prefetch * batch):
        bar.update()
        if w is not None:
            pending.append(w)
            if len(pending) == batch:
                run()
    if pending:
        run()
    bar.close()
    return point_class, point_probs


def predict_one(
    model,
    cfg: Config,
    job: PredictJob,
    out_dir: Path,
    device: torch.device,
    probabilities: bool = False,
    keep_classification: bool = False,
    codes: Sequence[int] | None = None,
    tta: bool = False,
    window: float | None = None,
    progress: bool = False,
    batch: int = 1,
) -> PredictResult:
    """Predict one point cloud; raises :class:`UXBError` for bad inputs (nothing written).

    A file more than :data:`~uxbseg.windows.WINDOW_TRIGGER` times ``window`` (CRS units) on a
    side is cut into windows of that side (:mod:`uxbseg.windows`), ``batch`` at a time through
    the model; None predicts it as one tile.
    """
    las = read_las(job.las)
    n = len(las.points)
    if n == 0:
        raise BadDataError(f"{job.las}: the point cloud is empty; nothing to classify")
    units = units_warning(las)
    if units:
        log.warning("%s: %s", job.las, units)
    points = PointArrays.from_las(las)
    plan = _windows(las, points, window)
    out_dir.mkdir(parents=True, exist_ok=True)
    las_out, npy_out = output_paths(job, out_dir)
    windows_out = npy_out.with_suffix(".windows")
    grids = None if plan is None else _WindowGrids(windows_out, plan, window)
    try:
        if plan is None:
            point_class, point_probs, grid = _predict_tile(
                model, cfg, job, las, points, device, tta, probabilities
            )
        else:
            point_class, point_probs = _predict_windows(
                model, cfg, job, las, points, plan, device, tta, probabilities, grids, progress,
                batch,
            )  # fmt: skip
        if codes is None:
            point_codes = class_to_las_code(point_class)
        else:  # user-chosen codes (--codes); checked against the point format when writing
            point_codes = np.asarray(codes, dtype=np.int64)[point_class]
        extra = None
        if probabilities:
            p = point_probs
            extra = {f"prob_{c.name}": p[c.index] for c in CLASSES}
            extra["entropy"] = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=0)
        compress = is_compressed(job.las)
        write_classified(las, point_codes, las_out, compress, job.las, keep_classification, extra)
        if grids is None:
            _save_npy(npy_out, grid)
        else:
            grids.close()
    finally:
        if grids is not None:
            grids.discard()  # what is left of the partial folder after a failure
    # the other kind of grid output, from an earlier run with other windows, is stale now
    stale = npy_out if plan is not None else windows_out
    if stale.is_file():
        stale.unlink()
    elif stale.is_dir() and (stale / "windows.json").is_file():
        shutil.rmtree(stale)
    counts = np.bincount(point_class, minlength=len(CLASSES))
    return PredictResult(
        job,
        npy_out if plan is None else windows_out,
        las_out,
        n,
        {c.name: int(counts[c.index]) for c in CLASSES},
        windows=0 if plan is None else len(plan),
    )


def _predict_tile(
    model, cfg: Config, job: PredictJob, las, points: PointArrays, device, tta, probabilities
):
    """Classes (N,), with ``probabilities`` class probabilities (K, N), and the voxel grid of a
    file predicted as one tile."""
    spec = GridSpec.from_config(cfg.grid)
    vox = voxelize(points, spec, with_labels=False)
    if job.image is not None:
        image = load_image(job.image, cfg.data.image_size)
    else:
        log.info(
            "%s: no image given; rendering a TPI image (%.0f m radius) from the points",
            job.las.name,
            TPI_RADIUS_M,
        )
        image = render_tpi_image(las, cfg.data.image_size)
    probs, _ = infer_tile(model, image, vox.features, device, tta)
    grid = decide(probs, cfg.loss.class_weights, cfg.model.logit_adjustment)
    grid = grid.numpy().astype(np.uint8)
    point_probs = None
    if probabilities:
        point_probs = probs.reshape(len(CLASSES), -1).numpy()[:, vox.point_voxel]
    return grid.ravel()[vox.point_voxel], point_probs, grid


def predict_files(
    model,
    cfg: Config,
    jobs: Sequence[PredictJob],
    out_dir: str | Path,
    device: torch.device | None = None,
    probabilities: bool = False,
    keep_classification: bool = False,
    codes: Sequence[int] | None = None,
    progress: bool = True,
    tta: bool = False,
    window: float | str | None = "auto",
    batch: int | None = None,
) -> list[PredictResult]:
    """Predict every job; a bad input is reported and skipped while the others go on. Jobs that
    conflict (:func:`check_jobs`) are refused before any work. ``window``: see
    :func:`resolve_window`; files larger than it are cut into windows, ``batch`` of them at a
    time through the model (default: the training batch, ``data.batch_size``, which fits)."""
    from tqdm.auto import tqdm

    check_jobs(jobs, out_dir)
    side = resolve_window(window, cfg)
    batch = cfg.data.batch_size if batch is None else batch
    if batch < 1:
        raise BadDataError(f"--batch {batch}: give a number of windows >= 1")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    results = []
    for job in tqdm(jobs, desc="predict", unit="file", disable=not progress):
        try:
            results.append(
                predict_one(
                    model,
                    cfg,
                    job,
                    Path(out_dir),
                    device,
                    probabilities,
                    keep_classification,
                    codes,
                    tta,
                    side,
                    progress,
                    batch,
                )
            )
        except UXBError as exc:
            log.error("%s", exc)
            results.append(PredictResult(job, error=str(exc)))
    return results
