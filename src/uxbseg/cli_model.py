"""Sub-commands that train or run the model (train, evaluate, predict, demo)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

log = logging.getLogger("uxbseg.predict")

RUNS = Path("runs")
"""Where ``uxbseg train`` puts its run folders when --out is not given."""


WEIGHTS_HELP = (
    "a run's FusedSwinCrossEntropy_tpi_clr_swin_best.safetensors (the best epoch's weights with "
    "their configuration), or its .pth, or the run's checkpoints/last.ckpt (the last epoch's; "
    "for a run cut short)"
)


def _load_cfg(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, args.set)


def _cmd_train(args: argparse.Namespace) -> int:
    from .cli import quiet_lightning
    from .run_dirs import latest_run_dir, new_run_dir
    from .training.train import train

    quiet_lightning(args.verbose)
    out = args.out
    if out is None:  # a new folder under runs/, or the latest one there for --resume
        out = latest_run_dir(RUNS) if args.resume else new_run_dir(RUNS)
        print(f"run folder: {out}", flush=True)
    saved = out / "config.yaml"
    if args.resume and args.config is None and saved.is_file():  # the run's own model
        from .config import load_config

        cfg = load_config(saved, args.set)
    else:
        cfg = _load_cfg(args)
    result = train(args.data, cfg, out, resume=args.resume, skip_bad=args.skip_bad or None)
    if result.best_weights is None:
        from .errors import UXBError

        raise UXBError(
            f"{result.run_dir}: no finite validation loss was recorded, so no weights were "
            "exported; metrics.csv there shows the losses (for a NaN, lower optim.lr_main or "
            "set trainer.gradient_clip_norm)"
        )
    print(
        f"best val loss {result.best_val_loss:.5f} at epoch {result.best_epoch}; "
        f"weights: {result.best_weights} (and .pth); run folder: {result.run_dir}"
    )
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="YAML configuration, or a shipped one by name: seed (the original script's model "
        "and schedule, for a GPU) or tiny (the demo's, for a CPU) (default: the seed's values; "
        "with --resume the run's own config.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set trainer.max_epochs=5 (repeatable)",
    )


def add_model_commands(sub) -> None:
    """Register the model sub-commands on ``sub``."""
    p = sub.add_parser(
        "train",
        help="train the fusion model",
        description="Train on ROOT/train, validate on ROOT/test (the seed's layout). Every pair is "
        "checked first; bad pairs stop the run (or --skip-bad leaves them out). The run folder "
        "gets config.yaml, checkpoints/last.ckpt, metrics.csv, TensorBoard logs and the best "
        "weights as FusedSwinCrossEntropy_tpi_clr_swin_best.{pth,safetensors}.",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (ROOT)")
    _config_args(p)
    p.add_argument(
        "--out",
        type=Path,
        help=f"run folder (default: a new one, {RUNS}/run, {RUNS}/run_2, ...; never one that "
        "holds a run, unless --resume)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue from OUT/checkpoints/last.ckpt (default OUT: the latest run in {RUNS}/)",
    )
    p.add_argument("--skip-bad", action="store_true", help="leave out pairs with problems")
    p.set_defaults(func=_cmd_train)
    add_prediction_commands(sub)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate, format_result
    from .io.weights import load_model

    device = _device(args.device)
    model, cfg = _with_adjustment(*load_model(args.weights), args)
    result = evaluate(
        model,
        cfg,
        args.data,
        args.split,
        device=device,
        progress=not args.json,
        tta=args.tta,
        window=args.window,
        overlap=args.overlap,
        batch=args.batch,
        report=args.report,
        survey=args.survey,
    )
    if args.json:  # strict JSON: an undefined metric (NaN) is null, as JSON readers expect
        print(json.dumps(_strict(result), indent=2, allow_nan=False))
    else:
        print(format_result(result))
    return 0


def _strict(value):
    """``value`` with every float that is not finite (NaN: a metric of a class neither true
    nor predicted) replaced by None."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _las_in(folder: Path) -> list[Path]:
    """The point clouds directly inside ``folder`` (the names a pair folder's is found by),
    sorted, less those an earlier predict run wrote there (its record names them); an error if
    there are none."""
    from .data.pairs import LAS_PATTERNS
    from .errors import BadDataError
    from .predict_resume import earlier_outputs

    files = sorted({p for pat in LAS_PATTERNS for p in folder.glob(pat) if p.is_file()})
    ours = sorted(earlier_outputs(folder) & {f.name for f in files})
    if ours:
        log.info(
            "%s: %d file(s) an earlier run predicted into it (e.g. %s) are its outputs, not inputs",
            folder,
            len(ours),
            ours[0],
        )
        files = [f for f in files if f.name not in ours]
    if not files:
        raise BadDataError(
            f"{folder}: a folder without .las/.laz files; pass LAS/LAZ files, or a folder "
            "that holds them (its sub-folders are not searched)"
        )
    return files


