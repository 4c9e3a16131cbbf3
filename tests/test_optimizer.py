"""The training AdamW: fused where it may be, and the same update as torch's loop."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from uxbseg.training.optimizer import adamw
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


class _Tiny(pl.LightningModule):
    """A two-layer model trained by Lightning with uxbseg's AdamW (the fused-or-not choice
    depends on the trainer's precision and clipping, not on the model)."""

    def __init__(self, optim) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )
        self.optim = optim

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x).float(), y)

    def configure_optimizers(self):
        return adamw(self.parameters(), self.optim, self, lr=1e-2)


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [("bf16-mixed", 1.0, False), ("bf16-mixed", None, True), ("32-true", 1.0, True)],
)
def test_lightning_mixed_precision_with_clipping_trains(tiny_cfg, precision, clip, fused):
    """Lightning's mixed-precision plugin refuses to clip a fused AdamW's gradients (it unscales
    them itself): under bf16-mixed (the default on a GPU; the same plugin on this CPU) with
    clipping, the AdamW is torch's multi-tensor one, and training runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    data = torch.utils.data.DataLoader(list(zip(x, x.sum(1, keepdim=True))), batch_size=8)
    model = _Tiny(tiny_cfg.optim)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(
        accelerator="cpu", precision=precision, gradient_clip_val=clip, max_steps=3,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    assert all(bool(g["fused"]) == fused for g in trainer.optimizers[0].param_groups)
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
