"""Typed, validated configuration: each constant of the seed script is a key, its value the default.

``load_config(path, overrides)`` reads YAML, applies ``a.b=c`` overrides and rejects unknown keys or
bad values with a message that names the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

__all__ = [
    "PACKAGED_CONFIGS",
    "Config",
    "DataConfig",
    "GridConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SamplerConfig",
    "TrainerConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "packaged_config",
    "save_config",
]

VOXEL_FEATURES = (
    "occupancy",
    "log_density",
    "height",
    "relief",
    "relief_wide",
    "surface_relief",
    "surface_relief_wide",
    "surface_relief_fine",
    "surface_relief_wide_fine",
    "above_surface",
    "intensity",
    "return_ratio",
)


@dataclass
class DataConfig:
    """Where pairs are and how their files are found and loaded."""

    train_split: str = "train"
    val_split: str = "test"  # the seed validates on test/
    predict_split: str = "predict"
    image_glob: str = "tpi_100m*.png"
    mask_glob: str = "uxb_msk_pl_st*.png"
    image_size: int = 512
    batch_size: int = 1
    num_workers: int = 1
    skip_bad: bool = False
    augment: bool = False  # random flips / quarter turns of the training tiles (not in the seed)
    # probability that a training batch is CutMixed over voxel columns (training/mixing.py;
    # needs batch_size >= 2; not in the seed)
    cutmix: float = 0.0
    voxel_cache: str | None = (
        "auto"  # folder of voxelised tiles; auto = ~/.cache/uxbseg; null = off
    )


@dataclass
class GridConfig:
    """The voxel grid: shape (D, H, W) = (z, y, x), binning and input features."""

    shape: tuple[int, int, int] = (32, 256, 256)
    binning: Literal["seed", "uniform"] = "seed"
    z_range: Literal["percentile", "minmax"] = "percentile"
    z_percentiles: tuple[float, float] = (0.1, 99.9)
    features: tuple[str, ...] = ("occupancy", "log_density", "height")
    empty_label: Literal["ignore", "ground"] = "ignore"
    # the larger XY side (CRS units) of the training tiles, the median over train/; null = set
    # by `train` from the training point clouds. predict cuts larger point clouds into windows
    # of this side, so the model sees them at the scale it learnt (predict --window)
    tile_extent: float | None = None
    # the training tiles' points per square CRS unit (median over train/); null = set by
    # `train`. predict and evaluate warn about files far sparser or denser than this
    tile_density: float | None = None


@dataclass
class ModelConfig:
    """The fusion model: SegFormer-B0 image branch, SwinUNETR voxel branch, fusion head."""

    pretrained_2d: str | None = None  # seed: nvidia/segformer-b0-finetuned-ade-512-512
    image_head: Literal["seed", "mlp"] = "seed"
    segformer_hidden_sizes: tuple[int, int, int, int] = (32, 64, 160, 256)
    segformer_depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    segformer_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    segformer_sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    segformer_decoder_size: int = 256
    feature_size: int = 96
    window_size: int = 7  # SwinUNETR attention window (MONAI default; 4 is ~4x faster on CPU)
    voxel_out_channels: int = 64
    use_checkpoint: bool = False
    # window attention through torch's SDPA when no gradient is recorded (validation, evaluate,
    # predict; MONAI's own use_flash_attention): 1.3-3.5x faster attention on the CPU (the most
    # at window 7), same result
    sdpa_inference: bool = True
    # ... and in training too (models/attention.py): on a GPU it spares the materialised scores
    # (-1.4 GiB at the seed's batch 1; the compiled candidate's 4.56x uses it); slower on the
    # CPU, whose fused kernel cannot return the bias's gradient. auto: on when training runs on
    # a GPU, off on the CPU
    use_flash_attention: bool | Literal["auto"] = "auto"
    # where that training attention's relative position bias gets its gradient: kernel = from
    # SDPA's kernel (on a GPU the memory-efficient one, the only one that returns it); recompute
    # = SDPA takes the bias without a gradient (an H100/H200 may then run cuDNN's flash kernels)
    # and the gradient is recomputed from the scores, a chunk of windows at a time
    # (models/attention.py); the same result, slower on the CPU, not yet measured on a GPU
    sdpa_bias_grad: Literal["kernel", "recompute"] = "kernel"
    fusion: Literal["global", "column", "voxel_only", "image_only"] = "global"
    fusion_hidden: int = 128
    fusion_impl: Literal["fast", "naive"] = "fast"  # naive = the seed's broadcast + concat
    compile: bool = False  # torch.compile both branches (minutes of start-up; cached on disk)
    # 3D convs and SwinUNETR's norms in channels_last_3d: faster at batch 1 on the CPU (oneDNN for
    # every conv) and on an H200 (cuDNN's NDHWC kernels, no transposes); on a GPU at batch >= 4
    # torch's own norm in the default layout was faster than the row-sum norm (BENCHMARKS); the
    # norm now takes torch's batch_norm kernels on a GPU (models/norms.py), not yet measured there;
    # the 2D branches' convs in NHWC as well (the surface branch's pre-training 1.16x on the CPU)
    channels_last: bool = True
    # the small 3D convs of a float32 CPU batch of one (predict, evaluate) through oneDNN, where
    # PyTorch picks its unfolded kernel, and its 2x2x2 transposed convs as one matrix product
    # (models/convs.py): tiny forward 2.4x faster, then 1.12x more; same result
    onednn_batch1: bool = True
    # on a GPU, 3D convs with few input columns (SwinUNETR's first conv on the voxel features,
    # its patch embedding) as one matrix product over the unfolded input (models/convs.py), where
    # cuDNN's kernel leaves the tensor cores idle; same result
    unfold_convs: bool = True
    # width of a 2D U-Net over the surface_* column maps whose features join the image's in
    # column fusion (0 = off, the seed's model); see models/surface_branch.py
    surface_branch: int = 0
    surface_levels: int = 3  # resolution levels of that U-Net (4: 1/8-resolution context)
    # classes = argmax of probabilities / loss.class_weights ** logit_adjustment (validation,
    # evaluate, predict); 1 undoes the loss's class weighting, 0 = the seed's argmax
    logit_adjustment: float = 0.0


@dataclass
class LossConfig:
    """Class-weighted cross-entropy on the 2D and 3D logits, summed."""

    class_weights: tuple[float, float, float] = (0.05, 0.45, 0.50)
    weight_2d: float = 1.0
    weight_3d: float = 1.0
    weight_surface: float = 1.0  # CE of the surface branch's column logits (when it is on)
    # maps of this many earlier training tiles join each step's surface term (0 = off); see
    # training/replay.py
    surface_replay: int = 0
    # + dice_weight * soft Dice (MONAI, foreground classes, per tile) beside each CE term
    # (0 = the seed's loss)
    dice_weight: float = 0.0


@dataclass
class SamplerConfig:
    """The seed's minority-balanced sampler."""

    enabled: bool = True
    minority_fraction: float = 0.7


