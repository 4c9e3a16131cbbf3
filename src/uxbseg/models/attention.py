"""SwinUNETR's window attention through torch's fused attention in training too.

MONAI's ``WindowAttention`` takes ``scaled_dot_product_attention`` only when no gradient is
recorded; a training step materialises every window's (n x n) scores, adds the relative position
bias and the shift mask, and runs a float32 softmax over them, forward and backward. At the seed's
grid that is (1083 windows x 3 heads x 343 x 343) scores a sample in the first stage: 15 ms of a
compiled 118 ms step on an H200 (BENCHMARKS). The same sum of bias and mask, given to SDPA as an
additive ``attn_mask``, lets a GPU choose its memory-efficient kernel, which also returns the
gradient of the bias (the relative position table learns as before). On the CPU SDPA's kernel is
slower than MONAI's path, so this is for a GPU.

The mask is never made per window of the batch. Unshifted blocks broadcast the (heads, n, n) bias
over the windows (a stride-0 view). Shifted blocks give SDPA the windows of a sample as heads:
(batch, windows x heads, n, d), with a (1, windows x heads, n, n) mask broadcast over the batch,
so the mask is the same size whatever the batch (at the seed's grid and batch 4 a per-window mask
would be 3 GB a block). The mask's rows are stored padded to a multiple of 16 elements: the
memory-efficient kernel needs aligned rows, and SDPA would otherwise pad a copy at every call.
"""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn
from torch.nn import functional as F

from .swap import swap_class

__all__ = ["SDPAWindowAttention", "aligned_rows", "sdpa_window_attention"]

_ALIGN = 16  # elements: the row alignment CUDA's memory-efficient SDPA kernel asks of a mask


def aligned_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the same values, its last dimension stored padded to a multiple of 16 elements
    (a view into a padded tensor; unit last stride), as CUDA's fused SDPA kernels take a mask."""
    n = t.shape[-1]
    return F.pad(t, (0, -n % _ALIGN))[..., :n]


class SDPAWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` computed with ``F.scaled_dot_product_attention`` whether or not
    gradients are recorded. Same parameters, buffers and state_dict keys."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x)
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, h).permute(2, 0, 1)
        dtype = qkv.dtype  # the compute dtype (bfloat16 under autocast)
        drop = self.attn_drop.p if self.training else 0.0
        if mask is None:  # one (h, n, n) bias for every window: broadcast, not copied
            q, k, v = qkv.reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
            attn_mask = aligned_rows(bias.to(dtype)).unsqueeze(0).expand(b, h, n, n)
        else:  # the windows of a sample as heads; the shift mask then broadcasts over the batch
            nw = mask.shape[0]
            qkv = qkv.reshape(b // nw, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)
            q, k, v = (t.reshape(b // nw, nw * h, n, c // h) for t in qkv.unbind(0))
            per_window = (bias.unsqueeze(0) + mask.unsqueeze(1)).to(dtype)  # (nw, h, n, n)
            attn_mask = aligned_rows(per_window.reshape(1, nw * h, n, n))
            attn_mask = attn_mask.expand(b // nw, nw * h, n, n)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=drop, scale=self.scale
        )  # (b, h, n, d) or (b / nw, nw * h, n, d)
        # -> (b, n, h * d); a view where the kernel wrote (batch, token, head, d) memory
        out = out.unflatten(1, (-1, h)).transpose(2, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def sdpa_window_attention(module: nn.Module) -> int:
    """Swap every MONAI ``WindowAttention`` inside ``module`` for :class:`SDPAWindowAttention` in
    place (a class swap: the subclass adds no state); returns how many were swapped."""
    return swap_class(module, WindowAttention, SDPAWindowAttention)
