"""The AdamW both training stages use: one fused kernel where torch has one."""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl
import torch

from ..config import OptimConfig

__all__ = ["adamw"]


def adamw(
    params: Iterable, optim: OptimConfig, module: pl.LightningModule, **kwargs
) -> torch.optim.AdamW:
    """AdamW with ``optim.weight_decay`` for ``module``'s ``configure_optimizers``; fused
    (``optim.fused``) on CPU and CUDA.

    The fused kernel updates all ~400 tensors of the tiny model in one call instead of a Python
    loop over them (32 -> 9 ms a step on the CPU, BENCHMARKS); same update up to rounding. Not
    under Lightning's mixed precision (``bf16-mixed``, the default on a GPU, and ``16-mixed``)
    with gradient clipping on: a fused AdamW unscales the gradients itself, and Lightning's
    mixed-precision plugin then refuses to clip them ("does not allow for gradient clipping",
    seen on an H200 in the twentieth session); torch's default multi-tensor AdamW runs there.

    torch 2.13's fused CPU kernel reads a gradient as if it had its parameter's strides: a
    contiguous gradient on a channels_last weight is applied scrambled, silently. Autograd gives
    matching strides, but a gradient set by hand may not, so a pre-step hook copies any such
    gradient into its parameter's layout first (tests/test_optimizer.py; older torch raised on
    such a mismatch instead, pytorch/pytorch#106951).
    """
    trainer = module._trainer  # None when called outside fit (tests)
    precision = str(trainer.precision) if trainer is not None else "32"
    clips = trainer is not None and bool(trainer.gradient_clip_val)
    mixed_clipped = precision.endswith("-mixed") and clips
    fused = optim.fused and module.device.type in ("cpu", "cuda") and not mixed_clipped
    opt = torch.optim.AdamW(
        params, weight_decay=optim.weight_decay, fused=True if fused else None, **kwargs
    )
    if fused:
        opt.register_step_pre_hook(_grads_in_parameter_layout)
    return opt


def _grads_in_parameter_layout(opt: torch.optim.Optimizer, args, kwargs) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.stride() != p.stride():
                p.grad = torch.empty_like(p).copy_(p.grad)
