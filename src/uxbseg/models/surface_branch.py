"""A small 2D U-Net over the grid's column maps: the ground-relief channels seen from above."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

__all__ = ["SurfaceBranch"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(4, cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(4, cout),
        nn.GELU(),
    )


class SurfaceBranch(nn.Module):
    """Features and class logits of each voxel column from its ground-relief maps.

    The ``surface_*`` voxel features are the same in every voxel of a column, so one depth slice
    of them is a set of 2D maps (local relief models at two radii and two contrasts). Platforms
    are faint rectangles in them; a 2D U-Net (three levels, ``width`` / 2x / 4x channels) learns
    their outlines far sooner than the 3D branch does, and the column fusion lays its features
    over each column next to the image's.

    Args:
        in_channels: number of ``surface_*`` channels.
        width: channels of the first level and of the returned features; a multiple of 4.
        num_classes: classes of the returned logits (trained against the 2D mask).
    """

    def __init__(self, in_channels: int, width: int = 24, num_classes: int = 3) -> None:
        super().__init__()
        if in_channels < 1:
            raise ConfigError(
                "model.surface_branch needs surface_* channels in grid.features "
                "(e.g. surface_relief, surface_relief_wide)"
            )
        if width < 4 or width % 4 != 0:
            raise ConfigError(
                f"model.surface_branch={width}: the width must be a multiple of 4 "
                "(GroupNorm of 4 groups), e.g. 16 or 24; 0 turns the branch off"
            )
        self.out_channels = width
        self.enc1 = _block(in_channels, width)
        self.enc2 = _block(width, 2 * width)
        self.enc3 = _block(2 * width, 4 * width)
        self.dec2 = _block(6 * width, 2 * width)
        self.dec1 = _block(3 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) maps, H and W multiples of 4 -> features (B, width, H, W), logits."""
        a = self.enc1(maps)
        b = self.enc2(F.max_pool2d(a, 2))
        c = self.enc3(F.max_pool2d(b, 2))
        b = self.dec2(torch.cat([b, F.interpolate(c, scale_factor=2.0)], dim=1))
        a = self.dec1(torch.cat([a, F.interpolate(b, scale_factor=2.0)], dim=1))
        return a, self.head(a)
