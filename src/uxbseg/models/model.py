"""The fusion model: image branch + voxel branch + fusion head."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from ..classes import NUM_CLASSES
from ..config import Config, ModelConfig
from ..errors import ConfigError
from ..runtime import persistent_compile_cache
from .attention import sdpa_window_attention
from .convs import onednn_conv3d, patch_conv_transposes, unfold_small_convs
from .fusion import FusionHead, FusionMode
from .image_branch import ImageBranch
from .norms import channels_last_instance_norms
from .surface_branch import SurfaceBranch
from .voxel_branch import VoxelBranch

logger = logging.getLogger(__name__)

__all__ = ["UXBFusionModel"]


def _fold_pays(model: ModelConfig) -> bool:
    """Whether folding SwinUNETR's 1x1x1 output conv (feature_size -> voxel_out_channels) into
    the fusion's 3x3x3 conv1 saves work: C*O*27 against M*C + M*O*27 multiply-adds a voxel (C
    feature_size, M voxel_out_channels, O fusion_hidden). Tiny config: 5184 against 7104 (and a
    full-resolution tensor less); the seed's (96, 64, 128): no. Same function either way."""
    c, m, o = model.feature_size, model.voxel_out_channels, model.fusion_hidden
    return model.fusion_impl == "fast" and c * o * 27 < m * c + m * o * 27


