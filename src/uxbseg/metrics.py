"""Segmentation metrics derived from a confusion matrix (rows = truth, columns = prediction)."""

from __future__ import annotations

import numpy as np
import torch

from .classes import CLASSES

__all__ = ["format_metrics_table", "iou_interval", "metrics_from_confusion"]


def metrics_from_confusion(cm: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Global accuracy and per-class accuracy (= recall), precision, recall, F1, IoU.

    Classes absent from both truth and prediction get NaN for ratios with a zero denominator.
    Keys: ``acc``, ``acc_<name>``, ``precision_<name>``, ``recall_<name>``, ``f1_<name>``,
    ``iou_<name>``, ``miou`` (mean over classes with a defined IoU).
    """
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    tp = np.diag(cm)
    truth = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    total = cm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / truth
        precision = tp / pred
        f1 = 2 * tp / (truth + pred)
        iou = tp / (truth + pred - tp)
    out = {"acc": float(tp.sum() / total) if total else float("nan")}
    for c in CLASSES:
        i = c.index
        out[f"acc_{c.name}"] = float(recall[i])
        out[f"precision_{c.name}"] = float(precision[i])
        out[f"recall_{c.name}"] = float(recall[i])
        out[f"f1_{c.name}"] = float(f1[i])
        out[f"iou_{c.name}"] = float(iou[i])
    valid = iou[np.isfinite(iou)]
    out["miou"] = float(valid.mean()) if len(valid) else float("nan")
    return out


def iou_interval(
    tile_confusions: np.ndarray, level: float = 0.95, draws: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Bootstrap interval of each class's IoU over the tiles of a split.

    ``tile_confusions`` (T, K, K) holds one confusion matrix per tile; each draw resamples T
    tiles with replacement and scores their summed matrix, as the split is scored. The interval
    is the central ``level`` of the draws (percentiles; NaN when a class never occurs). On a
    few tiles it is wide: how far another split of the same kind could move the score.
    """
    cms = np.asarray(tile_confusions, dtype=np.float64)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2] or len(cms) == 0:
        raise ValueError(f"tile_confusions must be (T>0, K, K), got {cms.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n = len(cms)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=draws)  # times each tile is drawn
    summed = np.einsum("dt,tij->dij", counts, cms)
    tp = np.diagonal(summed, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (summed.sum(axis=2) + summed.sum(axis=1) - tp)
    out = {}
    for c in CLASSES:
        col = iou[:, c.index]
        col = col[np.isfinite(col)]
        if len(col) == 0:
            out[c.name] = (float("nan"), float("nan"))
            continue
        lo, hi = np.quantile(col, [(1 - level) / 2, (1 + level) / 2])
        out[c.name] = (float(lo), float(hi))
    return out


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """Compact table: one row per (level) with global accuracy and per-class IoU / F1."""
    names = [c.name for c in CLASSES]
    iou_w, f1_w = (max(len(f"{what} {n}") for n in names) + 2 for what in ("IoU", "F1"))
    label_w = max([22, *(len(label) + 2 for label in rows)])
    head = (
        f"{'':<{label_w}}{'acc':>7}"
        + "".join(f"{'IoU ' + n:>{iou_w}}" for n in names)
        + "".join(f"{'F1 ' + n:>{f1_w}}" for n in names)
    )
    lines = [head]
    for label, m in rows.items():
        lines.append(
            f"{label:<{label_w}}{m['acc']:>7.3f}"
            + "".join(f"{m[f'iou_{n}']:>{iou_w}.3f}" for n in names)
            + "".join(f"{m[f'f1_{n}']:>{f1_w}.3f}" for n in names)
        )
    return "\n".join(lines)
