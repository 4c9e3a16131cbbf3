"""Evaluation: voxel, pixel and point metrics of trained weights, beside the all-ground baseline."""

from __future__ import annotations

import logging
import tempfile
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
from .inference import default_device, infer_tile, model_for_inference
from .io.las import PointArrays, read_las
from .io.raster import load_image, load_mask, mask_window, read_mask_values
from .metrics import format_metrics_table, iou_interval, metrics_from_confusion
from .predict import resolve_window, window_batch
from .predict_windows import WindowInput, predict_windows
from .report import TileReport
from .runtime import progress_options
from .survey import PointStore, Survey, SurveyContext, find_surveys, read_headers, survey_windows
from .windows import WINDOW_OVERLAP, WindowPlan, crs_bounds, plan_for

__all__ = ["confusion", "evaluate", "format_result"]

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
    window: float | str | None = "auto",
    overlap: float = WINDOW_OVERLAP,
    batch: int | None = None,
    report: str | Path | None = None,
    survey: bool = False,
) -> dict:
    """Metrics of ``model`` on ``root/split``.

    Classes are :func:`~uxbseg.decision.decide` with ``cfg.model.logit_adjustment``.
    Voxels: labelled (non-empty) voxels. Pixels: the 2D head's classes against the mask at grid
    resolution. Points: each point takes its voxel's predicted class and is compared with its
    own LAS class through the class map (unmapped codes ignored). The all-ground baseline is
    scored on the same truth. ``iou_interval``: a 95 % bootstrap interval of each class's IoU
    over the split's tiles (:func:`~uxbseg.metrics.iou_interval`).

    ``result["per_tile"]``: each tile's scored points, their confusion and each class's IoU
    (None where it is neither true nor predicted there), in the split's order: the tiles that
    fail, for a script.

    A tile larger than the window side (``window``, as :func:`~uxbseg.predict.predict_files`
    takes it: by default the training tiles' side) is scored as ``predict`` classifies it: cut
    into windows overlapping by ``overlap``, ``batch`` at a time through the model. Its points
    are scored once each; its voxels and pixels in the window whose centre is nearest.

    ``report``: a folder for a picture of each tile and ``report.html``
    (:class:`~uxbseg.report.TileReport`; with ``survey``, a tile of a survey pictured with the
    classes predict writes); its path is ``result["report"]``.

    ``survey``: tiles that lie side by side (:func:`~uxbseg.survey.find_surveys`, as
    ``predict`` finds them) are also predicted as ``predict`` (without ``--no-survey``)
    classifies them: in windows laid over their survey, reading each other's points.
    ``result["survey"]`` then scores every tile's points with the classes ``predict`` writes
    (those of a tile alone as above) and counts the objects over each survey as a whole, so
    that one cut by the line between two tiles is one object; the tiles of a survey go through
    the model twice.
    """
    from tqdm.auto import tqdm

    device = device or default_device()
    model = model_for_inference(model, device)
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
    batch = window_batch(batch, overlap, cfg, device)
    per_tile: dict[str, list[np.ndarray]] = {lvl: [] for lvl in LEVELS}
    base = {lvl: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for lvl in LEVELS}
    cut = 0
    objects = _no_objects()
    scored: dict[str, list[tuple[float, bool]]] = {}  # (score, real) of each predicted object
    store = PointStore(Path(tempfile.gettempdir()))  # the points tiles read of each other
    surveys = _surveys(pairs, side, store, survey)
    alone: dict[str, tuple[dict, dict]] = {}  # objects and scored of each tile not in a survey
    domain = DomainCheck(cfg)
    pictures = TileReport(report) if report is not None else None
    bar = tqdm(pairs, desc="evaluate", unit="tile", disable=not progress, **progress_options())
    for pair in bar:
        las = read_las(pair.las)
        pts = PointArrays.from_las(las)
        point_truth = las_code_to_class(pts.classification)
        limits = raw_xy_limits(pts)
        domain(pair.las, las, len(pts), limits, pair.image)
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
        tile_scored: dict[str, list[tuple[float, bool]]] = {}
        tile_objects = object_counts(x, y, truth, pred, scores=point_score, scored=tile_scored)
        _add_objects(objects, scored, tile_objects, tile_scored)
        if survey and pair.las not in surveys:
            alone[pair.pair_id] = (tile_objects, tile_scored)
        if pictures is not None and pair.las not in surveys:  # a survey's: as predict writes
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
    result["objects"] = _object_rates(objects, scored)
    result["per_tile"] = [_tile_row(p.pair_id, cm) for p, cm in zip(pairs, per_tile["points"])]
    if surveys:
        try:
            in_surveys, found, found_scored = _survey_points(
                model, cfg, pairs, surveys, side, overlap, batch, device, tta, progress, pictures
            )
        finally:
            store.close()
        for objs, objs_scored in alone.values():
            _add_objects(found, found_scored, objs, objs_scored)
        # each tile's point confusion: as a survey, or alone (as in the pass above)
        tiles = np.stack(
            [in_surveys.get(p.pair_id, cm) for p, cm in zip(pairs, per_tile["points"])]
        )
        for row in result["per_tile"]:
            if row["pair_id"] in in_surveys:
                survey_row = _tile_row(row["pair_id"], in_surveys[row["pair_id"]])
                row["survey"] = {k: survey_row[k] for k in ("confusion", "iou")}
        result["survey"] = {
            "surveys": len({id(s) for s in surveys.values()}),
            "tiles": len(in_surveys),
            "side": side,
            "overlap": overlap,
            "points": {
                "metrics": metrics_from_confusion(tiles.sum(axis=0)),
                "baseline": metrics_from_confusion(base["points"]),
                "confusion": tiles.sum(axis=0).tolist(),
                "iou_interval": iou_interval(tiles),
            },
            "objects": _object_rates(found, found_scored),
        }
    if pictures is not None:
        result["report"] = str(pictures.close(format_result(result)))
    return result


