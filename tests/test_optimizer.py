"""The training AdamW: fused where it may be, and the same update as torch's loop."""

from __future__ import annotations

import torch

from uxbseg.training.task import UXBSegmentationTask


def test_fused_by_default_and_switchable(tiny_cfg):
    task = UXBSegmentationTask.from_config(tiny_cfg)
    assert all(g["fused"] for g in task.configure_optimizers().param_groups)
    tiny_cfg.optim.fused = False
    task = UXBSegmentationTask.from_config(tiny_cfg)
    assert not any(g["fused"] for g in task.configure_optimizers().param_groups)


def test_fused_step_equals_the_loop(tiny_cfg):
    """Three steps of the fused kernel and of torch's per-parameter loop on the same gradients,
    set by hand in the default layout although the voxel branch's weights are channels_last."""
    tiny_cfg.optim.fused = True
    fused_task = UXBSegmentationTask.from_config(tiny_cfg)
    tiny_cfg.optim.fused = False
    loop_task = UXBSegmentationTask.from_config(tiny_cfg)
    loop_task.model.load_state_dict(fused_task.model.state_dict())
    opts = [t.configure_optimizers() for t in (fused_task, loop_task)]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in fused_task.model.parameters()]
        for task, opt in zip((fused_task, loop_task), opts, strict=True):
            for p, grad in zip(task.model.parameters(), grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    before = UXBSegmentationTask.from_config(tiny_cfg).model.state_dict()
    moved = 0
    for (name, a), b in zip(
        fused_task.model.named_parameters(), loop_task.model.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(a, before[name])
    assert moved > 100  # the steps changed the weights (LR > 0 for the heads at least)
