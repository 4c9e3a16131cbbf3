"""Exported model weights: a plain state_dict (.pth) and safetensors carrying the model config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..config import Config, config_from_dict, config_to_dict
from ..errors import BadDataError
from .files import replacing

__all__ = ["BEST_WEIGHTS_NAME", "load_model", "save_weights", "weights_config"]

BEST_WEIGHTS_NAME = "FusedSwinCrossEntropy_tpi_clr_swin_best"


def _atomic(path: Path, write) -> None:
    with replacing(path) as tmp:
        write(tmp)


def save_weights(
    model: torch.nn.Module, cfg: Config, folder: str | Path, extra: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """Write ``<BEST>.pth`` (state_dict, loads with weights_only=True) and ``<BEST>.safetensors``.

    The safetensors metadata holds the resolved configuration as JSON (key ``uxbseg_config``), so
    ``predict --weights`` needs no other file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    pth = folder / f"{BEST_WEIGHTS_NAME}.pth"
    st = folder / f"{BEST_WEIGHTS_NAME}.safetensors"
    meta = {"uxbseg_config": json.dumps(config_to_dict(cfg)), **(extra or {})}
    _atomic(pth, lambda p: torch.save(state, p))
    _atomic(st, lambda p: save_file(state, str(p), metadata=meta))
    return pth, st


def _config_for(path: Path) -> Config:
    candidates = [
        path.with_suffix(".safetensors"),
        path.parent / "config.yaml",
        path.parent.parent / "config.yaml",
    ]
    for c in candidates:
        if c.suffix == ".safetensors" and c.is_file():
            with safe_open(str(c), framework="pt") as f:
                meta = f.metadata() or {}
            if "uxbseg_config" in meta:
                return config_from_dict(json.loads(meta["uxbseg_config"]))
        elif c.suffix == ".yaml" and c.is_file():
            from ..config import load_config

            return load_config(c)
    raise BadDataError(
        f"{path}: no model configuration found beside the weights (looked for "
        f"{', '.join(str(c) for c in candidates)}); pass the .safetensors file of the run"
    )


def weights_config(path: str | Path) -> Config:
    """The configuration a weights file was trained with, without building the model (fast:
    the safetensors header, or the run's config.yaml for a ``.pth``)."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(
            f"{path}: weights file not found; pass the run's {BEST_WEIGHTS_NAME}.safetensors"
        )
    return _config_for(path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Build the model a weights file describes and load its weights; returns (model, config).

    ``.safetensors`` carries its config; for ``.pth`` the config comes from the sibling
    .safetensors or the run's config.yaml. ``.pth`` is read with ``weights_only=True``.
    """
    from ..models import UXBFusionModel

    path = Path(path)
    cfg = weights_config(path)
    cfg.model.pretrained_2d = None  # the weights file holds every parameter
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BadDataError(f"{path}: cannot read weights ({exc}); re-export them") from exc
    model = UXBFusionModel.from_config(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BadDataError(f"{path}: weights do not fit the configured model ({exc})") from exc
    model.eval()
    return model, cfg