def _tile_row(pair_id: str, cm: np.ndarray) -> dict:
    """One tile's points: how many were scored, their confusion and each class's IoU (None
    where the class is neither true nor predicted there)."""
    m = metrics_from_confusion(cm)
    iou = {c.name: m[f"iou_{c.name}"] for c in CLASSES}
    return {
        "pair_id": pair_id,
        "points": int(cm.sum()),
        "confusion": cm.tolist(),
        "iou": {k: float(v) if np.isfinite(v) else None for k, v in iou.items()},
    }


def _no_objects() -> dict[str, dict[str, int]]:
    counted = ("true", "found", "predicted", "real")
    return {c.name: dict.fromkeys(counted, 0) for c in CLASSES[1:]}


def _add_objects(objects: dict, scored: dict, more: dict, more_scored: dict) -> None:
    """Add one tile's (or survey's) object counts and scored finds to the totals."""
    for name, counts in more.items():
        for k, v in counts.items():
            objects[name][k] += v
    for name, pairs in more_scored.items():
        scored.setdefault(name, []).extend(pairs)


def _object_rates(objects: dict, scored: dict) -> dict:
    """The counts with recall, precision and the scores' AUC (None where there is nothing to
    divide by)."""
    for name, o in objects.items():
        o["recall"] = o["found"] / o["true"] if o["true"] else None
        o["precision"] = o["real"] / o["predicted"] if o["predicted"] else None
        o["score_auc"] = score_auc(scored.get(name, []))
    return objects


def _surveys(pairs, side: float | None, store: PointStore, wanted: bool) -> dict[Path, Survey]:
    """The survey of each tile that lies beside others (as predict finds them), when
    ``wanted``; otherwise none, with a note when there are some."""
    if side is None:
        if wanted:
            log.warning("--survey with --window off: every tile is predicted whole, alone")
        return {}
    if len(pairs) < 2:
        return {}
    surveys = find_surveys(read_headers([(p.las, p.image) for p in pairs]), side, store)
    if surveys and not wanted:
        log.info(
            "%d of %d tiles lie side by side: predict classifies them as a survey, in windows "
            "laid over it; --survey scores them so too",
            len(surveys),
            len(pairs),
        )
        return {}
    if wanted and not surveys:
        log.info("no tiles of the split lie side by side: each is scored on its own")
    return surveys


def _survey_points(
    model, cfg: Config, pairs, surveys: dict[Path, Survey], side: float, overlap: float,
    batch: int, device, tta: bool, progress: bool, pictures: TileReport | None = None,
) -> tuple[dict[str, np.ndarray], dict, dict]:  # fmt: skip
    """The point confusion of each tile of ``surveys`` with the classes predict writes for it
    (in windows laid over its survey, reading its neighbours' points), and the objects of each
    survey counted over all of its points (with the scored predicted ones). ``pictures``: each
    tile pictured with those classes."""
    from tqdm.auto import tqdm

    by_las = {p.las: p for p in pairs}
    tiles: dict[str, np.ndarray] = {}
    objects, scored = _no_objects(), {}
    bar = tqdm(total=len(surveys), desc="evaluate as surveys", unit="tile",
               disable=not progress, **progress_options())  # fmt: skip
    for s in {id(s): s for s in surveys.values()}.values():
        parts = []  # x, y, truth, class, score of each tile: 20 bytes a point
        for f in s.files:
            pair = by_las[f.path]
            try:
                las = read_las(pair.las)
                pts = PointArrays.from_las(las)
                truth = las_code_to_class(pts.classification)
                limits = raw_xy_limits(pts)
                own = plan_for(las, limits, side, overlap)
                plan, context = survey_windows(
                    s, pair.las, pair.image, las, pts, limits, own, side, overlap
                )
                if plan is None:
                    scores, point_score = _tile_scores(model, cfg, pair, pts, truth, device, tta)
                else:
                    scores, point_score = _window_scores(
                        model, cfg, pair, las, pts, plan, truth, device, tta, batch, context
                    )
            finally:
                s.finish(f.path)
            t, p = scores["points"]
            cm = tiles[pair.pair_id] = confusion(t, p)
            x, y = np.asarray(las.x), np.asarray(las.y)
            if pictures is not None:
                pictures.add(pair.pair_id, pair.image, x, y, t, p, cm, object_counts(x, y, t, p))
            parts.append((x, y, t.astype(np.int8), p.astype(np.int8), point_score))
            bar.update()
        x, y, t, p, score = (np.concatenate(k) for k in zip(*parts))
        del parts
        more_scored: dict[str, list[tuple[float, bool]]] = {}
        more = object_counts(x, y, t, p, scores=score, scored=more_scored)
        _add_objects(objects, scored, more, more_scored)
    bar.close()
    return tiles, objects, scored


