"""Class-weighted cross-entropy on the 2D and 3D logits, summed as in the seed (+ optional Dice)."""

from __future__ import annotations

import torch
from monai.losses import MaskedDiceLoss
from torch import nn
from torch.nn import functional as F

from .classes import IGNORE

__all__ = ["FusionLoss", "weighted_ce"]


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy over the positions whose target is not IGNORE (0 if none)."""
    # a batch whose targets are all IGNORE would give 0/0 = NaN with reduction='mean'
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE)


class _Dice(nn.Module):
    """Soft Dice of the foreground classes per tile (MONAI), over the positions not IGNORE."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = MaskedDiceLoss(softmax=True, to_onehot_y=True, include_background=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE
        if not bool(valid.any()):
            return logits.sum() * 0.0
        t = torch.where(valid, target, 0).unsqueeze(1)
        return self.dice(logits.float(), t, mask=valid.unsqueeze(1).to(logits.dtype))


class FusionLoss(nn.Module):
    """``w2d * CE(logits2d, mask2d) + w3d * CE(logits3d, labels3d)`` with class weights.

    When the model has a surface branch (``logits_surface``), ``w_surface * CE(logits_surface,
    mask2d)`` is added; ``surface_extra`` = (logits, masks) of more tiles through the same
    branch (:class:`~uxbseg.training.replay.SurfaceReplay`) join that one term, as a larger batch.
    With ``dice_weight`` > 0 each CE term gains ``dice_weight`` times a soft Dice loss of the
    plazuela and structure classes (per tile, IGNORE positions left out): an overlap objective
    beside the seed's per-voxel one.

    Args:
        class_weights: per-class weights (seed: 0.05, 0.45, 0.50).
        weight_2d, weight_3d: weights of the two terms (seed: 1, 1).
        weight_surface: weight of the surface branch's term.
        dice_weight: weight of the Dice loss added to each CE term (0 = the seed's loss).
    """

    def __init__(
        self,
        class_weights: tuple[float, ...] = (0.05, 0.45, 0.50),
        weight_2d: float = 1.0,
        weight_3d: float = 1.0,
        weight_surface: float = 1.0,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))
        self.weight_2d = weight_2d
        self.weight_3d = weight_3d
        self.weight_surface = weight_surface
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.dice_weight = dice_weight
        self.dice = _Dice() if dice_weight > 0 else None

    def _term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = weighted_ce(logits, target, self.class_weights)
        if self.dice is None:
            return ce
        return ce + self.dice_weight * self.dice(logits, target)

    def forward(
        self,
        out: dict,
        batch: dict,
        surface_extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"loss3d": self._term(out["logits3d"], batch["labels3d"])}
        total = self.weight_3d * parts["loss3d"]
        if out.get("logits2d") is not None:
            parts["loss2d"] = self._term(out["logits2d"], batch["mask2d"])
            total = total + self.weight_2d * parts["loss2d"]
        if out.get("logits_surface") is not None:
            logits, masks = out["logits_surface"], batch["mask2d"]
            if surface_extra is not None:
                logits = torch.cat([logits, surface_extra[0].to(logits.dtype)])
                masks = torch.cat([masks, surface_extra[1]])
            parts["loss_surface"] = self._term(logits, masks)
            total = total + self.weight_surface * parts["loss_surface"]
        return total, parts
