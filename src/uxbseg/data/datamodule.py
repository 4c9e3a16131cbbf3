"""Lightning data module: UXB pairs of the train/val splits, checked before the first epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..config import Config
from ..errors import BadDataError
from .cache import VoxelCache, default_cache_dir
from .dataset import UXBDataset
from .pairs import Pair, PairReport, check_pair, find_pairs
from .sampler import BalancedSampler
from .voxelize import GridSpec

__all__ = ["UXBDataModule", "checked_pairs", "checked_reports"]

log = logging.getLogger(__name__)


def checked_pairs(root: str | Path, split: str, cfg: Config, skip_bad: bool) -> list[Pair]:
    """Pairs of a split after the ``inspect`` checks: bad ones raise, or are skipped and named."""
    return [r.pair for r in checked_reports(root, split, cfg, skip_bad)]


def checked_reports(root: str | Path, split: str, cfg: Config, skip_bad: bool) -> list[PairReport]:
    """:func:`checked_pairs` with each pair's ``inspect`` report (point count, extent)."""
    pairs = find_pairs(root, split, cfg.data.image_glob, cfg.data.mask_glob)
    if not pairs:
        raise BadDataError(f"{Path(root) / split}: no pair_* folders; run `uxbseg inspect {root}`")
    reports = [check_pair(p) for p in pairs]
    bad = [r for r in reports if not r.ok]
    if bad and not skip_bad:
        lines = "\n".join(f"  {r.pair.pair_id}: {p}" for r in bad for p in r.problems)
        raise BadDataError(
            f"{len(bad)} pair(s) of {Path(root) / split} have problems:\n{lines}\n"
            "Fix them, or pass --skip-bad to train without them."
        )
    for r in bad:
        log.warning("skipping %s/%s: %s", split, r.pair.pair_id, "; ".join(map(str, r.problems)))
    good = [r for r in reports if r.ok]
    other_units = [r for r in good if r.units]
    if other_units:
        first = other_units[0]
        log.warning(
            "%d of the %d pairs of %s are not in metres; %s: %s",
            len(other_units),
            len(good),
            split,
            first.pair.las,
            first.units,
        )
    if not good:
        raise BadDataError(f"{Path(root) / split}: every pair has problems; nothing to train on")
    return good


class UXBDataModule(pl.LightningDataModule):
    """Train/validation loaders of a UXB dataset (validation = the seed's ``test`` split).

    Args:
        root: dataset folder.
        config: the run's configuration (data, grid, sampler sections are used).
        train_pairs, val_pairs: already checked pairs (see :func:`checked_pairs`).
    """

    def __init__(
        self, root: str | Path, config: Config, train_pairs: list[Pair], val_pairs: list[Pair]
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.cfg = config
        grid = GridSpec.from_config(config.grid)
        where = config.data.voxel_cache
        cache = None
        if where is not None:
            cache = VoxelCache(default_cache_dir() if where == "auto" else where, grid)
        self.train_ds = UXBDataset(
            train_pairs, grid, config.data.image_size, augment=config.data.augment, cache=cache
        )
        self.val_ds = UXBDataset(val_pairs, grid, config.data.image_size, cache=cache)
        self.sampler: BalancedSampler | None = None

    def _minority_flags(self) -> list[bool]:
        flags = []
        for i in range(len(self.train_ds)):
            labels = self.train_ds.labels3d(i)
            flags.append(bool(np.isin(labels, (1, 2)).any()))
        log.info(
            "balanced sampler: %d of %d training tiles hold plazuela/structure voxels",
            sum(flags),
            len(flags),
        )
        return flags

    def _loader(self, ds: UXBDataset, **kw) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            ds,
            batch_size=self.cfg.data.batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            **kw,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.cfg.sampler.enabled:
            return self._loader(self.train_ds, shuffle=True)
        if self.sampler is None:
            self.sampler = BalancedSampler(
                self._minority_flags(),
                self.cfg.sampler.minority_fraction,
                seed=self.cfg.trainer.seed,
            )
        return self._loader(self.train_ds, sampler=self.sampler)

    def val_dataloader(self) -> DataLoader:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # each rank scores its share; the confusion matrices are summed across ranks
            return self._loader(self.val_ds, sampler=DistributedSampler(self.val_ds, shuffle=False))
        return self._loader(self.val_ds, shuffle=False)