def format_result(result: dict) -> str:
    """The readable report of :func:`evaluate`'s result: metrics tables, confusion matrices,
    IoU intervals."""

    rows = {}
    for lvl in ("voxels", "pixels", "points"):
        if lvl in result:
            rows[lvl] = result[lvl]["metrics"]
            rows[f"{lvl} (all-ground)"] = result[lvl]["baseline"]
    if "survey" in result:
        rows["points (as surveys)"] = result["survey"]["points"]["metrics"]
    n = result["tiles"]
    lines = [f"{result['split']}: {n} tile{'s' * (n != 1)}", format_metrics_table(rows)]
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

    def span(lo: float, hi: float) -> str:
        return f"{lo:.2f}-{hi:.2f}" if np.isfinite(lo) and np.isfinite(hi) else "-"

    spans = [
        f"{lvl} "
        + ", ".join(f"{name} {span(*b)}" for name, b in result[lvl]["iou_interval"].items())
        for lvl in ("voxels", "points")
        if lvl in result
    ]
    if spans and result["tiles"] < 2:
        lines.append("IoU, 95 % interval: none from one tile (a bootstrap over 2 tiles or more)")
    elif spans:
        lines.append(
            f"IoU, 95 % interval over the {result['tiles']} tiles (bootstrap; how far another "
            f"split like this one could move it): " + "; ".join(spans)
        )
    if "survey" in result:
        sv = result["survey"]
        lines.append(
            f"points (as surveys): {sv['tiles']} tiles lie side by side in {sv['surveys']} "
            f"survey(s) and were also predicted as predict classifies them, in windows of "
            f"{sv['side']:g} (overlap {sv['overlap']:g}) laid over each survey, reading each "
            f"other's points; the row scores every tile's points with the classes predict "
            f"writes (confusion {sv['points']['confusion']})"
        )
    if "objects" in result:
        lines.append(
            "objects (touching cells of one class, at least "
            + " / ".join(f"{v:g}" for v in FIND_MIN_AREA.values())
            + " m2 for "
            + " / ".join(FIND_MIN_AREA)
            + "; a true one is "
            f"found when {FOUND_COVER:.0%} of it is predicted its class, a predicted one is real "
            f"when {FOUND_COVER:.0%} of it truly is): " + _objects_text(result["objects"])
        )
    if "survey" in result:
        lines.append(
            "objects as surveys (each survey's tiles as one area, an object cut by the line "
            "between two tiles counted once): " + _objects_text(result["survey"]["objects"])
        )
    if "report" in result:
        lines.append(f"pictures of every tile, worst first: {result['report']}")
    return "\n".join(lines)


def _objects_text(objects: dict) -> str:
    """Each class's objects found, predicted and real, with the scores' AUC where known."""
    return "; ".join(
        f"{name} found {o['found']} of {o['true']} (recall {_ratio(o['recall'])}), "
        f"{o['predicted']} predicted, {o['real']} real (precision {_ratio(o['precision'])}"
        + (
            f"; their scores rank the real above the false with AUC {o['score_auc']:.2f}"
            if o.get("score_auc") is not None
            else ""
        )
        + ")"
        for name, o in objects.items()
    )


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
    batch: int, context: SurveyContext | None = None,
) -> tuple[dict, np.ndarray]:  # fmt: skip
    """(truth, prediction) of each level for a tile cut into windows: every point once; each
    window's own voxels and pixels (:meth:`~uxbseg.windows.WindowPlan.owned_cells`), with the
    mask cut to the window. Windows that classify no point (empty corners) are not scored.
    And each point's probability of its predicted class. With ``context`` (the tile among its
    neighbours in a survey's ``plan``) the points alone."""
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

    on_window = score if context is None else None
    point_class, _, point_score = predict_windows(
        model, cfg, pair.image, las, pts, plan, device, tta, False, on_window, False, batch,
        context=context,
    )  # fmt: skip
    scores = {"points": (point_truth, point_class.astype(np.int64))}
    for lvl, pieces in parts.items():
        if pieces:
            scores[lvl] = tuple(np.concatenate(p) for p in zip(*pieces))
    return scores, point_score
