"""``uxbseg train``: checks the data, builds the Lightning trainer and runs it."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ..classes import CLASSES
from ..config import Config, save_config
from ..data.datamodule import UXBDataModule, checked_reports
from ..data.overlap import LEAK_SHARE, same_ground_pairs
from ..data.pairs import tile_density, tile_extent
from ..environment import unused_gpu, why_no_gpu
from ..errors import BadDataError, ConfigError
from ..io.weights import BEST_WEIGHTS_NAME, save_weights
from ..run_dirs import require_folder
from ..runtime import training_refresh_rate
from ..tiling import hold_out_command
from .surface_pretrain import pretrain_surface
from .task import UXBSegmentationTask

__all__ = [
    "BestWeightsExporter",
    "TensorsOnlyCheckpointIO",
    "TrainResult",
    "ValidatedEMA",
    "train",
    "where_trainer_runs",
]

log = logging.getLogger(__name__)


class TensorsOnlyCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with every load restricted to tensors and plain data.

    Lightning loads checkpoints in more places than ``fit(ckpt_path=...)`` - the ``ddp_spawn``
    launcher reads each worker's weights back with ``weights_only=None`` - so the restriction
    lives here, where all of them pass: a caller's ``weights_only`` is ignored.
    """

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class BestWeightsExporter(Callback):
    """Export the model's weights each time the validation loss improves by more than min_delta.

    A NaN/Inf validation loss is never an improvement. The best score is part of the checkpoint,
    so a resumed run keeps comparing against it.
    """

    def __init__(self, folder: str | Path, cfg: Config, min_delta: float = 1e-6) -> None:
        self.folder = Path(folder)
        self.cfg = cfg
        self.min_delta = min_delta
        self.best = math.inf
        self.best_epoch = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or not math.isfinite(float(loss)):
            return
        loss = float(loss)
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch = loss, pl_module.current_epoch + 1
            if trainer.is_global_zero:
                save_weights(
                    pl_module.model,
                    self.cfg,
                    self.folder,
                    {"epoch": str(self.best_epoch), "val_loss": f"{loss:.6g}"},
                )
                log.info(
                    "epoch %d: val loss %.5f improved; exported %s.pth/.safetensors",
                    self.best_epoch,
                    loss,
                    BEST_WEIGHTS_NAME,
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.best_epoch = state_dict["best_epoch"]


class ValidatedEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, validated and exported as the model.

    Lightning puts the averaged weights into the model for validation and takes them out again
    at the end of the validation epoch - before the validation loss is known, so an exporter
    would save the raw weights under the averaged weights' score. Here they stay until
    validation has ended: callbacks listed before this one (early stopping, the exporter) see
    the weights that were validated; Lightning's ``ModelCheckpoint`` always runs last and saves
    both sets.
    """

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)


@dataclass
class TrainResult:
    """Where a run's outputs are and how it ended."""

    run_dir: Path
    best_weights: Path | None
    best_val_loss: float
    best_epoch: int
    epochs_run: int


def _precision(cfg: Config) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


MPS_NOTE = (
    "training on Apple's MPS, on which this model is untested (torch implements 3D transposed "
    "convolutions there from 2.8, in float32): if an operator is missing, set "
    "PYTORCH_ENABLE_MPS_FALLBACK=1 (that operator on the CPU) or --set trainer.accelerator=cpu"
)
"""What train says when Lightning's ``auto`` accelerator takes Apple's MPS (a Mac)."""

SEED_SIZE = 32 * 256 * 256 * 96
"""The seed model's size for the CPU check: grid voxels x SwinUNETR feature_size x batch."""


def _warn_if_too_big_for_the_cpu(cfg: Config) -> bool:
    """Warn (and say so) when training will run on the CPU with a model of more than 1/16 of
    the seed's size (voxels x feature_size x batch): the seed's step takes minutes there and
    tens of GiB."""
    accelerator = cfg.trainer.accelerator
    if accelerator != "cpu":  # Lightning's auto takes a GPU (CUDA or Apple's MPS) when there is one
        mps = getattr(torch.backends, "mps", None)
        if accelerator != "auto" or torch.cuda.is_available() or (mps and mps.is_available()):
            return False
    d, h, w = cfg.grid.shape
    size = d * h * w * cfg.model.feature_size * cfg.data.batch_size
    if size * 16 < SEED_SIZE:
        return False
    log.warning(
        "training on the CPU a model of grid %s, feature_size %d, at batch %d (%.0f%% of the "
        "original script's size): a step of the original's model takes minutes on a CPU and "
        "tens of GiB of memory (32 GiB on a GPU), so an epoch of a few hundred tiles takes "
        "days; train it on a GPU, or a CPU-sized model: --config tiny (the demo's: grid "
        "(32, 64, 64), feature_size 12)",
        tuple(cfg.grid.shape),
        cfg.model.feature_size,
        cfg.data.batch_size,
        100 * size / SEED_SIZE,
    )
    return True


def gpu_speed_hint(cfg: Config, device_type: str) -> str | None:
    """What would train a model of the seed's size faster on a GPU than ``cfg`` does (eager,
    or batch 1), or None: nothing to add, a smaller model, or not a GPU."""
    d, h, w = cfg.grid.shape
    big = d * h * w * cfg.model.feature_size * 4 >= SEED_SIZE
    if device_type != "cuda" or not big or (cfg.model.compile and cfg.data.batch_size > 1):
        return None
    return (
        f"training eagerly at batch {cfg.data.batch_size}"
        if not cfg.model.compile
        else "training compiled at batch 1"
    ) + (
        ": the seed model trains fastest compiled at a larger batch, --set model.compile=true "
        "--set data.batch_size=8 (the benchmark's training step on an H200: 4.85x the original "
        "script's throughput in 82 GiB of GPU memory, batch 4 in 43 GiB, against 2.2x eager at "
        "batch 1 in 16 GiB; BENCHMARKS.md); compiling takes ~5 minutes before the first step, "
        "cached for later runs"
    )


def _require_devices(cfg: Config) -> None:
    """Refuse, before any work, a ``trainer.accelerator`` / ``trainer.devices`` that this
    machine cannot give (Lightning would say so with a traceback once the data is read),
    saying what it has."""
    acc, n = cfg.trainer.accelerator, cfg.trainer.devices
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None)
    mps = bool(mps and mps.is_available())
    auto = "set trainer.accelerator=auto (a GPU when torch sees one, else the CPU) or cpu"
    if acc in ("gpu", "cuda") and not cuda and not (acc == "gpu" and mps):
        raise ConfigError(f"trainer.accelerator={acc}: {why_no_gpu()}; {auto}")
    if acc == "mps" and not mps:
        raise ConfigError(f"trainer.accelerator=mps: Apple's MPS is not available here; {auto}")
    if acc in ("gpu", "cuda", "auto") and cuda and n > cuda:
        raise ConfigError(
            f"trainer.devices={n}: torch sees {cuda} CUDA GPU(s) here; set trainer.devices="
            f"{cuda} or fewer (`uxbseg env` lists them)"
        )


