"""The seed's two-stage warm-up of head and encoder learning rates (epochs counted from 1)."""

from __future__ import annotations

import math

from ..config import OptimConfig

__all__ = ["decay_factor", "encoder_lr", "encoders_frozen", "head_lr"]


def head_lr(epoch: int, cfg: OptimConfig) -> float:
    """LR_WARMUP + (LR_MAIN - LR_WARMUP) * e / W for e <= W, then LR_MAIN."""
    w = cfg.warmup_epochs
    if w > 0 and epoch <= w:
        return cfg.lr_warmup + (cfg.lr_main - cfg.lr_warmup) * epoch / w
    return cfg.lr_main


def encoders_frozen(epoch: int, cfg: OptimConfig) -> bool:
    """Scheduled encoders are frozen for e <= W and unfrozen at e = W + 1."""
    return epoch <= cfg.warmup_epochs


def encoder_lr(epoch: int, cfg: OptimConfig) -> float:
    """0 while frozen; LR_WARMUP -> LR_MAIN over e = W+1 .. 2W; then LR_MAIN."""
    w = cfg.warmup_epochs
    if encoders_frozen(epoch, cfg):
        return 0.0
    if w > 0 and epoch <= 2 * w:
        return cfg.lr_warmup + (cfg.lr_main - cfg.lr_warmup) * (epoch - w) / w
    return cfg.lr_main


def decay_factor(progress: float, cfg: OptimConfig) -> float:
    """LR multiplier for the epochs after a group's warm-up, at ``progress`` (0..1) of the run.

    1.0 with ``decay='none'`` (the seed); with ``'cosine'``, half a cosine from 1.0 at the start
    to ``min_lr_ratio`` at the end.
    """
    if cfg.decay == "none":
        return 1.0
    p = min(max(progress, 0.0), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
