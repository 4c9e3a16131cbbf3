"""Prediction: voxel grid from the model, classes back onto every point, classified LAS/LAZ out."""

from __future__ import annotations

import logging
import os
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
from .io.las import PointArrays, is_compressed, read_las, write_classified
from .io.raster import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TPI_CLIP_M,
    TPI_RADIUS_M,
    colourise_tpi,
    dem_from_points,
    load_image,
    tpi,
)

__all__ = [
    "PredictJob",
    "PredictResult",
    "check_jobs",
    "infer_tile",
    "output_paths",
    "predict_files",
    "render_tpi_image",
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


def output_paths(job: PredictJob, out_dir: Path) -> tuple[Path, Path]:
    """(classified LAS/LAZ, voxel grid .npy) that ``job`` writes into ``out_dir``."""
    ext = "laz" if is_compressed(job.las) else "las"
    return out_dir / f"pred_{job.out_id}.{ext}", out_dir / f"pred_{job.out_id}.npy"


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
    if cell is None:  # 1 m, coarser for large extents: the image is `size` pixels anyway
        cell = max(1.0, (bounds[2] - bounds[0]) / 1024, (bounds[3] - bounds[1]) / 1024)
    dem = dem_from_points(x, y, z, bounds, cell)
    rgb = colourise_tpi(tpi(dem, cell, TPI_RADIUS_M), TPI_CLIP_M, size)
    arr = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _device_autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


MIRRORS = ((), (-1,), (-2,), (-2, -1))
"""Test-time augmentation: the tile as it is, mirrored west-east, north-south, and both. The
last two axes are x (W) and y (H) in the image, the voxel grid and the logits alike."""


@torch.inference_mode()
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

    With ``tta`` the probabilities are averaged over the four mirror images of the tile
    (:data:`MIRRORS`), each mapped back (4x the inference time). The 2D classes are
    :func:`~uxbseg.decision.decide` with ``class_weights`` and ``logit_adjustment``.
    """
    img = torch.from_numpy(image)[None].to(device)
    vox = torch.from_numpy(voxels)[None].to(device)
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
    probs = probs[0].cpu() / (len(MIRRORS) if tta else 1)
    pred2d = None
    if probs2d is not None:
        pred2d = decide(probs2d[0], class_weights, logit_adjustment).cpu().numpy()
    return probs, pred2d


def _save_npy(path: Path, grid: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        np.save(f, grid)
    os.replace(tmp, path)


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
) -> PredictResult:
    """Predict one point cloud; raises :class:`UXBError` for bad inputs (nothing written)."""
    las = read_las(job.las)
    n = len(las.points)
    if n == 0:
        raise BadDataError(f"{job.las}: the point cloud is empty; nothing to classify")
    spec = GridSpec.from_config(cfg.grid)
    vox = voxelize(PointArrays.from_las(las), spec, with_labels=False)
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
    point_class = grid.ravel()[vox.point_voxel]
    if codes is None:
        point_codes = class_to_las_code(point_class)
    else:  # user-chosen codes (--codes); checked against the point format when writing
        point_codes = np.asarray(codes, dtype=np.int64)[point_class]
    extra = None
    if probabilities:
        p = probs.reshape(len(CLASSES), -1).numpy()[:, vox.point_voxel]
        extra = {f"prob_{c.name}": p[c.index] for c in CLASSES}
        extra["entropy"] = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    las_out, npy_out = output_paths(job, out_dir)
    compress = is_compressed(job.las)
    write_classified(las, point_codes, las_out, compress, job.las, keep_classification, extra)
    _save_npy(npy_out, grid)
    counts = np.bincount(point_class, minlength=len(CLASSES))
    return PredictResult(job, npy_out, las_out, n, {c.name: int(counts[c.index]) for c in CLASSES})


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
) -> list[PredictResult]:
    """Predict every job; a bad input is reported and skipped while the others go on. Jobs that
    conflict (:func:`check_jobs`) are refused before any work."""
    from tqdm.auto import tqdm

    check_jobs(jobs, out_dir)
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
                )
            )
        except UXBError as exc:
            log.error("%s", exc)
            results.append(PredictResult(job, error=str(exc)))
    return results
