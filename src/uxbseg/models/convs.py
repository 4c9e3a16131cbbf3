"""3D convolutions that take oneDNN on the CPU at batch 1.

PyTorch routes a float32 CPU convolution to oneDNN only when the batch is > 1 or
N*C*D*H > 20480 (``ConvParams::use_mkldnn``); every other one runs its unfolded ``slow_conv3d``
kernel. At batch 1, which is how ``predict`` and ``evaluate`` run a tile, most of the tiny
model's SwinUNETR convolutions miss that threshold (a 12-channel (16, 32, 32) level, and even
the 10-channel (32, 64, 64) input at exactly 20480), and the unfolded kernel takes 53 % of the
forward pass. Calling oneDNN's convolution directly gives the same numbers (max difference
3e-7) and a 2.4x faster tiny forward at batch 1 on 2 CPU cores (0.42 -> 0.18 s; ``predict``
about 2x faster end to end; BENCHMARKS, eleventh session). The gradient still goes through
``convolution_backward``, which picks its own kernel, so a batch-1 training step gains from the
forward alone (0.94 -> 0.79 s). Layers with hundreds of channels and a handful of voxels in the
default layout stay on the unfolded kernel, which is faster there. Measured on x86 (AVX2) only;
elsewhere (ARM) oneDNN is the kernel PyTorch itself takes for the same layer at batch 2.
"""

from __future__ import annotations

import torch
from torch import nn

from .swap import swap_class

__all__ = ["OneDNNConv3d", "onednn_conv3d"]


# In the default layout torch's unfolded kernel (one large matrix product) beat oneDNN from 768
# input channels at the few voxels such layers have: (1, 768, 1, 4, 4) 6.5 against 33 ms, while
# oneDNN won up to 384 channels (1.3x-2.6x) and in channels_last at every size measured
_DEFAULT_LAYOUT_MAX_CHANNELS = 512
# PyTorch's own threshold on N*C*D*H: above it PyTorch takes oneDNN itself, and its path is left
# as it is
_TORCH_ONEDNN_ABOVE = 20480


def _onednn_pays(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether to call oneDNN directly: a float32 CPU batch of one that PyTorch would send to
    its unfolded kernel, in channels_last or with fewer than 512 channels, outside autocast
    (whose casts only ``conv3d`` receives) and outside ``torch.compile`` (Inductor picks its
    own)."""
    return (
        not torch.compiler.is_compiling()  # first: Dynamo cannot trace the mkldnn queries
        and x.dim() == 5  # not an unbatched (C, D, H, W) input
        and x.shape[0] == 1
        and x.shape[1] * x.shape[2] * x.shape[3] <= _TORCH_ONEDNN_ABOVE
        and (
            x.shape[1] < _DEFAULT_LAYOUT_MAX_CHANNELS
            or x.is_contiguous(memory_format=torch.channels_last_3d)
        )
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose float32 CPU forward at batch 1 runs oneDNN's kernel where PyTorch
    would run its unfolded one (except a default-layout input with 512 channels or more); any
    other input goes through ``nn.Conv3d`` unchanged. Same parameters and state_dict keys."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and _onednn_pays(input, weight)
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def onednn_conv3d(module: nn.Module) -> int:
    """Swap every ``nn.Conv3d`` inside ``module`` for :class:`OneDNNConv3d` in place (same
    parameters); returns how many were swapped."""
    return swap_class(module, nn.Conv3d, OneDNNConv3d)
