"""Seed-style reference implementations, written from SEED-FACTS.md, for side-by-side timing.

These reproduce how the original script worked (float64 (N, 3) arrays, np.vectorize label maps,
per-class fancy indexing); they are deliberately not optimised.
"""

from __future__ import annotations

import laspy
import numpy as np
import torch
from torch import nn

LABEL_MAP_3D = {2: 0, 27: 1, 6: 2}
INV_LABEL_MAP_3D = {v: k for k, v in LABEL_MAP_3D.items()}


def seed_point_index(las: laspy.LasData, grid=(32, 256, 256)) -> np.ndarray:
    """The point -> voxel part of the seed's las_to_volume: (N, 3) x/y/z bins via float64."""
    d, h, w = grid
    pts = np.vstack([las.x, las.y, las.z]).T
    mins, maxs = pts.min(axis=0), pts.max(axis=0)
    norm = (pts - mins) / (maxs - mins)
    return np.floor(norm * (np.array([w, h, d]) - 1)).astype(int)


def seed_las_to_volume(las: laspy.LasData, grid=(32, 256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """The seed's las_to_volume: min-max normalise x/y/z, write mapped codes into the volume."""
    idx = seed_point_index(las, grid)
    labels = np.vectorize(lambda c: LABEL_MAP_3D.get(int(c), 0))(np.asarray(las.classification))
    vol = np.zeros(grid, dtype=np.float32)
    for c in range(3):
        m = labels == c
        vol[idx[m, 2], idx[m, 1], idx[m, 0]] = c
    return vol, idx


def seed_write_prediction(las: laspy.LasData, pred: np.ndarray, idx: np.ndarray, out: str) -> None:
    """The seed's write-back: per-point voxel lookup, np.vectorize inverse map, laspy write."""
    point_cls = pred[idx[:, 2], idx[:, 1], idx[:, 0]]
    las.classification = np.vectorize(INV_LABEL_MAP_3D.get)(point_cls).astype(np.uint8)
    las.write(out)


class SeedFusion(nn.Module):
    """The seed's fusion: broadcast the (B, C) descriptor to (B, C, D, H, W), concat, conv."""

    def __init__(self, image_channels=256, voxel_channels=64, hidden=128, num_classes=3):
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv3d(image_channels + voxel_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(hidden, num_classes, 1),
        )

    def forward(self, image_feat: torch.Tensor, voxel_feat: torch.Tensor) -> torch.Tensor:
        _b, _, d, h, w = voxel_feat.shape
        desc = image_feat.mean(dim=(2, 3))[:, :, None, None, None].expand(-1, -1, d, h, w)
        return self.fuse(torch.cat([desc, voxel_feat], dim=1))
