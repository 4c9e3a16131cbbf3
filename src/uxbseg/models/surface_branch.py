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
    are faint rectangles in them; a 2D U-Net (``levels`` levels of ``width``, 2x, 4x, ...
    channels, each level at half the resolution of the one above) learns their outlines far
    sooner than the 3D branch does, and the column fusion lays its features over each column
    next to the image's.

    Args:
        in_channels: number of ``surface_*`` channels.
        width: channels of the first level and of the returned features; a multiple of 4.
        num_classes: classes of the returned logits (trained against the 2D mask).
        levels: resolution levels (>= 2); the maps' sides must be multiples of
            ``2 ** (levels - 1)``. A fourth level (1/8 resolution, ~12 m cells on a 100 m
            tile of 64 columns) sees whole mound groups.
    """

    def __init__(
        self, in_channels: int, width: int = 24, num_classes: int = 3, levels: int = 3
    ) -> None:
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
        if levels < 2:
            raise ConfigError(f"model.surface_levels={levels}: the U-Net needs at least 2 levels")
        self.out_channels = width
        self.levels = levels
        # enc1..encN and dec1..dec(N-1): the names of the three-level branch's weights
        widths = [width * 2**i for i in range(levels)]
        for i, cout in enumerate(widths):
            self.add_module(f"enc{i + 1}", _block(widths[i - 1] if i else in_channels, cout))
        for i in range(levels - 1):
            self.add_module(f"dec{i + 1}", _block(widths[i] + widths[i + 1], widths[i]))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) maps, H and W multiples of 2**(levels-1) -> features (B, width, H, W),
        logits (B, num_classes, H, W)."""
        skips = [self.enc1(maps)]
        for i in range(2, self.levels + 1):
            skips.append(getattr(self, f"enc{i}")(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for i in range(self.levels - 1, 0, -1):
            up = F.interpolate(x, scale_factor=2.0)
            x = getattr(self, f"dec{i}")(torch.cat([skips.pop(), up], dim=1))
        return x, self.head(x)
