"""Helpers shared by the benchmarks: test files, timing, memory."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import laspy
import numpy as np

REAL_LAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "las"
KM_TILE = REAL_LAS / "test_semis_2023_0292_6833_LA93_IGN69_extra_dims.laz"


def tiled_las(n_points: int, out: Path, source: Path = KM_TILE) -> Path:
    """A large LAS made by tiling a real file side by side (cached in ``out``)."""
    if out.is_file():
        return out
    if not source.is_file():
        raise SystemExit(f"{source} not found: the benchmark needs ../shared/data/real/las")
    src = laspy.read(source)
    reps = -(-n_points // len(src.points))
    cols = int(np.ceil(np.sqrt(reps)))
    span_x = int(src.X.max() - src.X.min()) + 1
    span_y = int(src.Y.max() - src.Y.min()) + 1
    header = laspy.LasHeader(point_format=src.header.point_format, version=src.header.version)
    header.scales, header.offsets = src.header.scales, src.header.offsets
    out.parent.mkdir(parents=True, exist_ok=True)
    with laspy.open(out, mode="w", header=header) as writer:
        for r in range(reps):
            pts = src.points.copy()
            pts.X = src.X + (r % cols) * span_x
            pts.Y = src.Y + (r // cols) * span_y
            writer.write_points(pts)
    return out


def sync(device) -> None:
    """Wait for a GPU's queued work (a no-op on the CPU), so that wall time covers it."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def timeit(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs after one untimed warm-up run."""
    fn()  # page cache, first-call imports and allocations: the same for every contender
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def timeit_interleaved(fns: dict, repeats: int = 5) -> dict:
    """Median wall time of each function, run in turn each round (after one warm-up round), so
    that drift in the machine's load falls on every contender alike."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
