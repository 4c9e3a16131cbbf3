"""Evaluation: voxel, pixel and point metrics of trained weights, beside the all-ground baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .classes import CLASSES, IGNORE, NUM_CLASSES, las_code_to_class
from .config import Config
from .data.pairs import find_pairs
from .data.voxelize import GridSpec, raw_xy_limits, voxel_labels, voxelize
from .decision import decide
from .domain import DomainCheck
from .errors import BadDataError
from .finds import FIND_MIN_AREA, FOUND_COVER, object_counts, score_auc
from .inference import infer_tile
from .io.las import PointArrays, read_las
from .io.raster import load_image, load_mask, mask_window, read_mask_values
from .metrics import format_metrics_table, iou_interval, metrics_from_confusion
from .predict import resolve_window, window_batch
from .predict_windows import WindowInput, predict_windows
from .report import TileReport
from .runtime import progress_options
from .windows import WINDOW_OVERLAP, WindowPlan, crs_bounds, plan_for

__all__ = ["confusion", "evaluate", "format_result"]

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
    window: float | str | None = "auto",
    overlap: float = WINDOW_OVERLAP,
    batch: int | None = None,
    report: str | Path | None = None,
) -> dict:
    """Metrics of ``model`` on ``root/split``.

    Classes are :func:`~uxbseg.decision.decide` with ``cfg.model.logit_adjustment``.
    Voxels: labelled (non-empty) voxels. Pixels: the 2D head's classes against the mask at grid
    resolution. Points: each point takes its voxel's predicted class and is compared with its
    own LAS class through the class map (unmapped codes ignored). The all-ground baseline is
    scored on the same truth. ``iou_interval``: a 95 % bootstrap interval of each class's IoU
    over the split's tiles (:func:`~uxbseg.metrics.iou_interval`).

    A tile larger than the window side (``window``, as :func:`~uxbseg.predict.predict_files`
    takes it: by default the training tiles' side) is scored as ``predict`` classifies it: cut
    into windows overlapping by ``overlap``, ``batch`` at a time through the model. Its points
    are scored once each; its voxels and pixels in the window whose centre is nearest.

    ``report``: a folder for a picture of each tile and ``report.html``
    (:class:`~uxbseg.report.TileReport`); its path is ``result["report"]``.
    """
    from tqdm.auto import tqdm

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    pairs = find_pairs(root, split, cfg.data.image_glob, cfg.data.mask_glob)
    if not pairs:
        raise BadDataError(f"{Path(root) / split}: no pair_* folders to evaluate")
    bad = [p for p in pairs if p.problems]
    if bad:  # all of them, before any tile is evaluated
        lines = "\n".join(f"  {p.pair_id}: {problem}" for p in bad for problem in p.problems)
        raise BadDataError(
            f"{len(bad)} pair(s) of {Path(root) / split} cannot be evaluated:\n{lines}\n"
            f"Fix them (`uxbseg inspect {root}` lists every check)."
        )
    side = resolve_window(window, cfg)
    batch = window_batch(batch, overlap, cfg)
    per_tile: dict[str, list[np.ndarray]] = {lvl: [] for lvl in LEVELS}
    base = {lvl: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for lvl in LEVELS}
    cut = 0
    counted = ("true", "found", "predicted", "real")
    objects = {c.name: dict.fromkeys(counted, 0) for c in CLASSES[1:]}
    scored: dict[str, list[tuple[float, bool]]] = {}  # (score, real) of each predicted object
    domain = DomainCheck(cfg)
    pictures = TileReport(report) if report is not None else None
    bar = tqdm(pairs, desc="evaluate", unit="tile", disable=not progress, **progress_options())
    for pair in bar:
        las = read_las(pair.las)
        pts = PointArrays.from_las(las)
        point_truth = las_code_to_class(pts.classification)
        limits = raw_xy_limits(pts)
        domain(pair.las, las, len(pts), limits)
        plan = plan_for(las, limits, side, overlap)
        if plan is None:
            scores, point_score = _tile_scores(model, cfg, pair, pts, point_truth, device, tta)
        else:
            cut += 1
            scores, point_score = _window_scores(
                model, cfg, pair, las, pts, plan, point_truth, device, tta, batch
            )
        for lvl, (t, p) in scores.items():
            per_tile[lvl].append(confusion(t, p))
            base[lvl] += confusion(t, np.zeros_like(t))
        truth, pred = scores["points"]
        x, y = np.asarray(las.x), np.asarray(las.y)
        tile_objects = object_counts(x, y, truth, pred, scores=point_score, scored=scored)
        for name, counts in tile_objects.items():
            for k, v in counts.items():
                objects[name][k] += v
        if pictures is not None:
            cm = per_tile["points"][-1]
            pictures.add(pair.pair_id, pair.image, x, y, truth, pred, cm, tile_objects)
    domain.summary(len(pairs))
    result = {"split": split, "tiles": len(pairs)}
    if cut:
        result["windows"] = {"tiles": cut, "side": side, "overlap": overlap}
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
    for name, o in objects.items():  # None where there is nothing to divide by
        o["recall"] = o["found"] / o["true"] if o["true"] else None
        o["precision"] = o["real"] / o["predicted"] if o["predicted"] else None
        o["score_auc"] = score_auc(scored.get(name, []))
    result["objects"] = objects
    if pictures is not None:
        result["report"] = str(pictures.close(format_result(result)))
    return result


def format_result(result: dict) -> str:
    """The readable report of :func:`evaluate`'s result: metrics tables, confusion matrices,
    IoU intervals."""

    rows = {}
    for lvl in ("voxels", "pixels", "points"):
        if lvl in result:
            rows[lvl] = result[lvl]["metrics"]
            rows[f"{lvl} (all-ground)"] = result[lvl]["baseline"]
    lines = [f"{result['split']}: {result['tiles']} tiles", format_metrics_table(rows)]
    if "windows" in result:
        win = result["windows"]
        lines.append(
            f"{win['tiles']} tile(s) larger than a training tile were scored as predict "
            f"classifies them: in windows of {win['side']:g} (overlap {win['overlap']:g}), each "
            "point once, voxels and pixels in the window whose centre is nearest"
        )
    lines.append(
        "rows: voxels = the fused 2D+3D classes on the grid; points = those classes on every LAS "
        "point (what predict writes); pixels = the 2D image head alone (an auxiliary output, "
        "not written to LAS); all-ground = every voxel, pixel or point called ground"
    )
    for lvl in ("voxels", "points"):
        if lvl in result:
            lines.append(
                f"confusion ({lvl}; rows truth, cols prediction: ground, plazuela, "
                f"structure): {result[lvl]['confusion']}"
            )
    spans = [
        f"{lvl} "
        + ", ".join(
            f"{name} {lo:.2f}-{hi:.2f}" for name, (lo, hi) in result[lvl]["iou_interval"].items()
        )
        for lvl in ("voxels", "points")
        if lvl in result
    ]
    if spans:
        lines.append(
            f"IoU, 95 % interval over the {result['tiles']} tiles (bootstrap; how far another "
            f"split like this one could move it): " + "; ".join(spans)
        )
    if "objects" in result:
        lines.append(
            "objects (touching cells of one class, at least "
            + " / ".join(f"{v:g}" for v in FIND_MIN_AREA.values())
            + " m2 for "
            + " / ".join(FIND_MIN_AREA)
            + "; a true one is "
            f"found when {FOUND_COVER:.0%} of it is predicted its class, a predicted one is real "
            f"when {FOUND_COVER:.0%} of it truly is): "
            + "; ".join(
                f"{name} found {o['found']} of {o['true']} (recall {_ratio(o['recall'])}), "
                f"{o['predicted']} predicted, {o['real']} real (precision "
                f"{_ratio(o['precision'])}"
                + (
                    f"; their scores rank the real above the false with AUC {o['score_auc']:.2f}"
                    if o.get("score_auc") is not None
                    else ""
                )
                + ")"
                for name, o in result["objects"].items()
            )
        )
    if "report" in result:
        lines.append(f"pictures of every tile, worst first: {result['report']}")
    return "\n".join(lines)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _tile_scores(
    model, cfg: Config, pair, pts: PointArrays, point_truth, device, tta
) -> tuple[dict, np.ndarray]:
    """(truth, prediction) of each level for a tile predicted whole, and each point's
    probability of its predicted class."""
    spec = GridSpec.from_config(cfg.grid)
    vox = voxelize(pts, spec, with_labels=False)
    vox_truth = voxel_labels(vox.point_voxel, point_truth, spec.num_voxels, spec.empty_label)
    image = load_image(pair.image, cfg.data.image_size)
    weights, tau = cfg.loss.class_weights, cfg.model.logit_adjustment
    probs, pred2d = infer_tile(model, image, vox.features, device, tta, weights, tau)
    classes = decide(probs, weights, tau)
    score = probs.gather(0, classes[None]).numpy().ravel()
    grid = classes.numpy().ravel()
    scores = {"voxels": (vox_truth, grid), "points": (point_truth, grid[vox.point_voxel])}
    if pair.mask is not None and pred2d is not None:
        scores["pixels"] = (load_mask(pair.mask, spec.shape[1:]).ravel(), pred2d.ravel())
    return scores, score[vox.point_voxel]


def _window_scores(
    model, cfg: Config, pair, las, pts: PointArrays, plan: WindowPlan, point_truth, device, tta,
    batch: int,
) -> tuple[dict, np.ndarray]:  # fmt: skip
    """(truth, prediction) of each level for a tile cut into windows: every point once; each
    window's own voxels and pixels (:meth:`~uxbseg.windows.WindowPlan.owned_cells`), with the
    mask cut to the window. Windows that classify no point (empty corners) are not scored.
    And each point's probability of its predicted class."""
    spec = GridSpec.from_config(cfg.grid)
    d, h, w = spec.shape
    file_bounds = crs_bounds(las, (plan.x_limits, plan.y_limits))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"voxels": [], "pixels": []}
    values = None if pair.mask is None else read_mask_values(pair.mask)  # decoded once

    def score(win: WindowInput, grid: np.ndarray, pred2d: np.ndarray | None) -> None:
        own = plan.owned_cells(plan.window(win.row, win.col), (h, w), spec.binning)
        truth = voxel_labels(
            win.point_voxel, point_truth[win.points], spec.num_voxels, spec.empty_label
        )
        own3d = np.broadcast_to(own, (d, h, w)).ravel()
        parts["voxels"].append((truth[own3d], grid.ravel()[own3d]))
        if values is not None and pred2d is not None:
            mask = mask_window(values, file_bounds, win.bounds, (h, w))
            parts["pixels"].append((mask[own], pred2d[own]))

    point_class, _, point_score = predict_windows(
        model, cfg, pair.image, las, pts, plan, device, tta, False, score, False, batch
    )
    scores = {"points": (point_truth, point_class.astype(np.int64))}
    for lvl, pieces in parts.items():
        if pieces:
            scores[lvl] = tuple(np.concatenate(p) for p in zip(*pieces))
    return scores, point_score
