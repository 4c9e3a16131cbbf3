"""The seed's two-stage warm-up of head and encoder learning rates (epochs counted from 1)."""

from __future__ import annotations

from ..config import OptimConfig

__all__ = ["encoder_lr", "encoders_frozen", "head_lr"]


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