class UXBFusionModel(nn.Module):
    """SegFormer-B0 (2D) + SwinUNETR (3D) fused in 3D.

    ``forward(image, voxels)`` returns ``{"logits2d": (B, K, H, W) or None,
    "logits3d": (B, K, D, H, W), "logits_surface": (B, K, H, W) or None}``; the 2D logits are
    upsampled (bilinear) to the grid's (H, W).

    ``surface_channels``: indices of the voxel feature channels that are constant along depth
    (``surface_*``); with ``model.surface_branch`` > 0 a 2D U-Net reads them (one depth slice)
    and its features join the image's over each voxel column (``column`` and ``image_only``
    fusion).
    """

    def __init__(
        self,
        grid_shape: tuple[int, int, int],
        in_channels: int,
        model: ModelConfig,
        num_classes: int = NUM_CLASSES,
        surface_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.grid_shape = tuple(grid_shape)
        self.fusion_mode: FusionMode = model.fusion
        self.image_branch = None
        self.voxel_branch = None
        self.surface_branch = None
        self.surface_channels = list(surface_channels)
        if model.surface_branch:
            if model.fusion not in ("column", "image_only"):
                raise ConfigError(
                    f"model.surface_branch={model.surface_branch} lays its features over the "
                    f"voxel columns: it needs model.fusion column or image_only, not "
                    f"{model.fusion!r} (or set model.surface_branch=0)"
                )
            step = 2 ** (model.surface_levels - 1)
            if any(side % step for side in self.grid_shape[1:]):
                raise ConfigError(
                    f"model.surface_levels={model.surface_levels} halves the column maps "
                    f"{model.surface_levels - 1} times: grid.shape {self.grid_shape} needs H and "
                    f"W divisible by {step} (fewer levels or another grid)"
                )
            self.surface_branch = SurfaceBranch(
                len(self.surface_channels),
                model.surface_branch,
                num_classes,
                model.surface_levels,
            )
        if model.fusion != "voxel_only":
            self.image_branch = ImageBranch(
                num_classes=num_classes,
                head=model.image_head,
                hidden_sizes=model.segformer_hidden_sizes,
                depths=model.segformer_depths,
                num_heads=model.segformer_heads,
                sr_ratios=model.segformer_sr_ratios,
                decoder_size=model.segformer_decoder_size,
                pretrained=model.pretrained_2d,
            )
        if model.fusion != "image_only":
            self.voxel_branch = VoxelBranch(
                in_channels=in_channels,
                out_channels=model.voxel_out_channels,
                feature_size=model.feature_size,
                grid_shape=self.grid_shape,
                use_checkpoint=model.use_checkpoint,
                use_flash_attention=model.use_flash_attention is True,  # auto: fit_device
                sdpa_inference=model.sdpa_inference,
                recompute_bias_grad=model.sdpa_bias_grad == "recompute",
                window_size=model.window_size,
            )
        self.fusion = FusionHead(
            mode=model.fusion,
            image_channels=(self.image_branch.out_channels if self.image_branch else 0)
            + (self.surface_branch.out_channels if self.surface_branch else 0),
            voxel_channels=model.voxel_out_channels,
            hidden=model.fusion_hidden,
            num_classes=num_classes,
            materialise=model.fusion_impl == "naive",
        )
        if self.voxel_branch is not None and _fold_pays(model):
            self.voxel_branch.defer_output_conv()  # the fusion's conv1 applies it
        if model.onednn_batch1:  # the slow unfolded kernel is PyTorch's choice at batch 1
            for branch in (self.voxel_branch, self.fusion):
                if branch is not None:
                    onednn_conv3d(branch)
                    patch_conv_transposes(branch)  # the same for the transposed convs
        if model.unfold_convs:  # on a GPU: the first layer as one matrix product
            for branch in (self.voxel_branch, self.fusion):
                if branch is not None:
                    unfold_small_convs(branch)
        self.flash_attention = model.use_flash_attention
        self.recompute_bias_grad = model.sdpa_bias_grad == "recompute"
        self.channels_last = model.channels_last
        if self.channels_last:  # weights in the same layout as the activations
            for branch in (self.voxel_branch, self.fusion):
                if branch is not None:
                    branch.to(memory_format=torch.channels_last_3d)
                    channels_last_instance_norms(branch)  # no layout copies around the norms
            # the 2D branches' convs in NHWC too; SegFormer's flatten(2).transpose(1, 2) of an
            # NHWC map is then a view, not a copy
            for branch in (self.image_branch, self.surface_branch):
                if branch is not None:
                    branch.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg: Config) -> UXBFusionModel:
        """The model a configuration describes."""
        surface = tuple(i for i, f in enumerate(cfg.grid.features) if f.startswith("surface_"))
        return cls(
            tuple(cfg.grid.shape), len(cfg.grid.features), cfg.model, surface_channels=surface
        )

    def fit_device(self, device: torch.device) -> None:
        """Ready the model for training on ``device``: with ``model.use_flash_attention: auto``,
        SwinUNETR's window attention through SDPA in training as well on a GPU (a class swap:
        weights and state_dict keys unchanged; on the CPU it stays MONAI's, faster there)."""
        if self.flash_attention == "auto" and device.type == "cuda" and self.voxel_branch:
            sdpa_window_attention(
                self.voxel_branch.net, recompute_bias_grad=self.recompute_bias_grad
            )

    def compile_branches(self, mode: str | None = None, *, whole: bool = False) -> None:
        """``torch.compile`` each branch in place (weights and state_dict keys are unchanged),
        in torch's ``mode`` (None: its default; the benchmarks try others).

        ``whole=True`` compiles the model's own forward instead, as one function: what CUDA
        graphs (``mode="reduce-overhead"``) need without gradients, where every call of a
        compiled function starts a new generation of CUDA graph trees and frees the outputs of
        the one before (a branch's features, still to be fused, among them).

        The first step then takes minutes; Inductor keeps its artefacts in
        ``TORCHINDUCTOR_CACHE_DIR``, which this sets to ``~/.cache/uxbseg/inductor`` unless it
        is set (torch's default lies under /tmp, often cleared), so later runs start faster.
        """
        cache = persistent_compile_cache()
        logger.info(
            "torch.compile: the first training step and the first evaluation compile for minutes "
            "(seed model on an H200: ~250 s + ~80 s; tiny model on 2 CPU cores: ~500 s + "
            "~250 s); the "
            "Inductor cache (%s) makes later runs start in seconds to a minute "
            "(model.compile=false turns compiling off)",
            cache,
        )
        if self.channels_last:
            # every graph in channels-last, as the weights and activations are: Inductor's
            # heuristic kept the evaluation graph in the default layout on an H200 (twentieth
            # session: cuDNN's NCDHW <-> NDHWC transposes took 19 % of the compiled forward's
            # device time at batch 16, none in the training graph's); on the CPU (oneDNN) it
            # always takes channels-last anyway
            import torch._inductor.config as inductor

            inductor.force_layout_optimization = True
        if whole:
            self.compile(mode=mode)
            return
        for branch in (self.image_branch, self.voxel_branch, self.surface_branch, self.fusion):
            if branch is not None:
                branch.compile(mode=mode)

    def encoder_modules(self) -> dict[str, nn.Module]:
        """The encoders by branch name (``image``: SegFormer, ``voxel``: SwinUNETR)."""
        mods: dict[str, nn.Module] = {}
        if self.image_branch is not None:
            mods["image"] = self.image_branch.encoder
        if self.voxel_branch is not None:
            mods["voxel"] = self.voxel_branch
        return mods

    def surface_maps(self, voxels: torch.Tensor) -> torch.Tensor:
        """The surface branch's input (B, C, H, W): a depth slice of the ``surface_*`` maps."""
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return voxels[:, self.surface_channels, 0].contiguous(memory_format=layout)

    def forward(self, image: torch.Tensor, voxels: torch.Tensor) -> dict[str, torch.Tensor | None]:
        _d, h, w = self.grid_shape
        image_feat = logits2d = None
        if self.image_branch is not None:
            image_feat, logits = self.image_branch(image)
            logits2d = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        logits_surface = None
        if self.surface_branch is not None:
            maps = self.surface_maps(voxels)
            surface_feat, logits_surface = self.surface_branch(maps)
            image_feat = F.interpolate(
                image_feat, size=(h, w), mode="bilinear", align_corners=False
            )
            image_feat = torch.cat([image_feat, surface_feat], dim=1)
        if self.channels_last:
            voxels = voxels.contiguous(memory_format=torch.channels_last_3d)
        voxel_feat = self.voxel_branch(voxels) if self.voxel_branch is not None else None
        branch = self.voxel_branch
        projection = branch.output_projection() if branch is not None else None
        logits3d = self.fusion(image_feat, voxel_feat, self.grid_shape, projection)
        return {"logits2d": logits2d, "logits3d": logits3d, "logits_surface": logits_surface}
