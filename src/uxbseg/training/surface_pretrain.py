"""Surface-branch pre-training: the 2D U-Net alone on the training tiles' column maps.

The surface branch finds the platforms' outlines from the ground-relief maps, and learns them
from many distinct tiles per step (docs/RESULTS.md: 8 tiles per step in a 2D proxy, against 2 +
replay in the fusion model). The 2D maps cost a few milliseconds a tile where the 3D branch
costs a second a step, so before the fusion model trains, ``trainer.surface_pretrain_steps``
steps train the branch alone on batches of ``trainer.surface_pretrain_batch`` tiles (random
flips and quarter turns), with the optimiser settings of the main run (AdamW, ``lr_main``,
``decay`` over these steps). The fusion model then starts from that branch.

Under a time budget (``trainer.max_time_minutes``) the stage stops at :data:`TIME_SHARE` of it
at the latest, so the fusion model always keeps the rest: a 30-second demo does not spend 100 s
here and then train for no epoch at all. Its learning-rate decay then runs over whichever ends
first, the steps or that time, so a stage cut short still ends at the low rate.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, RandomSampler

from ..config import Config, OptimConfig
from ..data.column_maps import ColumnMaps
from ..data.dataset import UXBDataset
from ..losses import weighted_ce
from ..models import UXBFusionModel
from ..models.surface_branch import SurfaceBranch
from ..runtime import training_refresh_rate
from .optimizer import adamw
from .schedule import decay_factor

__all__ = ["TIME_SHARE", "SurfacePretrainTask", "column_maps", "pretrain_surface"]

log = logging.getLogger(__name__)

TIME_SHARE = 0.5
"""The largest part of ``trainer.max_time_minutes`` the stage may take (maps included)."""


class SurfacePretrainTask(pl.LightningModule):
    """Trains a :class:`~uxbseg.models.surface_branch.SurfaceBranch` against the 2D masks.

    Args:
        branch: the branch to train (in place).
        class_weights: the CE's class weights (the main run's ``loss.class_weights``).
        optim: AdamW settings; the LR is ``lr_main`` times :func:`decay_factor` of the
            progress (:meth:`progress`).
        steps: the number of steps the schedule spans.
        seconds: the time the stage may take (None: no limit); the schedule spans it too.
    """

    def __init__(
        self,
        branch: SurfaceBranch,
        class_weights: tuple[float, ...],
        optim: OptimConfig,
        steps: int,
        seconds: float | None = None,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0 or None, got {seconds}")
        self.branch = branch
        self.optim = optim
        self.steps = steps
        self.seconds = seconds
        self._started: float | None = None
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))

    def progress(self, step: int) -> float:
        """How far the stage is (0..1) at ``step``: of its steps, or of its time if further."""
        done = step / self.steps
        if self.seconds is not None:
            now = time.monotonic()
            if self._started is None:  # the scheduler asks first when the optimiser is built
                self._started = now
            done = max(done, (now - self._started) / self.seconds)
        return min(done, 1.0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = weighted_ce(self.branch(batch["maps"])[1], batch["mask2d"], self.class_weights)
        self.log("surface_pretrain/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        oc = self.optim
        opt = adamw(self.branch.parameters(), oc, self, lr=oc.lr_main)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: decay_factor(self.progress(step), oc)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def column_maps(model: UXBFusionModel, dataset: UXBDataset) -> ColumnMaps:
    """The surface branch's maps and the 2D masks of every tile of ``dataset`` (no views; the
    images are not read)."""
    maps, masks = [], []
    for i in range(len(dataset)):
        maps.append(model.surface_maps(torch.from_numpy(dataset.features(i))[None])[0])
        masks.append(torch.from_numpy(dataset.mask2d(i).astype(np.int64)))
    return ColumnMaps(torch.stack(maps), torch.stack(masks), augment=True)


def pretrain_surface(
    model: UXBFusionModel,
    dataset: UXBDataset,
    cfg: Config,
    precision: str = "32-true",
    progress: bool = True,
) -> float:
    """Train ``model.surface_branch`` in place as the module docstring says; returns seconds.

    Runs on one device of ``trainer.accelerator`` at ``precision`` (a Lightning precision, the
    main run's). Under DDP every process runs it from the same seed, and DDP starts from rank
    0's weights in any case. With ``trainer.max_time_minutes`` set it stops after
    :data:`TIME_SHARE` of that time even if steps remain (a warning says how many ran).
    """
    tc = cfg.trainer
    if model.surface_branch is None:
        raise ValueError("the model has no surface branch to pre-train")
    start = time.monotonic()
    data = column_maps(model, dataset)
    steps, batch = tc.surface_pretrain_steps, tc.surface_pretrain_batch
    gen = torch.Generator().manual_seed(tc.seed)
    loader = DataLoader(
        data,
        batch_size=batch,
        sampler=RandomSampler(data, replacement=True, num_samples=steps * batch, generator=gen),
    )
    max_time = None
    if tc.max_time_minutes:
        left = TIME_SHARE * 60.0 * tc.max_time_minutes - (time.monotonic() - start)
        max_time = timedelta(seconds=max(left, 1e-3))
    seconds = None if max_time is None else max_time.total_seconds()
    task = SurfacePretrainTask(
        model.surface_branch, cfg.loss.class_weights, cfg.optim, steps, seconds
    )
    trainer = pl.Trainer(
        accelerator=tc.accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        max_steps=steps,
        max_time=max_time,
        gradient_clip_val=tc.gradient_clip_norm,
        gradient_clip_algorithm="norm",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[TQDMProgressBar(refresh_rate=training_refresh_rate())] if progress else None,
    )
    trainer.fit(task, train_dataloaders=loader)
    model.surface_branch.to("cpu")
    seconds = time.monotonic() - start
    done = trainer.global_step
    last = trainer.callback_metrics.get("surface_pretrain/loss")
    log.info(
        "surface branch pre-trained on %d tiles: %d steps of %d in %.1f s (last loss %s)",
        len(data),
        done,
        batch,
        seconds,
        f"{float(last):.4f}" if last is not None else "n/a",
    )
    if done < steps:
        log.warning(
            "surface pre-training stopped after %d of trainer.surface_pretrain_steps=%d steps: "
            "it may take %.0f%% of trainer.max_time_minutes=%g (its learning rate decayed "
            "over that time instead); give more minutes or fewer steps to complete it",
            done,
            steps,
            100 * TIME_SHARE,
            tc.max_time_minutes,
        )
    return seconds
