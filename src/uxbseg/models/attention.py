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

``model.sdpa_bias_grad: recompute`` (:class:`RecomputedBiasWindowAttention`) hands SDPA the mask
without its gradient, so a GPU may take its fastest kernels (on an H200, torch 2.11 and cuDNN
9.19, the compiled forward took cuDNN's flash attention with this mask; the memory-efficient
kernel, the one that returns the bias's gradient, took 111 of a compiled training step's 674 ms
at batch 8), and computes the bias's gradient itself, from the scores recomputed a chunk of
windows at a time (:func:`attention_bias_grad`). The same function; slower on the CPU, not yet
measured on a GPU.
"""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn
from torch.nn import functional as F

from .swap import swap_class

__all__ = [
    "RecomputedBiasWindowAttention",
    "SDPAWindowAttention",
    "aligned_rows",
    "attention_bias_grad",
    "sdpa_window_attention",
]

_ALIGN = 16  # elements: the row alignment CUDA's memory-efficient SDPA kernel asks of a mask
# elements of one chunk's (windows, heads, n, n) scores in attention_bias_grad: 0.5 GiB in float32
# eagerly; compiled, 4x that (Inductor fuses the float32 steps: a chunk's two matrix products are
# what it stores, 1 GiB each in bfloat16; fewer chunks, a smaller graph to compile)
_CHUNK_ELEMENTS = 2**27


def aligned_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the same values, its last dimension stored padded to a multiple of 16 elements
    (a view into a padded tensor; unit last stride), as CUDA's fused SDPA kernels take a mask."""
    n = t.shape[-1]
    return F.pad(t, (0, -n % _ALIGN))[..., :n]


class SDPAWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` computed with ``F.scaled_dot_product_attention`` whether or not
    gradients are recorded. Same parameters, buffers and state_dict keys."""

    recompute_bias_grad = False

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
        # the bias's gradient computed here, not by SDPA's kernel (which must then take a mask
        # that needs none); not with dropout, whose draws cannot be recomputed
        own_grad = self.recompute_bias_grad and attn_mask.requires_grad and drop == 0.0
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask.detach() if own_grad else attn_mask,
            dropout_p=drop,
            scale=self.scale,
        )  # (b, h, n, d) or (b / nw, nw * h, n, d)
        if own_grad:  # the mask's base: (1, heads, n, n) or (1, nw * heads, n, n)
            out = _BiasGradient.apply(out, q, k, v, attn_mask[:1], self.scale)
        # -> (b, n, h * d); a view where the kernel wrote (batch, token, head, d) memory
        out = out.unflatten(1, (-1, h)).transpose(2, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class RecomputedBiasWindowAttention(SDPAWindowAttention):
    """:class:`SDPAWindowAttention` whose SDPA call takes the mask without its gradient; the
    relative position bias's gradient comes from :func:`attention_bias_grad` instead."""

    recompute_bias_grad = True


def attention_bias_grad(
    grad: torch.Tensor,
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The gradient of ``softmax(q k^T * scale + mask) v`` with respect to ``mask``.

    ``q``, ``k``, ``v``, ``out`` and ``grad`` (the output's gradient) are (B, H, n, d); ``mask``
    is (1, H, n, n), broadcast over B. Softmax's backward, dS = P * (dP - rowsum(dO * O)) with
    dP = dO v^T, summed over B: the scores P are recomputed a chunk of B at a time (at most
    ``_CHUNK_ELEMENTS`` of them, 4x that under ``torch.compile``), products in the inputs'
    dtype, softmax and sums in float32 (as MONAI's module computes them; float64 inputs: in
    float64). Returns (1, H, n, n) in float32 (float64).
    """
    b, h, n, _ = q.shape
    if mask.shape != (1, h, n, n):
        raise ValueError(f"mask of shape (1, {h}, {n}, {n}) expected, got {tuple(mask.shape)}")
    acc = torch.promote_types(q.dtype, torch.float32)
    delta = (grad.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # rowsum(dO * O): (B, H, n, 1)
    budget = _CHUNK_ELEMENTS * (4 if torch.compiler.is_compiling() else 1)
    step = max(1, budget // (h * n * n))
    total = torch.zeros(h, n, n, dtype=acc, device=q.device)
    for i in range(0, b, step):
        j = min(i + step, b)
        scores = torch.matmul(q[i:j], k[i:j].transpose(-1, -2)).to(acc) * scale + mask[0]
        probs = scores.softmax(-1)
        dprobs = torch.matmul(grad[i:j], v[i:j].transpose(-1, -2)).to(acc)
        total = total + (probs * (dprobs - delta[i:j])).sum(0)
    return total.unsqueeze(0)


class _BiasGradient(torch.autograd.Function):
    """The identity on an attention's output whose backward also returns the gradient of the
    attention's additive mask (which SDPA was given without one)."""

    @staticmethod
    def forward(ctx, out, q, k, v, mask, scale):
        ctx.save_for_backward(out, q, k, v, mask)
        ctx.scale = scale
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        out, q, k, v, mask = ctx.saved_tensors
        dmask = attention_bias_grad(grad, out, q, k, v, mask, ctx.scale)
        return grad, None, None, None, dmask.to(mask.dtype), None


def sdpa_window_attention(module: nn.Module, *, recompute_bias_grad: bool = False) -> int:
    """Swap every MONAI ``WindowAttention`` inside ``module`` for :class:`SDPAWindowAttention` in
    place (a class swap: the subclass adds no state); returns how many were swapped.
    ``recompute_bias_grad``: :class:`RecomputedBiasWindowAttention` instead."""
    new = RecomputedBiasWindowAttention if recompute_bias_grad else SDPAWindowAttention
    return swap_class(module, WindowAttention, new)
