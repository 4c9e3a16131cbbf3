"""Prediction write-back throughput and memory.

* mapping: per-point class from the voxel grid + classification update + LAS write, uxbseg vs the
  seed's (voxel lookup through float64 coordinates, np.vectorize inverse map), against a plain
  laspy read + write of the same uncompressed file;
* model (``--model``): ``predict`` end to end on the 1 km tile with the tiny model (LAS in, TPI
  image rendered from the points, voxels, forward, LAS out), uxbseg's model against the same
  weights in the seed's formulation (broadcast fusion, default layout, MONAI's attention,
  PyTorch's choice of conv kernel);
* memory: peak RSS of ``uxbseg predict`` on a tiled LAS of ``--memory-points`` points.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import laspy
import numpy as np

from uxbseg.classes import class_to_las_code
from uxbseg.data.voxelize import GridSpec, bin_points, voxelize
from uxbseg.io.las import PointArrays, write_classified

from .common import KM_TILE, tiled_las, timeit, timeit_interleaved
from .seed_reference import (
    INV_LABEL_MAP_3D,
    seed_point_index,
    seed_write_prediction,
)


def _km_las(workdir: Path) -> Path:
    """The 1 km real tile as uncompressed LAS in ``workdir`` (written once)."""
    src = workdir / "km_tile.las"
    if not src.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        laspy.read(KM_TILE).write(src)
    return src


def mapping(repeats: int, workdir: Path) -> None:
    src = _km_las(workdir)
    spec = GridSpec((32, 256, 256))
    pred = np.random.default_rng(0).integers(0, 3, spec.shape).astype(np.uint8)
    out = workdir / "out.las"

    def plain():
        las = laspy.read(src)
        las.write(out)

    def ours():  # what predict does around the model: point index, lookup, verbatim write
        las = laspy.read(src)
        flat, _ = bin_points(PointArrays.from_las(las), spec, with_height=False)
        codes = class_to_las_code(pred.ravel()[flat])
        write_classified(las, codes, out, compress=False, src=src)

    def seed():
        las = laspy.read(src)
        seed_write_prediction(las, pred, seed_point_index(las, spec.shape), str(out))

    las = laspy.read(src)
    n = len(las.points)
    flat, _ = bin_points(PointArrays.from_las(las), spec, with_height=False)
    idx = seed_point_index(las, spec.shape)

    # the mapping as predict runs it: the point -> voxel index exists already (it came with the
    # model input), each point takes its voxel's class, classes become LAS codes, the field is set
    def ours_mapping():
        las.classification = class_to_las_code(pred.ravel()[flat])

    def seed_mapping():
        point_cls = pred[idx[:, 2], idx[:, 1], idx[:, 0]]
        las.classification = np.vectorize(INV_LABEL_MAP_3D.get)(point_cls).astype(np.uint8)

    # stricter: the point -> voxel index computed again from the coordinates
    def ours_with_index():
        f, _ = bin_points(PointArrays.from_las(las), spec, with_height=False)
        las.classification = class_to_las_code(pred.ravel()[f])

    def seed_with_index():
        i = seed_point_index(las, spec.shape)
        point_cls = pred[i[:, 2], i[:, 1], i[:, 0]]
        las.classification = np.vectorize(INV_LABEL_MAP_3D.get)(point_cls).astype(np.uint8)

    def ours_features():  # the model's input (3 channels over 2.1 M voxels), not the mapping
        voxelize(PointArrays.from_las(las), spec, with_labels=False)

    t = timeit_interleaved({"plain": plain, "ours": ours, "seed": seed}, repeats)
    t_plain, t_ours, t_seed = t["plain"], t["ours"], t["seed"]
    m = timeit_interleaved(
        {
            "ours": ours_mapping,
            "seed": seed_mapping,
            "ours_idx": ours_with_index,
            "seed_idx": seed_with_index,
        },
        repeats,
    )
    f_ours, _ = timeit(ours_features, repeats)
    print(
        f"write-back on {KM_TILE.name} as uncompressed LAS ({n:,} points), median of {repeats} "
        "interleaved rounds:"
    )
    print(
        f"  plain laspy read + write:           {t_plain:6.3f} s  {n / t_plain / 1e6:6.2f} M pts/s"
    )
    print(
        f"  uxbseg read + index + map + write:  {t_ours:6.3f} s  {n / t_ours / 1e6:6.2f} M pts/s"
        f"  ({100 * (t_ours / t_plain - 1):+.0f}% vs plain)"
    )
    print(f"  seed-style read + map + write:      {t_seed:6.3f} s  {n / t_seed / 1e6:6.2f} M pts/s")
    for label, o, s in (
        ("mapping (lookup, codes, update)", m["ours"], m["seed"]),
        ("mapping + point index from x/y/z", m["ours_idx"], m["seed_idx"]),
    ):
        print(
            f"  {label}: uxbseg {o * 1e3:.1f} ms ({100 * o / t_plain:.0f}% of a plain read + "
            f"write), seed-style {s * 1e3:.1f} ms -> {s / o:.1f}x"
        )
    print(f"  end to end: uxbseg {t_seed / t_ours:.1f}x the seed-style write-back")
    print(
        f"  (model input, not part of the mapping: voxel features {f_ours * 1e3:.1f} ms, "
        f"{100 * f_ours / t_plain:.0f}% of a plain read + write)"
    )


def model_end_to_end(repeats: int, workdir: Path, tta: bool = False) -> None:
    import torch

    from uxbseg.config import load_config, packaged_config
    from uxbseg.models import UXBFusionModel
    from uxbseg.predict import PredictJob, predict_one

    src = _km_las(workdir)
    cfg = load_config(packaged_config("tiny"))
    seed_cfg = load_config(
        packaged_config("tiny"),
        [
            "model.fusion_impl=naive",
            "model.channels_last=false",
            "model.sdpa_inference=false",
            "model.onednn_batch1=false",
        ],
    )
    torch.manual_seed(0)
    ours = UXBFusionModel.from_config(cfg).eval()
    seed = UXBFusionModel.from_config(seed_cfg).eval()
    seed.load_state_dict(ours.state_dict())
    job = PredictJob(src, None, "km")
    device = torch.device("cpu")
    runs = {
        name: (lambda m=m, c=c, name=name: predict_one(m, c, job, workdir / name, device, tta=tta))
        for name, m, c in (("ours", ours, cfg), ("seed", seed, seed_cfg))
    }
    t = timeit_interleaved(runs, repeats)
    same = np.array_equal(
        np.load(workdir / "ours" / "pred_km.npy"), np.load(workdir / "seed" / "pred_km.npy")
    )
    n = laspy.open(src).header.point_count
    how = " with --tta" if tta else ""
    print(
        f"predict{how} end to end on {src.name} ({n:,} points), tiny model, same weights, median "
        f"of {repeats} interleaved rounds:"
    )
    for name, label in (("ours", "uxbseg"), ("seed", "seed formulation")):
        print(f"  {label:17s} {t[name]:6.3f} s  {n / t[name] / 1e6:6.2f} M pts/s")
    print(f"  uxbseg {t['seed'] / t['ours']:.2f}x the seed formulation; same voxel classes: {same}")


def windows_end_to_end(
    repeats: int, workdir: Path, side: float, batch: int, overlap: float
) -> None:
    """predict on the 1 km tile cut into windows of ``side`` overlapping by ``overlap``, one
    window at a time through the model against ``batch`` at a time (tiny model, same weights),
    and the file whole."""
    import torch

    from uxbseg.config import load_config, packaged_config
    from uxbseg.models import UXBFusionModel
    from uxbseg.predict import PredictJob, predict_one

    src = _km_las(workdir)
    cfg = load_config(packaged_config("tiny"))
    torch.manual_seed(0)
    model = UXBFusionModel.from_config(cfg).eval()
    job = PredictJob(src, None, "km")
    device = torch.device("cpu")
    results = {}

    def run(name: str, window: float | None, b: int):
        def go():
            results[name] = predict_one(
                model, cfg, job, workdir / name, device, window=window, batch=b, overlap=overlap
            )

        return go

    runs = {
        "whole": run("whole", None, 1),
        "batch1": run("batch1", side, 1),
        f"batch{batch}": run(f"batch{batch}", side, batch),
    }
    t = timeit_interleaved(runs, repeats)
    n = laspy.open(src).header.point_count
    k = results["batch1"].windows
    print(
        f"predict on {src.name} ({n:,} points) in {k} windows of {side:g} m (overlap "
        f"{overlap:g}), tiny model, median "
        f"of {repeats} interleaved rounds:"
    )
    print(f"  whole file, one tile  {t['whole']:6.2f} s")
    for b in (1, batch):
        dt = t[f"batch{b}"]
        print(f"  windows, batch {b:<2d}     {dt:6.2f} s  {1e3 * dt / k:6.1f} ms a window")
    print(f"  batch {batch}: {t['batch1'] / t[f'batch{batch}']:.2f}x batch 1")


def memory(points: int, workdir: Path, window: float | None = None) -> None:
    import torch

    from uxbseg.config import load_config, packaged_config
    from uxbseg.io.weights import save_weights
    from uxbseg.models import UXBFusionModel

    big = tiled_las(points, workdir / f"tiled_{points}.las")
    cfg = load_config(packaged_config("tiny"))
    torch.manual_seed(0)
    save_weights(UXBFusionModel.from_config(cfg), cfg, workdir / "w")
    weights = next((workdir / "w").glob("*.safetensors"))
    cmd = [
        sys.executable,
        "-m",
        "uxbseg",
        "predict",
        "--weights",
        str(weights),
        "--input",
        str(big),
        "--out",
        str(workdir / "pred"),
        "--window",
        "off" if window is None else f"{window:g}",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB
    n = laspy.open(big).header.point_count
    how = "whole" if window is None else f"in windows of {window:g} m"
    print(
        f"uxbseg predict on {n:,} points ({big.stat().st_size / 2**30:.2f} GiB LAS, tiny "
        f"model, {how}): {dt:.1f} s, peak RSS {peak:.2f} GiB (getrusage of the child process)"
    )


_PEAK = (
    "import resource, sys\n"
    "from uxbseg.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _child_peak(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GiB) of ``uxbseg ARGS`` in a child process of its own."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    kib = int(done.stderr.strip().splitlines()[-1])
    return time.perf_counter() - t0, kib / 1024**2


def memory_survey(points: int, workdir: Path, window: float, pieces: int) -> None:
    """Peak RSS of predict on the tiled LAS of :func:`memory` cut into ``pieces`` x ``pieces``
    files: as one survey (the default) and each file on its own, beside the whole file."""
    import torch

    from uxbseg.config import load_config, packaged_config
    from uxbseg.io.weights import save_weights
    from uxbseg.models import UXBFusionModel

    from .bench_survey import _cut

    big = tiled_las(points, workdir / f"tiled_{points}.las")
    folder = workdir / f"pieces_{points}_{pieces}"
    if not folder.is_dir():
        _cut(big, pieces, folder)
    cfg = load_config(packaged_config("tiny"))
    torch.manual_seed(0)
    save_weights(UXBFusionModel.from_config(cfg), cfg, workdir / "w")
    weights = str(next((workdir / "w").glob("*.safetensors")))
    n = laspy.open(big).header.point_count
    print(
        f"uxbseg predict, {n:,} points, windows of {window:g} m, tiny model; peak RSS of each "
        "run's own child process:"
    )
    runs = [
        ("the whole file", [str(big)], []),
        (f"{pieces}x{pieces} files, as a survey", [str(folder)], []),
        (f"{pieces}x{pieces} files, each on its own", [str(folder)], ["--no-survey"]),
    ]
    for label, inputs, extra in runs:
        out = workdir / "pred_survey"
        shutil.rmtree(out, ignore_errors=True)
        args = ["predict", "--weights", weights, "--input", *inputs, "--out", str(out)]
        dt, peak = _child_peak([*args, "--window", f"{window:g}", "--no-grids", *extra])
        print(f"  {label:34s} {dt:7.1f} s   peak RSS {peak:.2f} GiB")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/uxbseg-bench"))
    p.add_argument(
        "--memory-points",
        type=int,
        default=0,
        help="also measure peak RSS of uxbseg predict on a tiled LAS this large",
    )
    p.add_argument(
        "--memory-window",
        type=float,
        metavar="SIDE",
        help="with --memory-points: predict it cut into windows of SIDE metres (default: whole)",
    )
    p.add_argument(
        "--memory-pieces",
        type=int,
        metavar="K",
        help="with --memory-points and --memory-window: also cut it into K x K files and "
        "measure them as a survey and one by one",
    )
    p.add_argument(
        "--model",
        action="store_true",
        help="also time predict end to end with the tiny model against its seed formulation",
    )
    p.add_argument("--tta", action="store_true", help="with --model: four mirror images a tile")
    p.add_argument(
        "--windows",
        type=float,
        metavar="SIDE",
        help="also time predict on the 1 km tile cut into windows of SIDE metres",
    )
    p.add_argument("--batch", type=int, default=2, help="with --windows: windows per batch (2)")
    p.add_argument(
        "--overlap", type=float, default=0.25, help="with --windows: their least overlap (0.25)"
    )
    a = p.parse_args(argv)
    mapping(a.repeats, a.workdir)
    if a.model:
        model_end_to_end(a.repeats, a.workdir, a.tta)
    if a.windows:
        windows_end_to_end(a.repeats, a.workdir, a.windows, a.batch, a.overlap)
    if a.memory_points:
        memory(a.memory_points, a.workdir, a.memory_window)
    if a.memory_points and a.memory_pieces and a.memory_window:
        memory_survey(a.memory_points, a.workdir, a.memory_window, a.memory_pieces)


if __name__ == "__main__":
    main()
