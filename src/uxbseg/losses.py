"""Class-weighted cross-entropy on the 2D and 3D logits, summed as in the seed."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .classes import IGNORE

__all__ = ["FusionLoss"]


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # a batch whose targets are all IGNORE would give 0/0 = NaN with reduction='mean'
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE)


class FusionLoss(nn.Module):
    """``w2d * CE(logits2d, mask2d) + w3d * CE(logits3d, labels3d)`` with class weights.

    When the model has a surface branch (``logits_surface``), ``w_surface * CE(logits_surface,
    mask2d)`` is added; ``surface_extra`` = (logits, masks) of more tiles through the same
    branch (:class:`~uxbseg.training.replay.SurfaceReplay`) join that one term, as a larger batch.

    Args:
        class_weights: per-class weights (seed: 0.05, 0.45, 0.50).
        weight_2d, weight_3d: weights of the two terms (seed: 1, 1).
        weight_surface: weight of the surface branch's term.
    """

    def __init__(
        self,
        class_weights: tuple[float, ...] = (0.05, 0.45, 0.50),
        weight_2d: float = 1.0,
        weight_3d: float = 1.0,
        weight_surface: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))
        self.weight_2d = weight_2d
        self.weight_3d = weight_3d
        self.weight_surface = weight_surface

    def forward(
        self,
        out: dict,
        batch: dict,
        surface_extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"loss3d": _weighted_ce(out["logits3d"], batch["labels3d"], self.class_weights)}
        total = self.weight_3d * parts["loss3d"]
        if out.get("logits2d") is not None:
            parts["loss2d"] = _weighted_ce(out["logits2d"], batch["mask2d"], self.class_weights)
            total = total + self.weight_2d * parts["loss2d"]
        if out.get("logits_surface") is not None:
            logits, masks = out["logits_surface"], batch["mask2d"]
            if surface_extra is not None:
                logits = torch.cat([logits, surface_extra[0].to(logits.dtype)])
                masks = torch.cat([masks, surface_extra[1]])
            parts["loss_surface"] = _weighted_ce(logits, masks, self.class_weights)
            total = total + self.weight_surface * parts["loss_surface"]
        return total, parts
