"""The seed's minority-balanced sampler, deterministic by seed and shared out across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["BalancedSampler"]


class BalancedSampler(Sampler[int]):
    """Draw ``num_samples`` tiles with replacement, ``minority_fraction`` of them minority tiles.

    A tile is "minority" when it holds any voxel of plazuela or structure. Each draw is a minority
    tile with probability ``minority_fraction`` (uniform inside each group); if either group is
    empty the draw is uniform, as in the seed. Every epoch makes one global draw from
    ``(seed, epoch)``; under DDP rank r takes positions r, r + R, ... of it (padded by wrapping so
    every rank gets the same count), so the shares are disjoint and together cover the draw.

    Args:
        minority: one flag per tile of the dataset.
        minority_fraction: share of minority draws (seed: 0.7).
        num_samples: draws per epoch (seed: len(dataset)).
        seed: base of the random stream.
        num_replicas, rank: DDP layout; read from torch.distributed when None.
    """

    def __init__(
        self,
        minority: Sequence[bool],
        minority_fraction: float = 0.7,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not 0.0 <= minority_fraction <= 1.0:
            raise ValueError(f"minority_fraction must be in [0, 1], got {minority_fraction}")
        self.minority = np.asarray(minority, dtype=bool)
        if len(self.minority) == 0:
            raise ValueError("BalancedSampler needs at least one tile")
        self.minority_fraction = minority_fraction
        self.num_samples = num_samples if num_samples is not None else len(self.minority)
        self.seed = seed
        self._replicas = num_replicas
        self._rank = rank
        self.epoch = 0

    @property
    def num_replicas(self) -> int:
        if self._replicas is not None:
            return self._replicas
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch: a new draw per epoch."""
        self.epoch = epoch

    def probabilities(self) -> np.ndarray:
        """Per-tile draw probability."""
        n = len(self.minority)
        n_min = int(self.minority.sum())
        if n_min == 0 or n_min == n:
            return np.full(n, 1.0 / n)
        return np.where(
            self.minority,
            self.minority_fraction / n_min,
            (1.0 - self.minority_fraction) / (n - n_min),
        )

    def global_draw(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's draw (same on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        return rng.choice(
            len(self.minority), size=self.num_samples, replace=True, p=self.probabilities()
        )

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        draw = self.global_draw()
        r = self.num_replicas
        total = len(self) * r
        if total > len(draw):
            draw = np.concatenate([draw, draw[: total - len(draw)]])
        return iter(draw[self.rank : total : r].tolist())
