"""Evaluation: voxel, pixel and point metrics of trained weights, beside the all-ground baseline."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .classes import IGNORE, NUM_CLASSES, las_code_to_class
from .config import Config
from .data.pairs import find_pairs
from .data.voxelize import GridSpec, voxel_labels, voxelize
from .decision import decide
from .errors import BadDataError
from .inference import infer_tile
from .io.las import PointArrays, read_las
from .io.raster import load_image, load_mask
from .metrics import iou_interval, metrics_from_confusion

__all__ = ["confusion", "evaluate"]

log = logging.getLogger(__name__)
LEVELS = ("voxels", "pixels", "points")


def confusion(truth: np.ndarray, pred: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix (rows truth, columns prediction) ignoring IGNORE truths."""
    ok = truth != IGNORE
    return np.bincount(truth[ok] * k + pred[ok], minlength=k * k).reshape(k, k)


def evaluate(
    model: torch.nn.Module,
    cfg: Config,
    root: str | Path,
    split: str = "test",
    device: torch.device | None = None,
    progress: bool = True,
    tta: bool = False,
) -> dict:
    """Metrics of ``model`` on ``root/split``.

    Classes are :func:`~uxbseg.decision.decide` with ``cfg.model.logit_adjustment``.
    Voxels: labelled (non-empty) voxels. Pixels: the 2D head's classes against the mask at grid
    resolution. Points: each point takes its voxel's predicted class and is compared with its
    own LAS class through the class map (unmapped codes ignored). The all-ground baseline is
    scored on the same truth. ``iou_interval``: a 95 % bootstrap interval of each class's IoU
    over the split's tiles (:func:`~uxbseg.metrics.iou_interval`).
    """
    from tqdm.auto import tqdm

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    pairs = find_pairs(root, split, cfg.data.image_glob, cfg.data.mask_glob)
    if not pairs:
        raise BadDataError(f"{Path(root) / split}: no pair_* folders to evaluate")
    spec = GridSpec.from_config(cfg.grid)
    _, h, w = spec.shape
    bad = [p for p in pairs if p.problems]
    if bad:  # all of them, before any tile is evaluated
        lines = "\n".join(f"  {p.pair_id}: {problem}" for p in bad for problem in p.problems)
        raise BadDataError(
            f"{len(bad)} pair(s) of {Path(root) / split} cannot be evaluated:\n{lines}\n"
            f"Fix them (`uxbseg inspect {root}` lists every check)."
        )
    per_tile: dict[str, list[np.ndarray]] = {lvl: [] for lvl in LEVELS}
    base = {lvl: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for lvl in LEVELS}
    for pair in tqdm(pairs, desc="evaluate", unit="tile", disable=not progress):
        las = read_las(pair.las)
        pts = PointArrays.from_las(las)
        vox = voxelize(pts, spec, with_labels=False)
        point_truth = las_code_to_class(pts.classification)
        vox_truth = voxel_labels(vox.point_voxel, point_truth, spec.num_voxels, spec.empty_label)
        image = load_image(pair.image, cfg.data.image_size)
        weights, tau = cfg.loss.class_weights, cfg.model.logit_adjustment
        probs, pred2d = infer_tile(model, image, vox.features, device, tta, weights, tau)
        grid = decide(probs, weights, tau).numpy().ravel()
        truths = {"voxels": vox_truth, "points": point_truth}
        preds = {"voxels": grid, "points": grid[vox.point_voxel]}
        if pair.mask is not None and pred2d is not None:
            truths["pixels"] = load_mask(pair.mask, (h, w)).ravel()
            preds["pixels"] = pred2d.ravel()
        for lvl, t in truths.items():
            per_tile[lvl].append(confusion(t, preds[lvl]))
            base[lvl] += confusion(t, np.zeros_like(t))
    result = {"split": split, "tiles": len(pairs)}
    for lvl in LEVELS:
        if not per_tile[lvl]:
            continue
        tiles = np.stack(per_tile[lvl])
        cm = tiles.sum(axis=0)
        if cm.sum() == 0:
            continue
        result[lvl] = {
            "metrics": metrics_from_confusion(cm),
            "baseline": metrics_from_confusion(base[lvl]),
            "confusion": cm.tolist(),
            "iou_interval": iou_interval(tiles),
        }
    return result
