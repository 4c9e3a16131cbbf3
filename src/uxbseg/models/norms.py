"""Instance normalisation that keeps the channels_last_3d layout.

``torch.nn.functional.instance_norm`` views its input as (1, B*C, D, H, W), which a channels_last
tensor can only give as a copy, and returns a contiguous tensor, so in a channels_last network every
conv -> norm -> conv pays two layout copies forward and two more backward (17 % of the tiny CPU
training step, BENCHMARKS). Here the statistics are sums over the (B, D*H*W, C) view of the same
memory and the output is written in channels_last directly. The variance is taken about the mean
(two passes), as ``instance_norm`` does, not as E[x^2] - E[x]^2. A bfloat16 or float16 input
(a conv's output under autocast) is normalised in float32 and written back in its own dtype, as
cuDNN's batch norm does.

That row-sum kernel pays where channels are few (the tiny model's 12 and 24). With many channels,
and on a GPU, each sample goes through torch's own ``batch_norm`` instead: a batch of one sample in
training mode *is* an instance norm (biased variance, no running statistics), and ``batch_norm`` has
native channels_last kernels that keep the layout. CPU, 2 cores, forward + backward, float32:
C = 96 at 32x64x64 111.8 -> 47.3 ms, C = 48 at 16x32x32 1.7 -> 0.7 ms, but C = 12 at 32x64x64
6.9 -> 11.5 ms (BENCHMARKS, tenth session).

An input in any other layout (a 1x1x1 conv that PyTorch runs in its unfolded kernel returns the
default layout: single-threaded, for example) is normalised as a group norm with one group per
channel, the same function: torch's own ``instance_norm`` returns a wrong input gradient at batch 1
when the gradient reaching it is channels_last (torch 2.13 CPU, 2D and 3D; off by more than the
gradient itself), which is what a channels_last network hands back to such a norm.

Under ``torch.compile`` neither kernel is traced: the norm is written as ``var_mean`` and one
elementwise expression, which Inductor turns into a reduction and a pointwise kernel fused with
the activation and residual around it, in the input's layout (a per-sample split and ``cat``,
or a reshape to (1, B*C, ...), would only give it copies to make).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .swap import swap_class

__all__ = ["ChannelsLastInstanceNorm3d", "channels_last_instance_norms"]

_CL = torch.channels_last_3d


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) channels_last -> the (B, D*H*W, C) view of the same memory."""
    b, c = t.shape[:2]
    return t.permute(0, 2, 3, 4, 1).reshape(b, -1, c)


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float32 at least."""
    return torch.promote_types(dtype, torch.float32)


def _channel_sums(t3: torch.Tensor) -> torch.Tensor:
    """Sum over rows of (B, N, C) -> (B, 1, C) in float32 or wider; rows taken four at a time (a
    4C-wide inner loop vectorises where a 12-wide one does not: 4x faster for C = 12)."""
    b, n, c = t3.shape
    g = 4 if n % 4 == 0 else 1
    sums = t3.reshape(b, n // g, g * c).sum(1, dtype=_acc(t3.dtype))
    return sums.view(b, g, c).sum(1, keepdim=True)


class _InstanceNormCL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        b, c = x.shape[:2]
        x3 = _rows(x).to(_acc(x.dtype))  # a float32 copy only for a low-precision input
        n = x3.shape[1]
        mean = _channel_sums(x3) / n
        centred = x3 - mean  # (B, N, C) contiguous = channels_last memory of a (B, C, D, H, W)
        rstd = (_channel_sums(centred.square()) / n + eps).rsqrt()
        scale = rstd if weight is None else rstd * weight.view(1, 1, c)
        y = torch.empty_like(x, memory_format=_CL)
        y3 = y.permute(0, 2, 3, 4, 1).view(b, n, c)
        if bias is None:
            torch.mul(centred, scale, out=y3)
        else:
            torch.addcmul(bias.view(1, 1, c), centred, scale, out=y3)
        ctx.save_for_backward(centred.to(x.dtype), rstd, weight)
        ctx.has_bias = bias is not None
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        centred, rstd, weight = ctx.saved_tensors
        b, c = ctx.shape[:2]
        n = centred.shape[1]
        g3 = _rows(grad.contiguous(memory_format=_CL))
        sum_g = _channel_sums(g3)
        sum_gxhat = _channel_sums(g3 * centred) * rstd  # sum of grad * normalised input
        grad_w = sum_gxhat.sum((0, 1)) if weight is not None else None
        grad_b = sum_g.sum((0, 1)) if ctx.has_bias else None
        a = rstd if weight is None else rstd * weight.view(1, 1, c)
        # dx = a * (g - mean(g) - xhat * mean(g * xhat)), xhat = centred * rstd
        gx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=_CL)
        gx3 = gx.permute(0, 2, 3, 4, 1).view(b, n, c)
        torch.addcmul(-a * sum_g / n, g3, a, out=gx3)
        gx3.addcmul_(centred, a * rstd * sum_gxhat / n, value=-1.0)
        return gx, grad_w, grad_b, None


def _traced_instance_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Instance norm as a reduction and elementwise ops (for ``torch.compile``): statistics in
    float32 at least, the output in the input's dtype and layout."""
    xf = x.to(_acc(x.dtype))
    var, mean = torch.var_mean(xf, dim=(2, 3, 4), keepdim=True, correction=0)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.view(1, -1, 1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1, 1)
    return y.to(x.dtype)


def _per_sample_batch_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Instance norm as ``batch_norm`` of each sample alone; a channels_last input stays so."""
    samples = [F.batch_norm(s, None, None, weight, bias, True, 0.0, eps) for s in x.split(1)]
    return samples[0] if len(samples) == 1 else torch.cat(samples)


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no running statistics) that returns channels_last_3d for a
    channels_last_3d input; any other batched input is normalised by ``group_norm`` with one
    group per channel (the same function, with a right gradient in every layout).

    A channels_last input with at least ``native_min_channels`` channels, or on a GPU, is
    normalised by ``batch_norm`` one sample at a time; fewer channels on the CPU take the row-sum
    kernel above; under ``torch.compile``, ``var_mean`` and elementwise ops. Same parameters and
    state_dict keys as ``nn.InstanceNorm3d``.
    """

    native_min_channels: int = 48  # CPU crossover measured on 2 cores (module docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_running_stats or x.dim() != 5 or x.shape[1] != self.num_features:
            return super().forward(x)  # its own checks and messages
        if x.is_contiguous() or not x.is_contiguous(memory_format=_CL):
            # not instance_norm: its input gradient at batch 1 is wrong when the incoming
            # gradient is channels_last (module docstring)
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        if torch.compiler.is_compiling():
            return _traced_instance_norm(x, self.weight, self.bias, self.eps)
        if x.is_cuda or x.shape[1] >= self.native_min_channels:
            return _per_sample_batch_norm(x, self.weight, self.bias, self.eps)
        return _InstanceNormCL.apply(x, self.weight, self.bias, self.eps)


def channels_last_instance_norms(module: nn.Module) -> int:
    """Swap every ``nn.InstanceNorm3d`` inside ``module`` for :class:`ChannelsLastInstanceNorm3d`
    in place (same parameters); returns how many were swapped."""
    return swap_class(module, nn.InstanceNorm3d, ChannelsLastInstanceNorm3d)
