"""A survey delivered as tiles: point IoU and time of its files predicted on their own and as one
survey, against the whole area in one file.

The labelled synthetic tiles of ``python -m benchmarks windows`` (several training tiles a side)
are each cut into ``--pieces`` x ``--pieces`` files (``uxbseg tile``), and predicted as
``predict`` does: the whole tile in windows; its pieces each on its own (``--no-survey``); its
pieces as one survey (the default). Points are scored against the classes in the input files,
over all points and within ``--seam`` metres of the lines the tiles were cut along.

    python -m benchmarks survey --weights RUN/FusedSwinCrossEntropy_tpi_clr_swin_best.safetensors

``--las FILE`` times a real file instead (no classes to score): whole, its pieces on their own
and as a survey, and reading the pieces, so the cost of reading the neighbours shows.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

import laspy
import numpy as np
import torch

from uxbseg.classes import CLASSES, las_code_to_class
from uxbseg.io.weights import load_model
from uxbseg.metrics import metrics_from_confusion
from uxbseg.predict import PredictJob, predict_files
from uxbseg.tiling import tile_dataset

from .bench_windows import survey_arguments, survey_tiles

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


def _cut(path: Path, pieces: int, out: Path) -> list[Path]:
    """``path`` cut into ``pieces`` x ``pieces`` files of equal extent (LAZ stays LAZ)."""
    las = laspy.read(path)
    x, y = np.asarray(las.x), np.asarray(las.y)
    lo, hi = las.header.mins, las.header.maxs
    col = np.minimum(((x - lo[0]) / (hi[0] - lo[0]) * pieces).astype(int), pieces - 1)
    row = np.minimum(((y - lo[1]) / (hi[1] - lo[1]) * pieces).astype(int), pieces - 1)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for r in range(pieces):
        for c in range(pieces):
            sub = laspy.LasData(copy.deepcopy(las.header))
            sub.points = las.points[np.flatnonzero((row == r) & (col == c))]
            name = path.name.replace(".copc.laz", ".laz").split(".")
            files.append(out / f"{name[0]}_r{r}_c{c}.{name[-1]}")
            sub.write(files[-1])
    return files


def _real_file(args: argparse.Namespace, model, cfg) -> None:
    """Time predict on a real file whole, cut into pieces on their own, and as a survey."""
    out = Path("/tmp/uxbseg-bench-survey-real")
    shutil.rmtree(out, ignore_errors=True)
    parts = _cut(args.las, args.pieces, out / "pieces")
    side = args.window or cfg.grid.tile_extent
    n = laspy.open(args.las).header.point_count
    print(
        f"{args.las.name} ({n:,} points) cut into {len(parts)} files; windows of {side:g}; "
        f"{torch.get_num_threads()} CPU threads; median of {args.repeat}"
    )
    runs = [
        ("whole file, in windows", [args.las], True),
        ("its files, each on its own", parts, False),
        ("its files, as a survey", parts, True),
    ]
    t0 = time.perf_counter()
    for p in parts:
        laspy.read(p)
    read = time.perf_counter() - t0
    print("| prediction | time |\n|---|---|")
    print(f"| reading the {len(parts)} files once | {read:.2f} s |")
    times: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for _ in range(args.repeat):  # interleaved, so that a slow moment hits all of them
        for i, (label, files, survey) in enumerate(runs):
            jobs = [PredictJob(f, None, f.stem.split(".")[0]) for f in files]
            t0 = time.perf_counter()
            res = predict_files(
                model, cfg, jobs, out / str(i), window=side, progress=False, survey=survey,
                grids=False,
            )  # fmt: skip
            times[label].append(time.perf_counter() - t0)
            assert all(r.error is None for r in res), [r.error for r in res if r.error]
    for label, ts in times.items():
        print(f"| {label} | {np.median(ts):.2f} s |")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks survey", description=__doc__)
    survey_arguments(ap)
    ap.add_argument("--pieces", type=int, default=2, help="files per side of a tile (default 2)")
    ap.add_argument("--seam", type=float, default=15.0, help="metres either side of a cut line")
    ap.add_argument("--las", type=Path, help="time a real LAS/LAZ file cut into pieces instead")
    ap.add_argument("--window", type=float, help="window side with --las (default: training)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds with --las (default 3)")
    args = ap.parse_args(argv)
    model, cfg = load_model(args.weights)
    if args.las is not None:
        _real_file(args, model, cfg)
        return
    root = survey_tiles(args.data, args.seed, args.size, args.tiles)
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
