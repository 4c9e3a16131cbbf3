"""Exported model weights: a plain state_dict (.pth) and safetensors carrying the model config."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..config import Config, config_from_dict, config_to_dict
from ..errors import BadDataError
from .files import replacing

__all__ = [
    "BEST_WEIGHTS_NAME",
    "WEIGHT_SUFFIXES",
    "load_model",
    "save_weights",
    "weights_config",
]

log = logging.getLogger(__name__)

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


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
"""What ``--weights`` takes: the exported weights (``.safetensors`` with their configuration,
``.pth``/``.pt`` state dicts) or a Lightning checkpoint of the run (``checkpoints/last.ckpt``)."""


def weights_config(path: str | Path) -> Config:
    """The configuration a weights file was trained with, without building the model (fast:
    the safetensors header, or the run's config.yaml for a ``.pth`` or ``.ckpt``)."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(
            f"{path}: weights file not found; pass the run's {BEST_WEIGHTS_NAME}.safetensors"
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise BadDataError(
            f"{path}: not a weights file ({', '.join(WEIGHT_SUFFIXES)}); pass the run's "
            f"{BEST_WEIGHTS_NAME}.safetensors (or its checkpoints/last.ckpt)"
        )
    return _config_for(path)


def _lightning_weights(path: Path, ckpt: dict) -> dict:
    """The model's weights in a Lightning checkpoint of a uxbseg run: the ``model.`` part of its
    state (with EMA on, the averaged weights, which are the ones validated)."""
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    if not state:
        raise BadDataError(
            f"{path}: a Lightning checkpoint without uxbseg model weights; pass a checkpoint "
            f"of a uxbseg run, or its {BEST_WEIGHTS_NAME}.safetensors"
        )
    log.info(
        "%s: the weights of epoch %s of a Lightning checkpoint (the last epoch run, not "
        "necessarily the best: %s.safetensors beside the run holds the best)",
        path,
        int(ckpt.get("epoch", -1)) + 1,
        BEST_WEIGHTS_NAME,
    )
    return state


def _read_state(path: Path, map_location) -> dict:
    """The state dict in ``path``, read as tensors only (never unpickling code)."""
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device=str(map_location))
        except Exception as exc:
            raise BadDataError(f"{path}: cannot read weights ({exc}); re-export them") from exc
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text would advise unpickling it anyway
        raise BadDataError(
            f"{path}: holds Python objects besides tensors, and uxbseg reads weights as tensors "
            "only (unpickling runs the file's code); pass the run's "
            f"{BEST_WEIGHTS_NAME}.safetensors"
        ) from exc
    except Exception as exc:
        raise BadDataError(f"{path}: cannot read weights ({exc}); re-export them") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return _lightning_weights(path, state)
    if not isinstance(state, dict):
        raise BadDataError(
            f"{path}: holds a {type(state).__name__}, not a state dict; pass the run's "
            f"{BEST_WEIGHTS_NAME}.safetensors"
        )
    return state


def _some(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Build the model a weights file describes and load its weights; returns (model, config).

    ``.safetensors`` carries its config; for ``.pth`` (and a run's Lightning ``.ckpt``) the
    config comes from the sibling .safetensors or the run's config.yaml. ``.pth`` and ``.ckpt``
    are read with ``weights_only=True``.
    """
    from ..models import UXBFusionModel

    path = Path(path)
    cfg = weights_config(path)
    cfg.model.pretrained_2d = None  # the weights file holds every parameter
    state = _read_state(path, map_location)
    model = UXBFusionModel.from_config(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes (strict or not)
        sizes = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        more = f" and {len(sizes) - 2} more" if len(sizes) > 2 else ""
        raise BadDataError(
            f"{path}: weights do not fit the model its configuration describes: "
            f"{'; '.join(sizes[:2]) or str(exc).splitlines()[0]}{more}; pass weights together "
            "with the run's config.yaml they were trained with"
        ) from exc
    if missing or unexpected:
        said = [f"{len(missing)} missing ({_some(missing)})"] if missing else []
        said += [f"{len(unexpected)} not in the model ({_some(unexpected)})"] if unexpected else []
        raise BadDataError(
            f"{path}: weights do not fit the model its configuration describes: "
            f"{'; '.join(said)} of {len(model.state_dict())} tensors; pass weights together "
            "with the run's config.yaml they were trained with"
        )
    model.eval()
    return model, cfg
