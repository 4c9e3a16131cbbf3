"""SegFormer-B0 image branch: built offline from its config, or loaded from a hub id or folder."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel
from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

from ..errors import ConfigError

__all__ = ["ImageBranch", "load_pretrained_segformer"]

log = logging.getLogger(__name__)


def load_pretrained_segformer(
    name_or_path: str, num_classes: int
) -> tuple[SegformerModel, SegformerDecodeHead | None, SegformerConfig]:
    """Load SegFormer weights from a hub id or a local ``save_pretrained`` folder.

    Returns the encoder, the decode head when the checkpoint has one (else None) and the config.
    """
    try:
        cfg = SegformerConfig.from_pretrained(name_or_path)
        cfg.num_labels = num_classes
        full = SegformerForSemanticSegmentation.from_pretrained(
            name_or_path, config=cfg, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"could not load pretrained SegFormer weights from {name_or_path!r} ({exc}). "
            "Offline? Download them once on a connected machine "
            f"(`hf download {name_or_path} --local-dir segformer-b0`) and set "
            "model.pretrained_2d=segformer-b0, or set model.pretrained_2d=null to train "
            "from scratch"
        ) from exc
    return full.segformer, full.decode_head, cfg


class ImageBranch(nn.Module):
    """SegFormer-B0 encoder with the seed's 1x1 head or SegFormer's all-MLP decoder.

    ``forward`` returns ``(features, logits)``: features (B, C, h, w) for the fusion and class
    logits (B, K, h, w). The seed head uses the last stage (1/32 resolution, C = 256 for B0); the
    ``mlp`` head fuses all four stages at 1/4 resolution (C = decoder size).

    Args:
        num_classes: output classes.
        head: ``seed`` (1x1 conv on the last stage) or ``mlp`` (SegFormer's decoder).
        hidden_sizes, depths, num_heads, sr_ratios, decoder_size: SegFormer config (B0 defaults).
        pretrained: hub id or local folder of SegFormer weights; None builds from the config.
    """

    def __init__(
        self,
        num_classes: int = 3,
        head: Literal["seed", "mlp"] = "seed",
        hidden_sizes: tuple[int, ...] = (32, 64, 160, 256),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        decoder_size: int = 256,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if head not in ("seed", "mlp"):
            raise ConfigError(f"model.image_head must be 'seed' or 'mlp', got {head!r}")
        self.head_kind = head
        self.pretrained = pretrained
        decode: SegformerDecodeHead | None = None
        if pretrained:
            self.encoder, decode, config = load_pretrained_segformer(pretrained, num_classes)
            log.info("loaded pretrained SegFormer from %s", pretrained)
        else:
            config = SegformerConfig(
                hidden_sizes=list(hidden_sizes),
                depths=list(depths),
                num_attention_heads=list(num_heads),
                sr_ratios=list(sr_ratios),
                decoder_hidden_size=decoder_size,
                num_labels=num_classes,
            )
            self.encoder = SegformerModel(config)
        self.config = config
        if head == "seed":
            self.out_channels = config.hidden_sizes[-1]
            self.head = nn.Conv2d(self.out_channels, num_classes, kernel_size=1)
        else:
            self.out_channels = config.decoder_hidden_size
            self.head = decode if decode is not None else SegformerDecodeHead(config)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head_kind == "seed":
            feat = self.encoder(image).last_hidden_state
            return feat, self.head(feat)
        # the four stage outputs, walked directly: transformers' output-capturing hooks do not
        # survive pickling into DDP-spawned processes (hidden_states comes back None there)
        states, h = [], image
        for stage in self.encoder.stages:
            h = stage(h)
            states.append(h)
        return self._mlp_decode(states)

    def _mlp_decode(self, states) -> tuple[torch.Tensor, torch.Tensor]:
        # SegformerDecodeHead.forward, keeping the fused features that it discards
        dec = self.head
        size = states[0].shape[2:]
        parts = []
        projections = getattr(dec, "linear_projections", None) or dec.linear_c  # v5 / v4 name
        for state, mlp in zip(states, projections):
            b, _, h, w = state.shape
            x = mlp(state).permute(0, 2, 1).reshape(b, -1, h, w)
            parts.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        feat = dec.activation(dec.batch_norm(dec.linear_fuse(torch.cat(parts[::-1], dim=1))))
        return feat, dec.classifier(dec.dropout(feat))