def _warn_if_gpu_unused(cfg: Config) -> None:
    """Warn when Lightning's ``auto`` accelerator will take the CPU on a machine whose NVIDIA
    GPU torch cannot use (:func:`~uxbseg.environment.unused_gpu`)."""
    if cfg.trainer.accelerator == "auto" and not torch.cuda.is_available():
        why = unused_gpu()
        if why:
            log.warning("%s", why)


def _require_validation_split(root, cfg: Config) -> None:
    """Refuse, before any work, a dataset without its validation split, saying how to make one."""
    val = Path(root) / cfg.data.val_split
    train_dir = Path(root) / cfg.data.train_split
    if val.is_dir() or not train_dir.is_dir():  # a missing train/ is find_pairs' to report
        return
    side = cfg.grid.tile_extent
    what_s = "" if side else "; S: your tiles' side, in CRS units"
    raise BadDataError(
        f"{val}: no validation split (training picks its best epoch and stops early by the loss "
        f"on it, as the original script did); add labelled pairs there, or make one from "
        f"{cfg.data.train_split}/: {hold_out_command(root, side)} (whole blocks of ground move "
        f"to test/{what_s}), or name another split with --set data.val_split=NAME"
    )


def _warn_of_missing_classes(root, split: str, reports: list, validation: bool) -> list[str]:
    """Warn when no tile of a split holds a point of plazuela or structure (by its LAS code):
    the model cannot learn a class it never sees, nor validation score it. Returns the names
    of the classes missing."""
    codes: set[int] = set().union(*(r.las_classes for r in reports))
    missing = [c for c in CLASSES[1:] if c.las_code not in codes]
    if missing:
        why = (
            "validation cannot score it, so the best epoch is picked without it"
            if validation
            else "the model cannot learn what it never sees"
        )
        log.warning(
            "no tile of %s holds a point of %s: %s; check the tiles' classification codes "
            "(`uxbseg inspect %s` lists each tile's)",
            Path(root) / split,
            " or ".join(f"{c.name} (LAS code {c.las_code})" for c in missing),
            why,
            root,
        )
    return [c.name for c in missing]


