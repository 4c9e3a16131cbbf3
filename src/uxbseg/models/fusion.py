"""Fusion of 2D image features with 3D voxel features, computed without the broadcast tensor.

The seed concatenates the image features, broadcast over the whole (D, H, W) grid, with the voxel
features and applies Conv3d(k=3, pad=1). An input that is constant along depth contributes, to a
3D convolution, a 2D convolution with the kernel summed over its depth taps - except in the first
and last depth slices, where some taps fall into the zero padding. ``_lift_planar`` computes that
exactly (borders included) with a few 2D convolutions, so the (B, C, D, H, W) broadcast is never
made. For ``global`` fusion the image map is also constant in (H, W): the kernel is contracted with
the descriptor first, leaving a one-channel convolution of a ones mask.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

__all__ = ["FusionHead", "FusionMode"]

FusionMode = Literal["global", "column", "voxel_only", "image_only"]
_MODES = ("global", "column", "voxel_only", "image_only")


def _lift_planar(x2d: torch.Tensor, weight: torch.Tensor, depth: int, groups: int = 1):
    """Conv3d (stride 1, 'same' zero padding) of ``x2d`` repeated over ``depth`` slices.

    Returns ``(interior, borders)``: interior (B, O, H, W) is the output of every slice whose
    kernel taps all fall inside the volume; borders maps a slice index to its own (B, O, H, W).
    """
    k = weight.shape[2]
    p = k // 2
    results: dict[tuple[int, int], torch.Tensor] = {}

    def taps(lo: int, hi: int) -> torch.Tensor:
        if (lo, hi) not in results:
            results[(lo, hi)] = F.conv2d(
                x2d, weight[:, :, lo:hi].sum(dim=2), padding=weight.shape[3] // 2, groups=groups
            )
        return results[(lo, hi)]

    borders = {}
    interior = None
    for d in range(depth):
        lo, hi = max(0, p - d), min(k, depth - d + p)
        if lo == 0 and hi == k:
            if interior is None:
                interior = taps(0, k)
        else:
            borders[d] = taps(lo, hi)
    return interior, borders


class _AddPlanarInPlace(torch.autograd.Function):
    """``out += interior`` on every depth slice, then each border slice's own term instead of the
    interior's, written into ``out`` (conv1's output or a fresh bias volume: nothing's backward
    needs it).

    Autograd's own in-place slice updates (``out[:, :, d] += ...``) copy the whole (B, O, D, H, W)
    gradient twice per border slice in the backward pass (``CopySlices``); here the gradient
    passes through unchanged and the planar terms' gradients are depth sums and slices of it.
    """

    @staticmethod
    def forward(ctx, out, depths, interior, *borders):
        out.add_(interior.unsqueeze(2))
        for d, b in zip(depths, borders, strict=True):
            out.select(2, d).add_(b - interior)
        ctx.mark_dirty(out)
        ctx.depths = depths
        return out

    @staticmethod
    def backward(ctx, grad):
        slices = [grad.select(2, d) for d in ctx.depths]
        g_interior = grad.sum(2)
        for g in slices:
            g_interior = g_interior - g
        return grad, None, g_interior, *slices


def _add_planar(out: torch.Tensor, interior, borders) -> torch.Tensor:
    """``out`` (a fresh tensor, overwritten) plus depth-constant terms (``_lift_planar``'s
    result)."""
    if interior is not None:
        depths = tuple(borders)
        return _AddPlanarInPlace.apply(out, depths, interior, *(borders[d] for d in depths))
    for d, b in borders.items():  # every slice is a border slice (depth <= kernel // 2 * 2)
        out.select(2, d).add_(b)
    return out


def _sum_planar(terms: list) -> tuple:
    """Sum of ``_lift_planar`` results for the same depth and kernel size (same border slices)."""
    interior, borders = terms[0]
    for other_interior, other_borders in terms[1:]:
        if interior is not None:
            interior = interior + other_interior
        borders = {k: v + other_borders[k] for k, v in borders.items()}
    return interior, borders


class FusionHead(nn.Module):
    """Conv3d(k3) -> ReLU -> Conv3d(k1) over [image features lifted to 3D, voxel features].

    Args:
        mode: ``global`` (seed: mean image descriptor everywhere), ``column`` (each image feature
            over its own voxel column), ``voxel_only`` or ``image_only`` (ablations).
        image_channels: channels of the image feature map, with the surface branch's appended when
            the model has one (ignored for ``voxel_only``).
        voxel_channels: channels of the voxel features (ignored for ``image_only``).
        hidden: width of the first conv (seed: 128).
        num_classes: output classes.
        materialise: build the broadcast tensor and concatenate, as the seed does (slow reference).
    """

    def __init__(
        self,
        mode: FusionMode = "global",
        image_channels: int = 256,
        voxel_channels: int = 64,
        hidden: int = 128,
        num_classes: int = 3,
        materialise: bool = False,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ConfigError(f"model.fusion must be one of {list(_MODES)}, got {mode!r}")
        self.mode = mode
        self.materialise = materialise
        self.image_channels = 0 if mode == "voxel_only" else image_channels
        self.voxel_channels = 0 if mode == "image_only" else voxel_channels
        self.conv1 = nn.Conv3d(self.image_channels + self.voxel_channels, hidden, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(hidden, num_classes, 1)

    def _image_map(self, image_feat: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.mode == "global":
            return image_feat.mean(dim=(2, 3), keepdim=True)
        if tuple(image_feat.shape[-2:]) == tuple(hw):  # already on the grid (surface branch)
            return image_feat
        return F.interpolate(image_feat, size=hw, mode="bilinear", align_corners=False)

    def forward(
        self,
        image_feat: torch.Tensor | None,
        voxel_feat: torch.Tensor | None,
        grid_shape: tuple[int, int, int],
        voxel_projection: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Class logits (B, K, D, H, W).

        ``voxel_projection``: (weight (M, C), bias (M)) of a 1x1x1 conv still to be applied to
        ``voxel_feat`` (C channels) to give the M voxel channels; the fast path folds it into
        ``conv1`` (see ``VoxelBranch.defer_output_conv``).
        """
        d, h, w = grid_shape
        if self.materialise:  # the model folds the projection only on the fast path
            return self.conv2(
                self.act(self.conv1(self._concat(image_feat, voxel_feat, grid_shape)))
            )
        w_img = self.conv1.weight[:, : self.image_channels]
        w_vox = self.conv1.weight[:, self.image_channels :]
        planar = []  # (interior, borders) of terms constant along depth
        if self.voxel_channels and voxel_projection is not None:
            # conv1(proj(x)) = a conv with the two kernels multiplied, plus proj's bias carried
            # through conv1's in-bounds taps: a depth-constant term, zero padding included
            pw, pb = voxel_projection
            merged = torch.einsum("omkjl,mc->ockjl", w_vox, pw)
            # conv1's own forward with other weights: its kernel choice (models/convs.py) holds
            out = self.conv1._conv_forward(voxel_feat, merged, self.conv1.bias)
            bias_kernel = torch.einsum("omkjl,m->okjl", w_vox, pb).unsqueeze(1)
            planar.append(_lift_planar(voxel_feat.new_ones(1, 1, h, w), bias_kernel, d))
        elif self.voxel_channels:
            out = self.conv1._conv_forward(voxel_feat, w_vox, self.conv1.bias)
        else:  # a fresh tensor, which the planar terms are added into in place
            b = image_feat.shape[0]
            out = self.conv1.bias.view(1, -1, 1, 1, 1).expand(b, -1, d, h, w).contiguous()
        if self.image_channels:
            imap = self._image_map(image_feat, (h, w))
            if self.mode == "global":
                b, o = imap.shape[0], w_img.shape[0]
                kern = torch.einsum("oikjl,bi->bokjl", w_img, imap.flatten(1))
                ones = imap.new_ones(1, b, h, w)
                interior, borders = _lift_planar(
                    ones, kern.reshape(b * o, 1, *kern.shape[2:]), d, groups=b
                )

                def unfold(t):
                    return t.view(b, o, h, w)

                interior = unfold(interior) if interior is not None else None
                borders = {k: unfold(v) for k, v in borders.items()}
                planar.append((interior, borders))
            else:
                planar.append(_lift_planar(imap, w_img, d))
        if planar:
            out = _add_planar(out, *_sum_planar(planar))
        if torch.compiler.is_compiling():  # Dynamo refuses an in-place op on the output of
            # _AddPlanarInPlace (a "view" of a Function's); Inductor fuses the ReLU anyway
            return self.conv2(torch.relu(out))
        return self.conv2(self.act(out))

    def _concat(self, image_feat, voxel_feat, grid_shape) -> torch.Tensor:
        """The seed's input: broadcast image map concatenated with voxel features."""
        d, h, w = grid_shape
        parts = []
        if self.image_channels:
            imap = self._image_map(image_feat, (h, w))
            parts.append(imap.unsqueeze(2).expand(-1, -1, d, h, w))
        if self.voxel_channels:
            parts.append(voxel_feat)
        return torch.cat(parts, dim=1)
