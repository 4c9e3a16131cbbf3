"""A run over a national delivery: finding the surveys among N files and joining the finds cut by
their seams, against the all-pairs forms they replace (measured in the same run).

    python -m benchmarks scale [--sides 30 55] [--big 100]

Files are 1 km tiles on a ``side`` x ``side`` grid (``side``² files); each has 40 finds along
its edges. Reference: the n x n matrices of every file pair (``find_surveys`` before the
eighteenth session) and each edge find against every other (``merge_finds`` before it). The
``--big`` grid (10,000 files by default) runs the current forms alone: the references would take
gigabytes and minutes there.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from uxbseg.finds import SEAM_TOLERANCE, Find, merge_finds
from uxbseg.survey import SURVEY_OVERLAP, SurveyFile, _file_pairs


def grid_files(side: int) -> list[SurveyFile]:
    """``side`` x ``side`` touching 1 km files, as their headers describe them."""
    frame = ((0.01,) * 3, (0.0,) * 3)
    boxes = [
        (1e3 * c, 1e3 * r, 1e3 * c + 1e3, 1e3 * r + 1e3) for r in range(side) for c in range(side)
    ]
    return [SurveyFile(Path(f"t_{k}.laz"), None, b, *frame, 1, 2154) for k, b in enumerate(boxes)]


def dense_pairs(entries: list[SurveyFile], side: float) -> dict[str, np.ndarray]:
    """The reference: every pair's relation as n x n matrices."""
    b = np.array([f.bounds for f in entries])
    x0, y0, x1, y1 = (b[:, k] for k in range(4))
    gap_x = np.maximum(x0[:, None] - x1[None, :], x0[None, :] - x1[:, None])
    gap_y = np.maximum(y0[:, None] - y1[None, :], y0[None, :] - y1[:, None])
    area = (x1 - x0) * (y1 - y0)
    shared = np.maximum(-gap_x, 0) * np.maximum(-gap_y, 0)
    smaller = np.minimum(area[:, None], area[None, :])
    same = shared > SURVEY_OVERLAP * smaller
    near = np.triu((np.maximum(gap_x, gap_y) <= side) & ~same, k=1)
    return {"near": np.nonzero(near), "same": np.nonzero(np.triu(same, k=1))}


def edge_finds(side: int, per_file: int = 40, seed: int = 1):
    """Finds along the edges of each file of the grid (``merge_finds``' input)."""
    rng = np.random.default_rng(seed)
    files = []
    for r in range(side):
        for c in range(side):
            x0, y0 = 1e3 * c, 1e3 * r
            finds = []
            for _ in range(per_file):
                w, h = rng.uniform(2, 30, 2)
                edge = rng.integers(4)
                xmin = {0: x0, 1: x0 + 1e3 - w}.get(edge, x0 + rng.uniform(0, 1e3 - w))
                ymin = {2: y0, 3: y0 + 1e3 - h}.get(edge, y0 + rng.uniform(0, 1e3 - h))
                kind = "structure" if rng.random() < 0.7 else "plazuela"
                a = float(w * h * 0.6)
                finds.append(Find(kind, xmin + w / 2, ymin + h / 2, a, int(4 * a), xmin, ymin,
                                  xmin + w, ymin + h, score=float(rng.random())))  # fmt: skip
            files.append((f"t_{r}_{c}", (x0, y0, x0 + 1e3, y0 + 1e3), finds))
    return files


def all_pairs_touching(files) -> int:
    """The reference: each find at an edge against every later one (pairs of other files)."""
    rows = [(name, f) for name, _, finds in files for f in finds]
    box = np.array([[f.xmin, f.ymin, f.xmax, f.ymax] for _, f in rows])
    t, pairs = SEAM_TOLERANCE, 0
    for i in range(len(rows)):
        j = np.arange(i + 1, len(rows))
        touch = (box[j, 0] <= box[i, 2] + t) & (box[i, 0] <= box[j, 2] + t)
        touch &= (box[j, 1] <= box[i, 3] + t) & (box[i, 1] <= box[j, 3] + t)
        pairs += sum(rows[k][0] != rows[i][0] for k in j[touch])
    return pairs


def measured(fn, *args, memory: bool = True):
    """(result, seconds, peak traced MiB or None) of ``fn(*args)``: timed untraced, then (with
    ``memory``) run again under tracemalloc, which slows Python's allocations many times."""
    t = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t
    if not memory:
        return out, seconds, None
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__)
    ap.add_argument("--sides", type=int, nargs="+", default=[30, 55], help="grids to compare")
    ap.add_argument("--big", type=int, default=100, help="a grid run without the references")
    args = ap.parse_args(argv)
    print(
        "| files | survey pairs in blocks (s, MiB) | n x n matrices (s, MiB) | ratio (time, MiB) |"
    )
    print("|---|---|---|---|")
    for side in args.sides:
        files = grid_files(side)
        got, t_new, m_new = measured(_file_pairs, files, 100.0)
        want, t_ref, m_ref = measured(dense_pairs, files, 100.0)
        for key in want:  # the same pairs, in the same order
            assert all(np.array_equal(a, b) for a, b in zip(got[key], want[key], strict=True))
        print(f"| {side * side:,} | {t_new:.2f}, {m_new:.0f} | {t_ref:.2f}, {m_ref:.0f} | "
              f"{t_ref / t_new:.1f}x, {m_ref / m_new:.1f}x |")  # fmt: skip
    _, t_big, m_big = measured(_file_pairs, grid_files(args.big), 100.0)
    print(f"| {args.big**2:,} | {t_big:.2f}, {m_big:.0f} | - | - |")
    print()
    print("| files | edge finds | merge_finds, swept (s) | every pair (s) | ratio |")
    print("|---|---|---|---|---|")
    for side in args.sides:
        files = edge_finds(side)
        n = sum(len(f) for _, _, f in files)
        _, t_new, _ = measured(merge_finds, files, memory=False)
        _, t_ref, _ = measured(all_pairs_touching, files, memory=False)
        print(f"| {side * side:,} | {n:,} | {t_new:.2f} | {t_ref:.2f} | {t_ref / t_new:.1f}x |")
    files = edge_finds(args.big)
    _, t_big, _ = measured(merge_finds, files, memory=False)
    print(f"| {args.big**2:,} | {sum(len(f) for _, _, f in files):,} | {t_big:.2f} | - | - |")