def _las_stem(path: Path) -> str:
    """The name without its point-cloud suffix: the id of the job's outputs."""
    name = path.name
    for suffix in (".copc.laz", ".laz", ".las"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _predict_jobs(args: argparse.Namespace, cfg) -> list:
    """The jobs of --data or --input (a folder stands for its LAS/LAZ files); an image per file
    if any."""
    from .data.pairs import find_pairs
    from .errors import BadDataError
    from .predict import PredictJob

    if args.data is not None:
        pairs = find_pairs(
            args.data, args.split or cfg.data.predict_split, cfg.data.image_glob, cfg.data.mask_glob
        )
        # a pair without point cloud stays in the list and fails with a message naming it
        jobs = [PredictJob(p.las or p.folder, p.image, p.short_id) for p in pairs]
    else:
        missing = [p for p in [*args.input, *(args.image or [])] if not p.exists()]
        if missing:  # a mistyped path is refused before the model is built, not at the end
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise BadDataError(f"{missing[0]}: no such file or folder{more}; check the path")
        images = args.image or []
        folders = [p for p in args.input if p.is_dir()]
        if images and folders:
            raise BadDataError(
                f"--image pairs one image with each --input file, and {folders[0]} is a folder; "
                "give its files instead, or no --image (a TPI image is rendered from the points)"
            )
        files = [f for p in args.input for f in (_las_in(p) if p.is_dir() else [p])]
        if images and len(images) != len(files):
            raise BadDataError(
                f"{len(images)} --image for {len(files)} --input files; give one "
                "image per input, in the same order, or none"
            )
        jobs = [
            PredictJob(f, images[i] if images else None, _las_stem(f)) for i, f in enumerate(files)
        ]
    return jobs


def _window(text: str) -> float | str | None:
    if text in ("auto", "off"):
        return None if text == "off" else text
    try:
        side = float(text)
    except ValueError:
        side = 0.0
    if not side > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a window side > 0 in CRS units (e.g. 100), auto or off"
        )
    return side


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the windows' least overlap as a fraction of their side, >= 0 and "
            "< 1 (e.g. 0.25)"
        )
    return value


def positive(kind: type):
    """An argparse type: ``kind`` of the text, which must be > 0 (else a usage error)."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return parse


def share(text: str) -> float:
    """An argparse type: a share strictly between 0 and 1 (else a usage error)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


share.__name__ = "float"


def _codes(text: str) -> list[int]:
    try:
        codes = [int(c) for c in text.split(",")]
    except ValueError:
        codes = []
    if len(codes) != 3 or not all(0 <= c <= 255 for c in codes):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give three LAS codes 0-255 for ground,plazuela,structure, e.g. 2,27,6"
        )
    return codes


def _cmd_predict(args: argparse.Namespace) -> int:
    from .finds import count_finds
    from .io.weights import load_model, weights_config
    from .predict import SURVEY_FINDS, SURVEY_OUTLINES, check_jobs, predict_files

    jobs = _predict_jobs(args, weights_config(args.weights))
    out = args.out or (args.data / "predict_out" if args.data else Path("predict_out"))
    check_jobs(jobs, out)  # conflicting arguments fail before the model is built
    device = _device(args.device)
    model, cfg = _with_adjustment(*load_model(args.weights), args)
    codes = args.codes
    results = predict_files(
        model,
        cfg,
        jobs,
        out,
        probabilities=args.probabilities,
        keep_classification=args.keep_classification,
        codes=codes,
        tta=args.tta,
        window=args.window,
        overlap=args.overlap,
        batch=args.batch,
        grids=not args.no_grids,
        survey=not args.no_survey,
        report=args.report,
        resume=args.resume,
        device=device,
    )
    failed = [r for r in results if r.error]
    for r in results:
        if r.error:
            print(f"FAILED {r.job.las}: {r.error}")
        else:
            grids = f", {r.npy.name}" if r.npy else ""
            if r.windows:
                grids = (
                    f"{grids}{'/' if r.npy else ''} ({r.windows} windows of {r.side:g}, "
                    f"overlap {r.overlap:g}"
                    + (f", in a survey of {r.survey} files" if r.survey else "")
                    + ")"
                )
            finds = ", ".join(f"{v} {k}" for k, v in r.finds.items())
            print(
                f"{r.job.las.name} -> {r.las} ({r.points} point{'s' * (r.points != 1)}: "
                + ", ".join(f"{k} {v}" for k, v in r.counts.items())
                + f"){grids}; finds: {finds}"
                + ("; kept from the earlier run" if r.kept else "")
            )
    kept = sum(r.kept for r in results)
    print(
        f"{len(results) - len(failed)} of {len(results)} files written to {out}"
        + (f" ({kept} kept from the earlier run)" if kept else "")
    )
    if len(results) > len(failed) and len(results) > 1:
        run = count_finds(out / SURVEY_FINDS)
        print(
            "finds of the run: "
            + ", ".join(f"{v} {k}" for k, v in run.items())
            + f" (one cut by a seam between two files counted once): {out / SURVEY_FINDS}, "
            f"outlines for a GIS: {out / SURVEY_OUTLINES}"
        )
    if args.report is not None:
        print(f"pictures: {args.report / 'report.html'}")
    return 1 if failed else 0


