"""``uxbseg demo``: synthetic data -> tiny CPU training -> evaluate -> predict, in minutes."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .cli_model import positive

__all__ = ["add_demo_command", "run_demo"]

log = logging.getLogger(__name__)


def run_demo(
    out: Path, minutes: float = 5.0, train_tiles: int = 32, seed: int = 0, progress: bool = True
) -> dict:
    """Run the whole pipeline on synthetic data; returns the evaluation and prediction results."""

    import torch

    from .cli import quiet_lightning
    from .config import load_config
    from .data.pairs import find_pairs
    from .data.synthetic import synth_dataset
    from .errors import UXBError
    from .evaluate import evaluate
    from .io.weights import load_model
    from .predict import PredictJob, predict_files
    from .run_dirs import new_run_dir, require_folder
    from .training.train import train

    quiet_lightning(False)
    require_folder(out)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "train").is_dir():
        print(f"[1/4] writing a synthetic dataset to {data} ...", flush=True)
        synth_dataset(data, {"train": train_tiles, "test": 8, "predict": 4}, seed=seed)
    # a CUDA GPU when there is one, else the CPU: not Apple's MPS, which Lightning's auto would
    # take on a Mac, and on which the model is untested
    gpu = torch.cuda.is_available()
    overrides = [
        f"trainer.max_time_minutes={minutes}",
        f"trainer.accelerator={'auto' if gpu else 'cpu'}",
    ]
    cfg = load_config("tiny", overrides)
    where = "a GPU" if gpu else "the CPU"
    print(f"[2/4] training configs/tiny.yaml on {where} for at most {minutes:g} min", flush=True)
    result = train(data, cfg, new_run_dir(out), progress=progress)
    if result.best_weights is None:
        raise UXBError(
            f"{result.run_dir}: no finite validation loss was recorded, so there are no weights "
            "to evaluate; metrics.csv there shows the losses"
        )
    model, cfg = load_model(result.best_weights)
    print("[3/4] evaluating on the test split ...", flush=True)
    ev = evaluate(model, cfg, data, "test", progress=progress, report=out / "report")
    print("[4/4] predicting the predict split ...", flush=True)
    jobs = [PredictJob(p.las, p.image, p.short_id) for p in find_pairs(data, "predict")]
    preds = predict_files(model, cfg, jobs, out / "predict_out", progress=progress)
    return {
        "evaluation": ev,
        "predictions": preds,
        "run": result,
        "seconds": time.perf_counter() - t0,
    }


def _cmd_demo(args: argparse.Namespace) -> int:
    from .evaluate import format_result

    res = run_demo(args.out, args.minutes, args.train_tiles, args.seed)
    ev = res["evaluation"]
    print("\n=== uxbseg demo ===")
    print(format_result(ev))
    pts = ev["points"]["metrics"]
    print(
        f"\npoint IoU plazuela {pts['iou_plazuela']:.3f}, structure {pts['iou_structure']:.3f} "
        "(all-ground baseline: 0.000)"
    )
    ok = [p for p in res["predictions"] if not p.error]
    print(f"weights:     {res['run'].best_weights}")
    found = {k: sum(p.finds[k] for p in ok) for k in ("plazuela", "structure")}
    print(
        f"predictions: {len(ok)} classified LAS + voxel grids + finds in "
        f"{args.out / 'predict_out'} ({found['plazuela']} plazuelas, {found['structure']} "
        "structures found: finds.csv, outlined in finds.geojson)"
    )
    print(f"pictures:    {ev['report']} (the test tiles: truth, prediction, errors)")
    print(f"total time:  {res['seconds'] / 60:.1f} min")
    return 0


def add_demo_command(sub) -> None:
    """Register ``uxbseg demo``."""
    p = sub.add_parser(
        "demo",
        help="synthetic data -> train (tiny, CPU) -> evaluate -> predict",
        description="A few minutes on a laptop CPU: writes a synthetic dataset, "
        "trains configs/tiny.yaml, evaluates it (with a picture of each test tile in "
        "OUT/report/report.html), classifies the predict split.",
    )
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default demo/)")
    p.add_argument(
        "--minutes",
        type=positive(float),
        default=5.0,
        help="training time budget, surface pre-training included (default 5)",
    )
    p.add_argument(
        "--train-tiles", type=positive(int), default=32, help="synthetic training tiles (32)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_demo)