@dataclass
class OptimConfig:
    """AdamW with the seed's two-stage warm-up of head and encoder learning rates."""

    lr_warmup: float = 2e-7
    lr_main: float = 2e-5
    warmup_epochs: int = 20
    weight_decay: float = 1e-2
    freeze_policy: Literal["pretrained", "seed", "none"] = "pretrained"
    # after the warm-up: the seed keeps LR_MAIN ("none"); "cosine" lowers it to
    # lr_main * min_lr_ratio by the end of the run (max_epochs or max_time_minutes)
    decay: Literal["none", "cosine"] = "none"
    min_lr_ratio: float = 0.02
    fused: bool = True  # torch's fused AdamW kernel on CPU / CUDA (same update; see optimizer.py)


@dataclass
class TrainerConfig:
    """Lightning trainer settings."""

    max_epochs: int = 100
    patience: int = 10
    min_delta: float = 1e-6
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"  # e.g. ddp; Lightning picks one for devices > 1
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    seed: int = 0
    max_time_minutes: float | None = None  # stops mid-epoch (validating there), after step 1
    gradient_clip_norm: float | None = None  # seed: none; clips the global gradient L2 norm
    # exponential moving average of the weights, per step (seed: none); validation and the
    # exported best weights use the average
    ema_decay: float | None = None
    log_every_n_steps: int = 10
    # steps (batches of surface_pretrain_batch tiles) that train the surface branch alone on the
    # training tiles' column maps before the fusion model trains (0 = off; the seed has no such
    # stage); their time counts towards max_time_minutes, and they stop at half of it at the
    # latest. See training/surface_pretrain.py
    surface_pretrain_steps: int = 0
    surface_pretrain_batch: int = 8


@dataclass
class Config:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        _validate(self)


_RANGE_RULES = (
    (
        lambda v: v >= 1,
        "must be >= 1",
        (
            "data.image_size",
            "data.batch_size",
            "model.fusion_hidden",
            "model.voxel_out_channels",
            "trainer.max_epochs",
            "trainer.devices",
            "trainer.surface_pretrain_batch",
        ),
    ),
    (
        lambda v: v >= 0,
        "must be >= 0 (0 = off or none)",
        (
            "loss.dice_weight",
            "loss.surface_replay",
            "trainer.surface_pretrain_steps",
            "data.num_workers",
            "optim.warmup_epochs",
        ),
    ),
    (
        lambda v: 0.0 <= v <= 1.0,
        "is a fraction or probability in [0, 1]",
        ("sampler.minority_fraction", "data.cutmix", "optim.min_lr_ratio"),
    ),
)
"""(check, rule, ``section.key`` names): numeric ranges, one message shape per rule."""