def _device_text(text: str) -> str:
    """``--device``'s form (its presence on this machine is checked by :func:`_device`)."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(
            f"give auto, cpu, cuda, cuda:N (the N-th GPU) or mps, got {text!r}"
        )
    return text


def _device(text: str):
    """The torch device ``--device`` names: auto = the first CUDA GPU if there is one, else the
    CPU; a GPU this machine lacks is an error that says what it has."""
    import torch

    from .environment import why_no_gpu
    from .errors import BadDataError
    from .inference import default_device

    if text == "auto":
        return default_device()
    device = torch.device(text)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            if count:
                gpus = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
                why = f"torch sees {count} CUDA GPU(s) here ({gpus}); give one of them"
            else:
                why = why_no_gpu()
            raise BadDataError(f"--device {text}: {why}, or give --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadDataError(f"--device {text}: Apple's MPS is not available here; give --device cpu")
    return device


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        type=_device_text,
        default="auto",
        metavar="auto|cpu|cuda[:N]|mps",
        help="where the model runs (default auto: the first CUDA GPU if there is one, else the "
        "CPU); e.g. cpu to leave a GPU to a training run, cuda:1 for the second GPU",
    )


def _decision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        action="store_true",
        help="average the prediction over the tile's four mirror images (4x the model time)",
    )
    p.add_argument(
        "--logit-adjustment",
        type=float,
        metavar="TAU",
        help="classes = argmax of probabilities / class_weights**TAU: 1 undoes the loss's class "
        "weighting (fewer false plazuela/structure), 0 is the plain argmax (default: the "
        "weights' model.logit_adjustment)",
    )


def _with_adjustment(model, cfg, args: argparse.Namespace):
    """The weights' model and config, with --logit-adjustment applied when given."""
    from .config import config_from_dict, config_to_dict

    if args.logit_adjustment is not None:
        data = config_to_dict(cfg)
        data["model"]["logit_adjustment"] = args.logit_adjustment
        cfg = config_from_dict(data)  # validated: the class weights must be > 0
    return model, cfg


def _window_args(p: argparse.ArgumentParser) -> None:
    """--window, --overlap, --batch: how predict and evaluate cut files larger than a tile."""
    from .windows import WINDOW_OVERLAP

    p.add_argument(
        "--window",
        type=_window,
        default="auto",
        metavar="SIDE|auto|off",
        help="cut a point cloud more than 1.25x this side (CRS units) into overlapping windows "
        "of this side, so the model sees it at the scale of its training tiles (predict writes "
        "each window's grid to pred_<id>.windows/). auto (default): the training tiles' side, "
        "recorded in the weights; off: every file is one tile, however large",
    )
    p.add_argument(
        "--overlap",
        type=_overlap,
        default=WINDOW_OVERLAP,
        metavar="F",
        help="least overlap of neighbouring windows, a fraction of their side (default "
        f"{WINDOW_OVERLAP:g}): each point is classified by the window whose centre is nearest, "
        "so at least F/2 of a side inside it, where a mound cut by the window's edge is mostly "
        "in view. Costs 1/(1-F)^2 the windows of 0",
    )
    p.add_argument(
        "--batch",
        type=positive(int),
        metavar="N",
        help="windows of a large file run through the model N at a time (default: the "
        "training batch, data.batch_size, on a GPU 4x that: a forward at 4x the batch takes "
        "less memory than a training step; the seed model's forward at batch 4 on an H200 is "
        "1.9x a sample's at batch 1, the tiny model's at 2 on a CPU 1.25x)",
    )


