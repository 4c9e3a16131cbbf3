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

Single-threaded, PyTorch also runs every 1x1x1 stride-1 conv in its unfolded kernel, at any
batch and size ("faster single-threaded", which holds in the default layout). A channels_last
input pays for it: SwinUNETR's residual 1x1x1 convs ran 3.4-4x slower than oneDNN's (24 -> 12
channels at (32, 32, 64), batch 1 and 2; 192 -> 96 at (32, 64, 64): 519 against 129 ms, one
thread of this project's CPU VM) and returned the default layout into the channels_last network,
so such a conv in channels_last goes to oneDNN too.

SwinUNETR upsamples with 2x2x2 stride-2 transposed convs, and at batch 1 below the same threshold
PyTorch runs them in its unfolded ``slow_conv_transpose3d``, which returns the default layout:
the decoder's ``cat`` with the channels_last skip is then in the default layout too, and both
convs that read it copy it back (16 ms of the tiny model's ~240 ms forward at batch 1, 2 cores).
Each output voxel of such a conv (kernel = stride, no padding) takes exactly one input voxel,
so :class:`PatchConvTranspose3d` computes it as one matrix product, (N*D*H*W, C_in) by (C_in,
8*C_out), written straight into a channels_last output: 3.2 against 8.4 ms for the tiny
model's last one (12 -> 12 channels to (32, 64, 64)), same numbers.

On a GPU the layers with few input channels are the slow ones: SwinUNETR's first conv reads the
3 voxel features at full resolution, and cuDNN runs a 1 -> 96 3x3x3 conv at 9.5 TFLOP/s where a
96 -> 96 one runs at 441 (H200, SEED-FACTS): a reduction of 27 * C_in = 81 terms leaves the
tensor cores idle. :class:`UnfoldedConv3d` computes such a layer as one matrix product over the
unfolded input (the 27 shifted copies of the few input channels side by side, and zero columns
up to a multiple of 16), whose (N*D*H*W, C_out) result is the channels_last_3d output
itself; its weight gradient is the transposed product. Same function as the conv (float32: max
difference ~1e-6), for stride-1 "same" convs and for patchifying ones (stride = kernel, no
padding: Swin's patch embedding).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .swap import swap_class

_CL = torch.channels_last_3d

__all__ = [
    "OneDNNConv3d",
    "PatchConvTranspose3d",
    "UnfoldedConv3d",
    "onednn_conv3d",
    "patch_conv_transpose3d",
    "patch_conv_transposes",
    "unfold_small_convs",
    "unfolded_conv3d",
]


# In the default layout torch's unfolded kernel (one large matrix product) beat oneDNN from 768
# input channels at the few voxels such layers have: (1, 768, 1, 4, 4) 6.5 against 33 ms, while
# oneDNN won up to 384 channels (1.3x-2.6x) and in channels_last at every size measured
_DEFAULT_LAYOUT_MAX_CHANNELS = 512
# PyTorch's own threshold on N*C*D*H: above it PyTorch takes oneDNN itself, and its path is left
# as it is
_TORCH_ONEDNN_ABOVE = 20480


def _channels_last(x: torch.Tensor) -> bool:
    """channels_last_3d and not also the default layout."""
    return x.is_contiguous(memory_format=_CL) and not x.is_contiguous()


def _eager_cpu_float32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A batched (5-D) float32 CPU input and weight, outside ``torch.compile`` (Inductor picks
    its own kernels) and autocast (whose casts only torch's own conv receives)."""
    return (
        not torch.compiler.is_compiling()  # first: Dynamo cannot trace the queries below
        and x.dim() == 5  # not an unbatched (C, D, H, W) input
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _torch_unfolds_batch_one(x: torch.Tensor) -> bool:
    """A batch of one below PyTorch's own oneDNN threshold (N*C*D*H at most 20480): the
    inputs it sends to its unfolded kernels."""
    return x.shape[0] == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= _TORCH_ONEDNN_ABOVE


def _onednn_pays(x: torch.Tensor, weight: torch.Tensor, pointwise: bool) -> bool:
    """Whether to call oneDNN directly where PyTorch would send an eager float32 CPU conv to its
    unfolded kernel: a batch of one, in channels_last or with fewer than 512 channels; or,
    single-threaded, a 1x1x1 stride-1 conv (``pointwise``) of a channels_last input at any
    batch."""
    if not _eager_cpu_float32(x, weight):
        return False
    batch_one = _torch_unfolds_batch_one(x) and (
        x.shape[1] < _DEFAULT_LAYOUT_MAX_CHANNELS or x.is_contiguous(memory_format=_CL)
    )
    single_threaded = pointwise and torch.get_num_threads() == 1 and _channels_last(x)
    return (
        (batch_one or single_threaded)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose float32 CPU forward runs oneDNN's kernel where PyTorch would run its
    unfolded one: at batch 1 (except a default-layout input with 512 channels or more), and
    single-threaded for a 1x1x1 conv of a channels_last input; any other input goes through
    ``nn.Conv3d`` unchanged. Same parameters and state_dict keys."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        pointwise = (
            self.kernel_size == (1, 1, 1)
            and self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1)
            and self.padding == (0, 0, 0)
        )
        if (
            self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and _onednn_pays(input, weight, pointwise)
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def patch_conv_transpose3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride=kernel)`` (no padding, one group) as one
    matrix product: every input voxel becomes one kernel-sized block of output voxels. The
    output is channels_last_3d; for a channels_last input no operand is copied."""
    n, c, d, h, w = x.shape
    _, o, kd, kh, kw = weight.shape
    rows = x.permute(0, 2, 3, 4, 1).reshape(n * d * h * w, c)
    blocks = rows @ weight.permute(0, 2, 3, 4, 1).reshape(c, kd * kh * kw * o)
    out = torch.empty(
        (n, o, d * kd, h * kh, w * kw), dtype=blocks.dtype, device=x.device, memory_format=_CL
    )
    # output voxel (d*kd + i, h*kh + j, w*kw + m) is block (d, h, w)'s tap (i, j, m)
    out.permute(0, 2, 3, 4, 1).view(n, d, kd, h, kh, w, kw, o).copy_(
        blocks.view(n, d, h, w, kd, kh, kw, o).permute(0, 1, 4, 2, 5, 3, 6, 7)
    )
    return out if bias is None else out.add_(bias.view(1, o, 1, 1, 1))


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with kernel = stride (SwinUNETR's upsampling) whose float32 CPU
    forward at batch 1, for a channels_last input PyTorch would send to its unfolded kernel,
    is :func:`patch_conv_transpose3d` (a channels_last output); any other input, or another
    kind of transposed conv, goes through ``nn.ConvTranspose3d`` unchanged. Same parameters and
    state_dict keys."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (
            output_size is None
            and _eager_cpu_float32(input, self.weight)
            and _torch_unfolds_batch_one(input)
            and input.is_contiguous(memory_format=_CL)
            and self.stride == self.kernel_size
            and self.padding == (0, 0, 0)
            and self.output_padding == (0, 0, 0)
            and self.dilation == (1, 1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
        ):
            return patch_conv_transpose3d(input, self.weight, self.bias)
        return super().forward(input, output_size)


def patch_conv_transposes(module: nn.Module) -> int:
    """Swap every ``nn.ConvTranspose3d`` inside ``module`` for :class:`PatchConvTranspose3d` in
    place (same parameters); returns how many were swapped."""
    return swap_class(module, nn.ConvTranspose3d, PatchConvTranspose3d)


def onednn_conv3d(module: nn.Module) -> int:
    """Swap every ``nn.Conv3d`` inside ``module`` for :class:`OneDNNConv3d` in place (same
    parameters); returns how many were swapped."""
    return swap_class(module, nn.Conv3d, OneDNNConv3d)


# The unfolded input has K = C_in * kernel volume columns (padded to a multiple of 16): a layer with
# at most UNFOLD_MAX_CHANNELS input channels is unfolded when K is at most UNFOLD_MAX_COLUMNS, where
# a conv's reduction is too short for cuDNN to run well
UNFOLD_MAX_CHANNELS = 16
UNFOLD_MAX_COLUMNS = 128
_COLUMN_ALIGN = 16  # elements: K padded so that every row of the unfolded input is 32-byte aligned


def _unfoldable(conv: nn.Conv3d) -> bool:
    """A conv whose unfolded input has few columns: stride 1 with "same" zero padding (odd
    kernel) or a patchifying one (stride = kernel, no padding); no groups, no dilation."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if isinstance(p, str) or conv.groups != 1 or conv.dilation != (1, 1, 1):
        return False
    if conv.padding_mode != "zeros" or conv.in_channels > UNFOLD_MAX_CHANNELS:
        return False
    if conv.in_channels * math.prod(k) > UNFOLD_MAX_COLUMNS:
        return False
    same = s == (1, 1, 1) and all(ki % 2 == 1 and pi == ki // 2 for ki, pi in zip(k, p))
    patches = s == k and p == (0, 0, 0)
    return same or patches


def unfolded_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding)`` for a stride-1 "same" conv or a patchifying
    one (stride = kernel, no padding), as one matrix product over the unfolded input; the output
    is channels_last_3d. Under autocast the input is unfolded in the autocast dtype."""
    n, c = x.shape[:2]
    o, _, kd, kh, kw = weight.shape
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    xl = x.permute(0, 2, 3, 4, 1)  # (N, D, H, W, C): a view of a channels_last input
    if stride == (1, 1, 1):
        d, h, w = x.shape[2:]
        pd, ph, pw = padding
        xp = F.pad(xl, (0, 0, pw, pw, ph, ph, pd, pd))
        taps = [
            xp[:, i : i + d, j : j + h, m : m + w]
            for i in range(kd)
            for j in range(kh)
            for m in range(kw)
        ]
    else:  # non-overlapping patches
        d, h, w = x.shape[2] // kd, x.shape[3] // kh, x.shape[4] // kw
        xl = xl[:, : d * kd, : h * kh, : w * kw]
        taps = [xl[:, i::kd, j::kh, m::kw] for i in range(kd) for j in range(kh) for m in range(kw)]
    # tap-major columns, padded with zeros to a multiple of 16
    k = len(taps) * c
    extra = -k % _COLUMN_ALIGN
    if extra:
        taps.append(taps[0].new_zeros((*taps[0].shape[:-1], extra)))
    cols = torch.cat(taps, dim=-1).reshape(n * d * h * w, k + extra)
    wmat = F.pad(weight.permute(0, 2, 3, 4, 1).reshape(o, k), (0, extra))  # the same order
    out = cols @ wmat.t() if bias is None else torch.addmm(bias, cols, wmat.t())
    return out.view(n, d, h, w, o).permute(0, 4, 1, 2, 3)


class UnfoldedConv3d(OneDNNConv3d):
    """A conv with few input channels and columns (C_in <= 16, C_in * kernel volume <= 128)
    computed on a GPU as one matrix product over its unfolded input (:func:`unfolded_conv3d`);
    elsewhere the conv it replaced (``nn.Conv3d`` or :class:`OneDNNConv3d`, per ``onednn``).
    Same parameters and state_dict keys as ``nn.Conv3d``.

    ``devices``: the device types it unfolds on (tests widen it to the CPU).
    """

    devices: tuple[str, ...] = ("cuda",)
    onednn: bool = False  # set by unfold_small_convs: the CPU path of the class replaced

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if input.dim() == 5 and input.device.type in self.devices:
            return unfolded_conv3d(input, weight, bias, self.stride, self.padding)
        if self.onednn:
            return super()._conv_forward(input, weight, bias)
        return nn.Conv3d._conv_forward(self, input, weight, bias)


def unfold_small_convs(module: nn.Module) -> int:
    """Give every ``nn.Conv3d`` / :class:`OneDNNConv3d` inside ``module`` with few input columns
    (see :class:`UnfoldedConv3d`) that class in place; returns how many were swapped."""
    swapped = 0
    for child in module.modules():
        if type(child) in (nn.Conv3d, OneDNNConv3d) and _unfoldable(child):
            onednn = type(child) is OneDNNConv3d
            child.__class__ = UnfoldedConv3d
            child.onednn = onednn
            swapped += 1
    return swapped
