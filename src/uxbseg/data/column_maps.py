"""The surface branch's column maps of a set of tiles, held in memory, as a dataset."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from .dataset import flip_rotate

__all__ = ["ColumnMaps"]


class ColumnMaps(Dataset):
    """One item per tile: ``{"maps": (C, H, W) float, "mask2d": (H, W) int64}``.

    The maps are what the surface branch reads (one depth slice of the ``surface_*`` voxel
    features); a few (H, W) maps per tile, so a whole training split fits in memory and a
    step can draw many tiles.

    Args:
        maps: (N, C, H, W) float maps.
        masks: (N, H, W) int64 targets at the same resolution (IGNORE where unknown).
        augment: give each item in a random flip / quarter-turn view (the training views).
    """

    def __init__(self, maps: torch.Tensor, masks: torch.Tensor, augment: bool = True) -> None:
        if maps.ndim != 4 or masks.ndim != 3:
            raise ValueError(
                f"maps must be (N, C, H, W) and masks (N, H, W), got {tuple(maps.shape)} and "
                f"{tuple(masks.shape)}"
            )
        if maps.shape[0] != masks.shape[0] or maps.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"maps {tuple(maps.shape)} do not match masks {tuple(masks.shape)}")
        if maps.shape[0] == 0:
            raise ValueError("no tiles: the training split is empty")
        self.maps = maps
        self.masks = masks
        self.augment = augment

    def __len__(self) -> int:
        return self.maps.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"maps": self.maps[index], "mask2d": self.masks[index]}
        return flip_rotate(item, ("maps", "mask2d")) if self.augment else item