def add_prediction_commands(sub) -> None:
    """evaluate, predict and demo."""
    p = sub.add_parser(
        "evaluate",
        help="voxel, pixel and point metrics of trained weights",
        description="Score weights on a labelled split: voxel, pixel and point "
        "metrics beside the all-ground baseline, with confusion matrices. A tile more than "
        "1.25x the training tiles' side is scored as predict classifies it, in windows "
        "(--window, --overlap).",
    )
    p.add_argument(
        "--weights",
        type=Path,
        required=True,
        help=WEIGHTS_HELP,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (ROOT)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write a picture of each tile (TPI image, truth, prediction, errors) and "
        "DIR/report.html listing them worst first",
    )
    p.add_argument(
        "--survey",
        action="store_true",
        help="tiles that lie side by side (e.g. cut by `uxbseg tile` from one area) are also "
        "predicted as predict classifies them, as one survey in windows reading each other's "
        "points: adds a 'points (as surveys)' row with the classes predict writes, and "
        "objects counted over each survey (one cut by the line between tiles once); --report "
        "pictures those tiles with predict's classes; they go through the model twice",
    )
    _window_args(p)
    _device_arg(p)
    _decision_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="classify LAS/LAZ files",
        description="Write pred_<id>.las/.laz (same points, same order, every other field, VLR "
        "and EVLR unchanged), pred_<id>.npy (uint8 voxel grid) and pred_<id>.finds.csv (each "
        "plazuela and structure found: centre, area, points, box, score; CRS units), and "
        "OUT/finds.csv with the finds of all of them (one cut by the seam between two files "
        "joined), outlined for a GIS in OUT/finds.geojson (in the files' CRS). Inputs come from "
        "a dataset's predict/ split (--data) or are given directly (--input, with --image or a "
        "TPI image rendered from the points). A file more than 1.25x the training tiles' side "
        "is cut into windows of that side (--window), each point classified by the nearest "
        "window's centre; its grids go to pred_<id>.windows/. Files that lie side by side are "
        "predicted as one survey (--no-survey). A bad input is reported and skipped; exit 1 if "
        "any failed. Inputs that would write the same pred_<id>, or write over an input, are "
        "refused before any work.",
    )
    p.add_argument("--weights", type=Path, required=True, help=WEIGHTS_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="dataset folder; uses its predict/ split")
    src.add_argument(
        "--input",
        type=Path,
        nargs="+",
        help="LAS/LAZ files to classify, or folders: every .las/.laz directly inside (less "
        "the outputs an earlier run predicted into it, which its record names)",
    )
    p.add_argument(
        "--image",
        type=Path,
        nargs="+",
        help="TPI image per --input file (default: rendered from the points)",
    )
    p.add_argument("--split", help="split of --data to predict (default predict)")
    p.add_argument("--out", type=Path, help="output folder (default ROOT/predict_out)")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="add prob_<class> (the model's softmax, before any logit adjustment) and entropy "
        "extra dimensions",
    )
    p.add_argument(
        "--keep-classification",
        action="store_true",
        help="leave classification untouched; write the prediction to uxb_class",
    )
    p.add_argument(
        "--codes",
        type=_codes,
        help="LAS codes written for ground,plazuela,structure (default 2,27,6)",
    )
    p.add_argument(
        "--no-grids",
        action="store_true",
        help="write the classified LAS/LAZ (and finds) without the voxel grids (pred_<id>.npy, or "
        "pred_<id>.windows/: 2 MB a window at the seed's grid)",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write a picture of each classified file (its TPI, its classes, its finds "
        "outlined), a map of them all (overview.png) and DIR/report.html listing them, the most "
        "finds first",
    )
    p.add_argument(
        "--no-survey",
        action="store_true",
        help="predict every file on its own. By default, input files that lie side by side (a "
        "survey delivered as tiles) are predicted as one: windows are laid over the whole "
        "area and read the points of every file they cover, so a mound on the line between "
        "two files is seen whole and gets one class. Each file also reads the files it "
        "touches (up to 8 in a grid of tiles), keeping only their points near its edges. "
        "Files that overlap by more than 1%% of their area are never merged",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with a run into the same --out that was cut short: inputs it finished "
        "(same weights and options, input unchanged, in a survey of the same files, outputs "
        "all there) are kept, the others predicted; a kept file still lends its points to its "
        "survey's other files. Every run records "
        "what it finishes in OUT/.uxbseg-predict.jsonl",
    )
    _window_args(p)
    _device_arg(p)
    _decision_args(p)
    p.set_defaults(func=_cmd_predict)

    from .demo import add_demo_command

    add_demo_command(sub)
