"""The model on tiles: TPI images rendered from points, and class probabilities (with mirror
test-time augmentation) on the device, under bf16 autocast on a GPU."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .decision import decide
from .io.raster import (
    TPI_CLIP_M,
    TPI_RADIUS_M,
    colourise_tpi,
    dem_from_points,
    normalise_rgb,
    tpi,
)

log = logging.getLogger(__name__)

__all__ = [
    "MIRRORS",
    "autotune_convs",
    "default_device",
    "infer_tile",
    "infer_tiles",
    "model_for_inference",
    "render_tpi_image",
    "tpi_cell",
]


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
        cell = tpi_cell(bounds)
    dem = dem_from_points(x, y, z, bounds, cell)
    return normalise_rgb(colourise_tpi(tpi(dem, cell, TPI_RADIUS_M), TPI_CLIP_M, size))


def tpi_cell(bounds: tuple[float, float, float, float]) -> float:
    """The DEM cell of a TPI image over ``bounds``: 1 m, coarser so the raster stays under
    ~1024 cells a side (the image is resized to its ``size`` anyway)."""
    return max(1.0, (bounds[2] - bounds[0]) / 1024, (bounds[3] - bounds[1]) / 1024)


def _device_autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def default_device() -> torch.device:
    """Where predict and evaluate run the model unless told: the first CUDA GPU, else the CPU
    (with a warning when the machine has an NVIDIA GPU torch cannot use)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    _warn_unused_gpu()
    return torch.device("cpu")


@functools.cache
def _warn_unused_gpu() -> None:
    from .environment import unused_gpu

    why = unused_gpu()
    if why:
        log.warning("%s", why)


def autotune_convs(device: torch.device) -> None:
    """On a GPU, turn cuDNN's autotuning on: every window and tile has the grid's shape, so the
    kernels timed for the first batch serve all (the benchmarks' fast path and Lightning's
    training, ``benchmark=True``, run so too). The flag is torch's, process-wide, as Lightning
    leaves it; on the CPU nothing changes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def model_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in evaluation mode, with :func:`autotune_convs`; says where."""
    autotune_convs(device)
    if device.type == "cuda":
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "float32"
        where = f"{device} ({torch.cuda.get_device_name(device)}, {bf16})"
    else:
        where = f"the {device.type.upper()} (float32, {torch.get_num_threads()} threads)"
    log.info("the model runs on %s; --device chooses", where)
    return model.to(device).eval()


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
    on_device: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities (B, K, D, H, W) of a batch of tiles and those of the 2D head
    (B, K, H, W; None without one), float32 on the CPU, or with ``on_device`` left on
    ``device`` (to decide the classes there: a GPU's argmax, and one byte a voxel to copy back
    instead of 4 x K).

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
    probs = probs / n if n > 1 else probs
    probs2d = probs2d / n if probs2d is not None and n > 1 else probs2d
    if on_device:
        return probs, probs2d
    return probs.cpu(), None if probs2d is None else probs2d.cpu()


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
