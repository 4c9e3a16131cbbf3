"""The Lightning task: one shared step for train/val, the seed's schedule, metrics and export."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Timer
from torchmetrics.classification import MulticlassConfusionMatrix

from ..classes import IGNORE, NUM_CLASSES
from ..config import Config, config_from_dict, config_to_dict
from ..decision import decide
from ..errors import UXBError
from ..losses import FusionLoss
from ..metrics import format_metrics_table, metrics_from_confusion
from ..models import UXBFusionModel
from .mixing import column_cutmix
from .optimizer import adamw
from .replay import SurfaceReplay
from .schedule import decay_factor, encoder_lr, encoders_frozen, head_lr

__all__ = ["NonFiniteLossError", "UXBSegmentationTask"]

log = logging.getLogger(__name__)

REPLAY_CAPACITY = 128  # tiles kept for loss.surface_replay (a few (H, W) maps each)


class NonFiniteLossError(UXBError):
    """The training loss became NaN or Inf."""


class UXBSegmentationTask(pl.LightningModule):
    """Trains :class:`~uxbseg.models.UXBFusionModel` with the seed's loss, groups and schedule.

    Args:
        config: the run's configuration as a plain dict (saved in checkpoints).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: Config = config_from_dict(config)
        self.model = UXBFusionModel.from_config(self.cfg)
        if self.cfg.model.compile:
            self.model.compile_branches()
        lc = self.cfg.loss
        self.criterion = FusionLoss(
            lc.class_weights, lc.weight_2d, lc.weight_3d, lc.weight_surface, lc.dice_weight
        )
        cm = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
        self.cm = torch.nn.ModuleDict(
            {f"{stage}_{dim}": cm.clone() for stage in ("train", "val") for dim in ("3d", "2d")}
        )
        self.scheduled = self._scheduled_encoders()
        self.replay: SurfaceReplay | None = None
        self.mixing: torch.Generator | None = None
        self.epoch_table: dict[str, dict[str, float]] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> UXBSegmentationTask:
        return cls(config_to_dict(cfg))

    # -- parameter groups and the seed's schedule ---------------------------------------------
    def _scheduled_encoders(self) -> list[str]:
        """Encoders that are frozen in warm-up and follow the encoder schedule."""
        policy = self.cfg.optim.freeze_policy
        mods = self.model.encoder_modules()
        if policy == "seed":
            return list(mods)
        if policy == "pretrained":
            return ["image"] if "image" in mods and self.cfg.model.pretrained_2d else []
        return []

    def configure_optimizers(self):
        enc = {
            id(p)
            for name in self.scheduled
            for p in self.model.encoder_modules()[name].parameters()
        }
        heads = [p for p in self.model.parameters() if id(p) not in enc]
        encoders = [p for p in self.model.parameters() if id(p) in enc]
        groups = [{"params": heads, "lr": head_lr(1, self.cfg.optim), "name": "heads"}]
        if encoders:
            groups.append(
                {"params": encoders, "lr": encoder_lr(1, self.cfg.optim), "name": "encoders"}
            )
        return adamw(groups, self.cfg.optim, self)

    @property
    def seed_epoch(self) -> int:
        """The seed's epoch number (1-based)."""
        return self.current_epoch + 1

    def _frozen(self) -> bool:
        return bool(self.scheduled) and encoders_frozen(self.seed_epoch, self.cfg.optim)

    def progress(self) -> float:
        """How far the run is (0..1): the larger of the epochs and the time budget used."""
        done = self.current_epoch / max(1, self.trainer.max_epochs or 1)
        minutes = self.cfg.trainer.max_time_minutes
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if minutes and timer is not None:
            done = max(done, timer.time_elapsed("train") / (60.0 * minutes))
        # every DDP process must step with the same LR: the clocks may differ, rank 0 decides
        return min(float(self.trainer.strategy.broadcast(done, src=0)), 1.0)

    def on_train_epoch_start(self) -> None:
        e, oc = self.seed_epoch, self.cfg.optim
        decay = decay_factor(self.progress(), oc) if oc.decay != "none" else 1.0
        w = oc.warmup_epochs
        for group in self.trainer.optimizers[0].param_groups:
            if group.get("name") == "encoders":  # decays once its own warm-up (2 W) is over
                group["lr"] = encoder_lr(e, oc) * (decay if e > 2 * w else 1.0)
            else:
                group["lr"] = head_lr(e, oc) * (decay if e > w else 1.0)
        frozen = self._frozen()
        # a single process saves the backward pass through frozen encoders; under DDP every
        # parameter keeps requires_grad (the reducer is built once) and grads are dropped instead
        if self.trainer.world_size == 1:
            for name in self.scheduled:
                self.model.encoder_modules()[name].requires_grad_(not frozen)
        lrs = {
            g.get("name", str(i)): g["lr"]
            for i, g in enumerate(self.trainer.optimizers[0].param_groups)
        }
        self.log_dict({f"lr/{k}": v for k, v in lrs.items()}, on_epoch=True, on_step=False)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._frozen():
            for name in self.scheduled:
                for p in self.model.encoder_modules()[name].parameters():
                    p.grad = None  # AdamW skips parameters without grad: no update, no decay

    # -- steps --------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.model.fit_device(self.device)  # e.g. SDPA window attention in training on a GPU
        if self.cfg.loss.surface_replay:  # one bank per process, its own draws
            seed = self.cfg.trainer.seed + self.global_rank
            self.replay = SurfaceReplay(REPLAY_CAPACITY, seed=seed)
        if self.cfg.data.cutmix:  # per-process draws, like the replay's (not checkpointed)
            self.mixing = torch.Generator().manual_seed(self.cfg.trainer.seed + self.global_rank)

    def _replayed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Surface logits and masks of earlier tiles; keeps this batch's maps for later steps."""
        if self.replay is None:
            return None
        drawn = self.replay.draw(self.cfg.loss.surface_replay)
        self.replay.push(self.model.surface_maps(batch["voxels"]), batch["mask2d"])
        if drawn is None:
            return None
        maps, masks = drawn
        return self.model.surface_branch(maps)[1], masks

    def forward(self, image: torch.Tensor, voxels: torch.Tensor):
        return self.model(image, voxels)

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self.model(batch["image"], batch["voxels"])
        extra = self._replayed(batch) if stage == "train" else None
        loss, parts = self.criterion(out, batch, extra)
        bs = batch["voxels"].shape[0]
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            batch_size=bs,
            sync_dist=stage != "train",
        )
        for k, v in parts.items():
            self.log(
                f"{stage}/{k}",
                v,
                on_epoch=True,
                on_step=False,
                batch_size=bs,
                sync_dist=stage != "train",
            )
        with torch.no_grad():
            w, tau = self.cfg.loss.class_weights, self.cfg.model.logit_adjustment
            pred = decide(out["logits3d"], w, tau, dim=1, logits=True)
            self.cm[f"{stage}_3d"].update(pred, batch["labels3d"])
            if out["logits2d"] is not None:
                pred = decide(out["logits2d"], w, tau, dim=1, logits=True)
                self.cm[f"{stage}_2d"].update(pred, batch["mask2d"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.mixing is not None and float(torch.rand((), generator=self.mixing)) < (
            self.cfg.data.cutmix
        ):
            batch = column_cutmix(batch, self.mixing)
        loss = self._shared_step(batch, "train")
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {self.seed_epoch}, step "
                f"{batch_idx} (pairs {batch['pair_id']}). The best weights so far are kept. "
                "Lower optim.lr_main, use trainer.precision=32, or check these tiles with inspect."
            )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def _epoch_metrics(self, stage: str) -> None:
        for dim in ("3d", "2d"):
            metric = self.cm[f"{stage}_{dim}"]
            if not metric.update_called:
                continue
            m = metrics_from_confusion(metric.compute())
            metric.reset()
            self.epoch_table[f"{stage} {'voxels' if dim == '3d' else 'pixels'}"] = m
            self.log_dict(
                {f"{stage}/{k}_{dim}": (v if math.isfinite(v) else 0.0) for k, v in m.items()},
                on_epoch=True,
                sync_dist=False,
            )

    def on_train_epoch_end(self) -> None:
        self._epoch_metrics("train")
        if self.trainer.is_global_zero and self.epoch_table:
            metrics = self.trainer.callback_metrics
            tl, vl = metrics.get("train/loss_epoch"), metrics.get("val/loss")
            head = f"epoch {self.seed_epoch}: train loss {float(tl):.4f}" if tl is not None else ""
            if vl is not None:
                head += f", val loss {float(vl):.4f}"
            self.print(f"\n{head}\n{format_metrics_table(self.epoch_table)}")
        self.epoch_table = {}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for m in self.cm.values():
                m.reset()
            return
        self._epoch_metrics("val")
