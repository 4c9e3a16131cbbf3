"""CutMix over voxel columns: a rectangle of one training tile laid into another."""

from __future__ import annotations

import math

import torch

__all__ = ["column_cutmix"]

_GRID_KEYS = ("voxels", "labels3d", "mask2d")


def column_cutmix(batch: dict, generator: torch.Generator) -> dict:
    """Tile ``i`` of the batch takes a random rectangle of voxel columns from tile ``i + 1``.

    The rectangle (its area a uniform 0-50 % of the tile, CutMix's box drawn on the grid's
    (H, W)) replaces, in every tile at once, the voxels of those columns with their labels, the
    mask's cells and the image's pixels over the same footprint (image and grid share it, row 0
    = north), so every label still describes its own input. A batch of one is returned as is.
    Returns a new dict; the input tensors are not changed.
    """
    voxels = batch["voxels"]
    b, h, w = voxels.shape[0], *voxels.shape[-2:]
    if b < 2:
        return batch
    frac = 0.5 * float(torch.rand((), generator=generator))
    bh = max(1, round(h * math.sqrt(frac)))
    bw = max(1, round(w * math.sqrt(frac)))
    r0 = int(torch.randint(0, h - bh + 1, (), generator=generator))
    c0 = int(torch.randint(0, w - bw + 1, (), generator=generator))
    out = dict(batch)
    for key in _GRID_KEYS:
        if key in batch:
            out[key] = _paste(batch[key], r0, r0 + bh, c0, c0 + bw)
    if "image" in batch:
        s_h, s_w = batch["image"].shape[-2] / h, batch["image"].shape[-1] / w
        box = (round(r0 * s_h), round((r0 + bh) * s_h), round(c0 * s_w), round((c0 + bw) * s_w))
        out["image"] = _paste(batch["image"], *box)
    return out


def _paste(t: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    mixed = t.clone()
    mixed[..., r0:r1, c0:c1] = t.roll(-1, dims=0)[..., r0:r1, c0:c1]
    return mixed