def _validate(cfg: Config) -> None:
    d, h, w = cfg.grid.shape
    if min(d, h, w) < 1:
        raise ConfigError(f"grid.shape must be positive, got {cfg.grid.shape}")
    lo, hi = cfg.grid.z_percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"grid.z_percentiles must satisfy 0 <= lo < hi <= 100, got {(lo, hi)}")
    unknown = [f for f in cfg.grid.features if f not in VOXEL_FEATURES]
    if unknown or not cfg.grid.features:
        raise ConfigError(
            f"grid.features has unknown or no entries {unknown}; choose from {list(VOXEL_FEATURES)}"
        )
    if any(wt < 0 for wt in cfg.loss.class_weights):
        raise ConfigError(f"loss.class_weights must be >= 0, got {cfg.loss.class_weights}")
    if cfg.model.logit_adjustment and not all(wt > 0 for wt in cfg.loss.class_weights):
        raise ConfigError(
            f"model.logit_adjustment={cfg.model.logit_adjustment} divides by the class weights "
            f"{cfg.loss.class_weights}: make them all > 0 or set model.logit_adjustment=0"
        )
    for ok, rule, keys in _RANGE_RULES:
        for key in keys:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if not ok(value):
                raise ConfigError(f"{key} {rule}, got {value}")
    if cfg.data.cutmix and cfg.data.batch_size < 2:
        raise ConfigError(
            f"data.cutmix={cfg.data.cutmix} mixes the tiles of a batch: set data.batch_size >= 2 "
            "or data.cutmix=0"
        )
    if cfg.loss.surface_replay and not cfg.model.surface_branch:
        raise ConfigError(
            f"loss.surface_replay={cfg.loss.surface_replay} replays maps through the surface "
            "branch, which is off: set model.surface_branch (e.g. 24) or loss.surface_replay=0"
        )
    if cfg.trainer.surface_pretrain_steps and not cfg.model.surface_branch:
        raise ConfigError(
            f"trainer.surface_pretrain_steps={cfg.trainer.surface_pretrain_steps} pre-trains the "
            "surface branch, which is off: set model.surface_branch (e.g. 24) or "
            "trainer.surface_pretrain_steps=0"
        )
    ema = cfg.trainer.ema_decay
    if ema is not None and not 0.0 < ema < 1.0:
        raise ConfigError(f"trainer.ema_decay must be in (0, 1) or null (off), got {ema}")
    clip = cfg.trainer.gradient_clip_norm
    if clip is not None and not clip > 0:
        raise ConfigError(f"trainer.gradient_clip_norm must be > 0 or null, got {clip}")
    for key in ("tile_extent", "tile_density"):
        value = getattr(cfg.grid, key)
        if value is not None and not value > 0:
            raise ConfigError(
                f"grid.{key} must be > 0 or null (set from the training tiles), got {value}"
            )
    budget = cfg.trainer.max_time_minutes
    if budget is not None and not budget > 0:
        raise ConfigError(
            f"trainer.max_time_minutes must be > 0 or null (no time limit), got {budget}"
        )


def _describe(hints: list[Any]) -> str:
    """What values of these type hints look like, for a message: ``true, false or 'auto'``."""
    words: list[str] = []
    for h in hints:
        if typing.get_origin(h) is Literal:
            words += [repr(a) for a in typing.get_args(h)]
        else:
            words.append({bool: "true, false", int: "an integer", float: "a number"}.get(h, str(h)))
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``hint`` and convert YAML lists to tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
        for alternative in inner:  # the first that takes the value
            with contextlib.suppress(ConfigError):
                return _coerce(value, alternative, key)
        raise ConfigError(f"{key} must be {_describe(inner)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} entries, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - our own bug


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {[where + k for k in unknown]}; "
            f"valid keys here: {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of the configuration (tuples as lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested dict."""
    return _build(Config, data, "")


PACKAGED_CONFIGS = ("seed", "tiny")
"""Configurations shipped with the package, which ``--config`` also takes by name: ``seed``
(the original script's model and schedule: a GPU's work) and ``tiny`` (the demo's, for a CPU)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the
    last silently: a setting written twice would change without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            # plain keys only: a merge key (<<: *anchor) is YAML's own way to override, and a
            # key that is no scalar is left to YAML's own error
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}: key {key!r} is given twice (lines "
                    f"{seen[key]} and {line}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def packaged_config(name: str) -> Path:
    """Path of a configuration shipped with the package (a :data:`PACKAGED_CONFIGS` name)."""
    return Path(str(resources.files("uxbseg") / "configs" / f"{name}.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML configuration (a file, or a :data:`PACKAGED_CONFIGS` name; None: the
    defaults, which are the seed's) and apply ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file() and str(path) in PACKAGED_CONFIGS:  # a name: the shipped file
            p = packaged_config(str(path))
        if not p.is_file():
            raise ConfigError(
                f"config file {p} does not exist; give a YAML file or one of the shipped "
                f"configurations by name: {', '.join(PACKAGED_CONFIGS)}"
            )
        try:
            with p.open("rb") as fh:  # YAML decodes it (UTF-8 or 16); the loader names the file
                data = yaml.load(fh, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