def _warn_of_leaks(root, cfg: Config, val: list, train: list) -> None:
    """Warn when validation tiles cover training ground (:mod:`uxbseg.data.overlap`)."""
    leaks = same_ground_pairs([r.ground for r in val], [r.ground for r in train], LEAK_SHARE)
    if not leaks:
        return
    i, j, sg = leaks[0]
    log.warning(
        "%d of the %d %s tiles cover training ground (e.g. %s covers %.0f%% of %s/%s, their "
        "terrain within a median %.2f m): validation on them measures memory, not what the "
        "model finds in new ground, and picks the best epoch by it; keep each place in one "
        "split (`uxbseg inspect %s` names every one)",
        len({i for i, _, _ in leaks}),
        len(val),
        cfg.data.val_split,
        val[i].pair.pair_id,
        100 * sg.share,
        cfg.data.train_split,
        train[j].pair.pair_id,
        sg.dz,
        root,
    )


def train(
    root: str | Path,
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    skip_bad: bool | None = None,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train on ``root/train`` validating on ``root/test``; outputs go to ``run_dir``.

    Bad pairs stop the run before the first epoch (or are skipped with ``skip_bad``).
    ``resume`` continues from ``run_dir/checkpoints/last.ckpt``. ``extra_callbacks`` are added
    to the Lightning trainer (e.g. for monitoring).
    """
    run_dir = require_folder(run_dir)
    skip = cfg.data.skip_bad if skip_bad is None else skip_bad
    _require_validation_split(root, cfg)
    _require_devices(cfg)
    _warn_if_gpu_unused(cfg)
    _warn_if_too_big_for_the_cpu(cfg)
    train_reports = checked_reports(root, cfg.data.train_split, cfg, skip)
    train_pairs = [r.pair for r in train_reports]
    side = tile_extent(train_reports)
    if cfg.grid.tile_extent is None and side is not None:  # with the weights: predict's window
        cfg = replace(cfg, grid=replace(cfg.grid, tile_extent=float(f"{side:.6g}")))
        log.info("training tiles are %.3f units on their larger side (grid.tile_extent)", side)
    density = tile_density(train_reports)
    if cfg.grid.tile_density is None and density is not None:  # predict warns far from it
        cfg = replace(cfg, grid=replace(cfg.grid, tile_density=float(f"{density:.6g}")))
        log.info("training tiles hold %.4g points per square unit (grid.tile_density)", density)
    val_reports = checked_reports(root, cfg.data.val_split, cfg, skip)
    val_pairs = [r.pair for r in val_reports]
    _warn_of_missing_classes(root, cfg.data.train_split, train_reports, validation=False)
    _warn_of_missing_classes(root, cfg.data.val_split, val_reports, validation=True)
    _warn_of_leaks(root, cfg, val_reports, train_reports)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if resume:
        if not last.is_file():
            raise BadDataError(f"{last}: nothing to resume; train without --resume first")
        ckpt_path = str(last)
    else:
        existing = [p for p in (last, run_dir / f"{BEST_WEIGHTS_NAME}.safetensors") if p.is_file()]
        if existing:
            raise BadDataError(
                f"{run_dir} already holds a training run ({existing[0].name}); a new run there "
                "would replace its weights: pass --resume to continue it, or choose another --out"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a resumed run's config.yaml is replaced once its checkpoint has loaded
        save_config(cfg, run_dir / "config.yaml")
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)

    dm = UXBDataModule(root, cfg, train_pairs, val_pairs)
    task = UXBSegmentationTask.from_config(cfg)
    exporter = BestWeightsExporter(run_dir, cfg, cfg.trainer.min_delta)
    tc = cfg.trainer
    callbacks = [
        # last.ckpt after every validation (save_last with save_top_k=0 would save only at the end)
        ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", monitor=None, enable_version_counter=False
        ),
        EarlyStopping(
            monitor="val/loss",
            patience=tc.patience,
            min_delta=tc.min_delta,
            mode="min",
            check_finite=True,
        ),
        exporter,
        *([ValidatedEMA(decay=tc.ema_decay)] if tc.ema_decay else []),  # after the exporter
        *([TQDMProgressBar(refresh_rate=training_refresh_rate())] if progress else []),
        *(extra_callbacks or []),
    ]
    metrics_csv = run_dir / "metrics.csv"
    earlier = _read_rows(metrics_csv) if resume else []
    trainer = _trainer(cfg, run_dir, callbacks, progress)
    log.info("training on %s", where_trainer_runs(trainer))
    hint = gpu_speed_hint(cfg, trainer.strategy.root_device.type)
    if hint:
        log.info("%s", hint)
    if trainer.strategy.root_device.type == "mps":
        log.warning("%s", MPS_NOTE)
    if tc.surface_pretrain_steps and ckpt_path is None:  # a resumed run has its branch already
        seconds = pretrain_surface(task.model, dm.train_ds, cfg, _precision(cfg), progress)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None:  # the stage's time counts towards trainer.max_time_minutes
            timer.load_state_dict({"time_elapsed": {"train": seconds}})
    try:
        # resume reads last.ckpt through TensorsOnlyCheckpointIO: never unpickles objects
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    except RuntimeError as exc:
        if ckpt_path is None or "state_dict" not in str(exc):
            raise
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), "")[:160]
        raise BadDataError(
            f"{last}: the checkpoint does not fit the configured model ({first} ...); resume "
            f"with the run's own configuration, {run_dir / 'config.yaml'} (the command line "
            "uses it when --config is left out)"
        ) from exc
    finally:
        if earlier:  # Lightning's CSV logger starts metrics.csv afresh; keep the earlier epochs
            _prepend_rows(metrics_csv, earlier)
    if resume:
        save_config(cfg, run_dir / "config.yaml")
    best = run_dir / f"{BEST_WEIGHTS_NAME}.safetensors"
    return TrainResult(
        run_dir,
        best if best.is_file() else None,
        exporter.best,
        exporter.best_epoch,
        trainer.current_epoch,
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _prepend_rows(path: Path, earlier: list[dict[str, str]]) -> None:
    rows = earlier + _read_rows(path)
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def where_trainer_runs(trainer: pl.Trainer) -> str:
    """The device(s) and precision a Lightning trainer runs on, in words (Lightning's own
    start-up lines are quiet unless --verbose)."""
    dev = trainer.strategy.root_device
    what = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    what = what or f"{torch.get_num_threads()} threads"
    n = trainer.num_devices
    return f"{dev.type}{f' x {n}' if n > 1 else ''} ({what}), precision {trainer.precision}"


def _trainer(cfg: Config, run_dir: Path, callbacks: list[Callback], progress: bool) -> pl.Trainer:
    tc = cfg.trainer
    try:
        return _lightning_trainer(cfg, run_dir, callbacks, progress)
    except (MisconfigurationException, ValueError) as exc:  # e.g. an accelerator it lacks
        raise ConfigError(
            f"Lightning refused the trainer's settings ({exc}): trainer.accelerator="
            f"{tc.accelerator}, trainer.devices={tc.devices}, trainer.strategy={tc.strategy}; "
            "`uxbseg env` shows this machine's devices"
        ) from exc


def _lightning_trainer(
    cfg: Config, run_dir: Path, callbacks: list[Callback], progress: bool
) -> pl.Trainer:
    tc = cfg.trainer
    return pl.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy=tc.strategy,
        precision=_precision(cfg),
        benchmark=True,  # fixed-size grids: cuDNN autotuning pays on a GPU (BENCHMARKS.md)
        max_epochs=tc.max_epochs,
        # a time budget stops a run mid-epoch and validates there, but never before its first
        # step: a run leaves best weights however short the budget (unless the loss is not
        # finite), and a long epoch (the seed's config on a large survey) is not forced to end
        min_steps=1,
        min_epochs=0,  # Lightning would make min_steps imply one whole epoch
        max_time={"minutes": tc.max_time_minutes} if tc.max_time_minutes else None,
        gradient_clip_val=tc.gradient_clip_norm,
        gradient_clip_algorithm="norm",
        callbacks=callbacks,
        logger=[
            CSVLogger(run_dir, name="", version=""),
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
        ],
        log_every_n_steps=tc.log_every_n_steps,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=not cfg.sampler.enabled,
        default_root_dir=run_dir,
        plugins=[TensorsOnlyCheckpointIO()],
    )
