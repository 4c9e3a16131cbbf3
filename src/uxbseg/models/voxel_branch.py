"""MONAI SwinUNETR voxel branch with argument checks that name the bad value."""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from ..errors import ConfigError
from .attention import sdpa_window_attention

__all__ = ["VoxelBranch", "check_grid"]


def check_grid(shape: tuple[int, int, int]) -> None:
    """SwinUNETR needs sides divisible by 32 and a 1/32 bottleneck larger than one voxel."""
    bad = [s for s in shape if s % 32 != 0 or s < 32]
    if bad:
        fixed = tuple(max(32, -(-s // 32) * 32) for s in shape)
        raise ConfigError(
            f"grid.shape {tuple(shape)}: every side must be a multiple of 32 for SwinUNETR; "
            f"try {fixed}"
        )
    if all(s == 32 for s in shape):
        raise ConfigError(
            f"grid.shape {tuple(shape)}: the 1/32 bottleneck would be a single voxel "
            "(InstanceNorm fails); the smallest grid that runs is (32, 32, 64)"
        )


class _DeferredOut(nn.Module):
    """Stands in for SwinUNETR's 1x1x1 output conv, which the fusion applies instead (folded into
    its own first conv); keeps the conv as ``conv`` so the state_dict keys do not change."""

    def __init__(self, out: nn.Module) -> None:
        super().__init__()
        self.conv = out.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class VoxelBranch(nn.Module):
    """SwinUNETR (MONAI) from the voxel features (B, C, D, H, W) to ``out_channels`` features.

    Args:
        in_channels: voxel feature channels.
        out_channels: feature channels handed to the fusion (seed: 64).
        feature_size: SwinUNETR width (seed: 96); must be divisible by 12.
        grid_shape: (D, H, W), checked against SwinUNETR's constraints.
        use_checkpoint: gradient checkpointing in the Swin blocks (less memory, more compute).
        use_flash_attention: window attention through torch's SDPA, in training as well as in
            inference (MONAI's own flag covers inference only); pays on a GPU, not on the CPU.
        sdpa_inference: window attention through SDPA when no gradient is recorded (MONAI's
            ``use_flash_attention``); the same function, 1.3-3.5x faster than the scores
            materialised on the CPU. Off only for the seed as written.
        recompute_bias_grad: with ``use_flash_attention``, SDPA takes the relative position
            bias without its gradient, which is recomputed from the scores instead
            (``model.sdpa_bias_grad: recompute``; models/attention.py).
        window_size: side of the Swin attention window (seed: 7).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 64,
        feature_size: int = 96,
        grid_shape: tuple[int, int, int] = (32, 256, 256),
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
        sdpa_inference: bool = True,
        recompute_bias_grad: bool = False,
        window_size: int = 7,
    ) -> None:
        super().__init__()
        if feature_size < 12 or feature_size % 12 != 0:
            raise ConfigError(
                f"model.feature_size={feature_size}: SwinUNETR needs a multiple of 12 "
                "(e.g. 12, 24, 48, 96)"
            )
        check_grid(grid_shape)
        if window_size < 1:
            raise ConfigError(f"model.window_size must be >= 1, got {window_size}")
        self.out_channels = out_channels
        self.net = SwinUNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            spatial_dims=3,
            use_checkpoint=use_checkpoint,
            use_flash_attention=use_flash_attention or sdpa_inference,
            window_size=window_size,
        )
        if use_flash_attention:
            sdpa_window_attention(self.net, recompute_bias_grad=recompute_bias_grad)

    def defer_output_conv(self) -> None:
        """Return the decoder's ``feature_size`` channels from now on and leave the output conv
        (``output_projection``) to the caller; weights and state_dict keys are unchanged."""
        if not isinstance(self.net.out, _DeferredOut):
            self.net.out = _DeferredOut(self.net.out)

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight (out, feature_size), bias (out)) of the deferred output conv, else None."""
        if not isinstance(self.net.out, _DeferredOut):
            return None
        conv = self.net.out.conv.conv
        return conv.weight.flatten(1), conv.bias

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.net(voxels)
