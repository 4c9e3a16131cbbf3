"""A survey delivered as tiles: point IoU and time of its files predicted on their own and as one
survey, against the whole area in one file.

The labelled synthetic tiles of ``python -m benchmarks windows`` (several training tiles a side)
are each cut into ``--pieces`` x ``--pieces`` files (``uxbseg tile``), and predicted as
``predict`` does: the whole tile in windows; its pieces each on its own (``--no-survey``); its
pieces as one survey (the default). Points are scored against the classes in the input files,
over all points and within ``--seam`` metres of the lines the tiles were cut along.

    python -m benchmarks survey --weights RUN/FusedSwinCrossEntropy_tpi_clr_swin_best.safetensors
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import laspy
import numpy as np
import torch

from uxbseg.classes import CLASSES, las_code_to_class
from uxbseg.data.synthetic import synth_dataset
from uxbseg.io.weights import load_model
from uxbseg.metrics import metrics_from_confusion
from uxbseg.predict import PredictJob, predict_files
from uxbseg.tiling import tile_dataset

from .bench_windows import survey_params

K = len(CLASSES)


def _confusions(folder: Path, seams: dict[str, tuple[np.ndarray, np.ndarray]], near: float):
    """Confusion matrices (all points, points within ``near`` of the seams) of the predictions
    in ``folder`` (written with --keep-classification: truth in classification)."""
    cm, cm_seam = np.zeros((K, K), np.int64), np.zeros((K, K), np.int64)
    for path in sorted(folder.glob("pred_*.las")):
        las = laspy.read(path)
        truth = las_code_to_class(np.asarray(las.classification)).astype(np.int64)
        pred = las_code_to_class(np.asarray(las.uxb_class)).astype(np.int64)
        x, y = np.asarray(las.x), np.asarray(las.y)
        xs, ys = seams["_".join(path.name.removeprefix("pred_").split("_")[:2])]  # pair_NNNN
        dx = np.abs(x[:, None] - xs[None, :]).min(axis=1)
        dy = np.abs(y[:, None] - ys[None, :]).min(axis=1)
        at_seam = (dx <= near) | (dy <= near)
        known = (truth >= 0) & (truth < K)  # codes of no class are not scored
        for m, sel in ((cm, known), (cm_seam, known & at_seam)):
            m += np.bincount(truth[sel] * K + pred[sel], minlength=K * K).reshape(K, K)
    return cm, cm_seam


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks survey", description=__doc__)
    ap.add_argument("--weights", type=Path, required=True, help="weights trained on 100 m tiles")
    ap.add_argument("--tiles", type=int, default=4, help="survey tiles (default 4)")
    ap.add_argument("--size", type=float, default=300.0, help="their side in metres")
    ap.add_argument("--pieces", type=int, default=2, help="files per side of a tile (default 2)")
    ap.add_argument("--seam", type=float, default=15.0, help="metres either side of a cut line")
    ap.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/uxbseg-bench-windows"))
    args = ap.parse_args(argv)
    model, cfg = load_model(args.weights)
    root = args.data / f"v2_s{args.seed}_{args.size:g}m_{args.tiles}"
    if not (root / "test").is_dir():
        synth_dataset(root, {"test": args.tiles}, seed=args.seed, params=survey_params(args.size))
    pieces = root.with_name(f"{root.name}_pieces{args.pieces}")
    if not pieces.is_dir():
        tile_dataset(root, pieces, args.size / args.pieces, progress=False)
    wholes = sorted((root / "test").glob("pair_*/*.las"))
    parts = sorted((pieces / "test").glob("pair_*/*.las"))
    seams = {}
    cuts = np.arange(1, args.pieces) / args.pieces
    for path in wholes:  # the lines the tile was cut along (evenly, without overlap)
        h = laspy.open(path).header
        lo, hi = h.mins[:2], h.maxs[:2]
        seams[path.parent.name] = tuple(lo[k] + cuts * (hi[k] - lo[k]) for k in (0, 1))
    print(
        f"{len(wholes)} synthetic tiles of {args.size:g} m (seed {args.seed}) cut into "
        f"{len(parts)} files of {args.size / args.pieces:g} m; weights trained on "
        f"{cfg.grid.tile_extent} m tiles ({args.weights}); TPI images rendered from the points; "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"| prediction | point IoU plazuela / structure (all) | within {args.seam:g} m of a "
        "cut | time |\n|---|---|---|---|"
    )
    out = Path(f"/tmp/uxbseg-bench-survey-{pieces.name}")
    shutil.rmtree(out, ignore_errors=True)  # only this run's predictions are scored
    runs = [
        ("whole tile, in windows", wholes, True),
        ("its files, each on its own", parts, False),
        ("its files, as a survey", parts, True),
    ]
    found = {}
    for i, (label, files, survey) in enumerate(runs):
        # outputs named after the pair folder (pair_NNNN[_rRR_cCC]), which names the tile
        jobs = [PredictJob(f, None, f"{f.parent.name}_{f.stem}") for f in files]
        folder = out / str(i)
        t0 = time.perf_counter()
        res = predict_files(
            model, cfg, jobs, folder, keep_classification=True, progress=False, survey=survey,
            grids=False,
        )  # fmt: skip
        dt = time.perf_counter() - t0
        assert all(r.error is None for r in res), [r.error for r in res if r.error]
        cm, cm_seam = _confusions(folder, seams, args.seam)
        found[label] = cm
        a, s = metrics_from_confusion(cm), metrics_from_confusion(cm_seam)
        print(
            f"| {label} | {a['iou_plazuela']:.3f} / {a['iou_structure']:.3f} | "
            f"{s['iou_plazuela']:.3f} / {s['iou_structure']:.3f} ({cm_seam.sum():,} points) | "
            f"{dt:.1f} s |"
        )
    same = np.array_equal(found[runs[0][0]], found[runs[2][0]])
    print(f"survey's confusion matrix equal to the whole tile's: {same}")
