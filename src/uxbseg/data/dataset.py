"""The UXB dataset: one sample dict per pair (image, voxels, labels, mask)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..classes import IGNORE
from ..io.las import read_points
from ..io.raster import load_image, load_mask
from .cache import VoxelCache
from .pairs import Pair
from .voxelize import GridSpec, bin_points, tile_labels, voxelize

__all__ = ["SPATIAL_KEYS", "UXBDataset", "flip_rotate"]

SPATIAL_KEYS = ("image", "voxels", "labels3d", "mask2d")
"""The keys of a sample whose last two axes are the tile's (H, W)."""


def flip_rotate(sample: dict[str, Any], keys: Sequence[str] = SPATIAL_KEYS) -> dict[str, Any]:
    """One random draw (flip W or not, 0-3 quarter turns) applied to every one of ``keys``.

    Grids with H != W (the last key's last two axes) get only half turns, which keep their
    shape. The last two axes of every array are (H, W) = (north->south, west->east) of one
    footprint.
    """
    flip = bool(torch.randint(0, 2, ()).item())
    turns = int(torch.randint(0, 4, ()).item())
    h, w = sample[keys[-1]].shape[-2:]
    if h != w:  # a quarter turn would swap H and W of a non-square grid: half turns only
        turns = 2 * (turns % 2)
    out = dict(sample)
    for key in keys:
        t = sample[key]
        if flip:
            t = torch.flip(t, dims=(-1,))
        if turns:
            t = torch.rot90(t, turns, dims=(-2, -1))
        out[key] = t.contiguous()
    return out


class UXBDataset(Dataset):
    """Samples of UXB pairs, each a dict with fixed keys.

    Keys: ``image`` float32 (3, S, S) normalised; ``voxels`` float32 (C, D, H, W) from geometry
    only; ``labels3d`` int64 (D, H, W), IGNORE in empty voxels; ``mask2d`` int64 (H, W) at grid
    resolution (IGNORE everywhere when the pair has no mask); ``pair_id`` str; ``las_path`` str.

    Args:
        pairs: resolved pair folders (see :func:`~uxbseg.data.pairs.find_pairs`).
        grid: how point clouds become voxels.
        image_size: side of the square image given to SegFormer (seed: 512).
        augment: draw a random flip and quarter turn per sample and apply the same draw to the
            image, mask, voxels and labels (they share the north-up footprint).
        cache: voxel cache; tiles voxelised once are read back from it.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        grid: GridSpec,
        image_size: int = 512,
        augment: bool = False,
        cache: VoxelCache | None = None,
    ) -> None:
        missing = [p.pair_id for p in pairs if p.las is None or p.image is None]
        if missing:
            raise ValueError(f"pairs without image or point cloud: {missing}; run uxbseg inspect")
        self.pairs = list(pairs)
        self.grid = grid
        self.image_size = image_size
        self.augment = augment
        self.cache = cache

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        features, labels = self._voxels(pair)
        mask = self.mask2d(index)
        sample = {
            "image": torch.from_numpy(load_image(pair.image, self.image_size)),
            "voxels": torch.from_numpy(features),
            "labels3d": torch.from_numpy(labels.astype(np.int64)),
            "mask2d": torch.from_numpy(mask.astype(np.int64)),
            "pair_id": pair.pair_id,
            "las_path": str(pair.las),
        }
        return flip_rotate(sample) if self.augment else sample

    def mask2d(self, index: int) -> np.ndarray:
        """The (H, W) mask of one tile at the grid's resolution (IGNORE without a mask file)."""
        pair = self.pairs[index]
        _, h, w = self.grid.shape
        return load_mask(pair.mask, (h, w)) if pair.mask is not None else np.full((h, w), IGNORE)

    def features(self, index: int) -> np.ndarray:
        """Only the (C, D, H, W) voxel features of one tile (no image, no views)."""
        return self._voxels(self.pairs[index])[0]

    def _voxels(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None and (hit := self.cache.load(pair.las)) is not None:
            return hit
        vox = voxelize(read_points(pair.las), self.grid, with_labels=True)
        labels = vox.labels if vox.labels is not None else np.full(self.grid.shape, IGNORE)
        if self.cache is not None:
            self.cache.store(pair.las, vox.features, labels)
        return vox.features, labels

    def labels3d(self, index: int) -> np.ndarray:
        """Only the 3D labels of one tile (no image, no features): cheap, for the sampler."""
        if self.cache is not None and (hit := self.cache.load(self.pairs[index].las)) is not None:
            return hit[1].ravel()
        points = read_points(self.pairs[index].las)
        flat, _ = bin_points(points, self.grid, with_height=False)
        return tile_labels(points.classification, flat, self.grid).ravel()
