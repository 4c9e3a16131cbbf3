"""A bank of earlier training tiles' surface maps for the surface branch's loss."""

from __future__ import annotations

import torch

__all__ = ["SurfaceReplay"]


class SurfaceReplay:
    """The surface maps and masks of the last ``capacity`` training tiles, drawn at random.

    The surface branch is a small 2D U-Net: at batch 2 its gradient is noisy, and it learns the
    platforms' outlines from many distinct tiles per step (a 2D proxy, 600 steps: plazuela pixel
    IoU 0.51 at 2 tiles per step, 0.53 with 4 mirror views of them, 0.63 at 8 distinct tiles;
    docs/RESULTS.md). Its input is tiny (a few (H, W) maps per tile), so
    each step can also run it on maps kept from earlier steps: :meth:`draw` ``k`` of them, then
    :meth:`push` the current batch. Entries are detached copies on the batch's device; the bank
    is not checkpointed (a resumed run refills it in its first steps).

    Args:
        capacity: tiles kept (oldest dropped first); a training split's size keeps them all.
        seed: seed of the draws (give each DDP process its own).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._maps: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self._next = 0
        self._size = 0
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    def push(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        """Keep (B, C, H, W) ``maps`` and their (B, H, W) ``masks``, replacing the oldest."""
        if maps.shape[0] != masks.shape[0] or maps.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"maps {tuple(maps.shape)} do not match masks {tuple(masks.shape)}")
        if self._maps is None or self._maps.shape[1:] != maps.shape[1:]:
            self._maps = maps.new_empty((self.capacity, *maps.shape[1:]))
            self._masks = masks.new_empty((self.capacity, *masks.shape[1:]))
            self._next = self._size = 0
        for m, t in zip(maps.detach(), masks.detach(), strict=True):
            self._maps[self._next] = m
            self._masks[self._next] = t
            self._next = (self._next + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def draw(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``k`` kept tiles, distinct when the bank holds enough (fewer when it holds fewer)."""
        if self._maps is None or self._size == 0 or k < 1:
            return None
        idx = torch.randperm(self._size, generator=self._gen)[:k].to(self._maps.device)
        return self._maps[idx], self._masks[idx]
