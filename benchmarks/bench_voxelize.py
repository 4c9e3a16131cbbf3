"""Voxelisation throughput (points/s): uxbseg's voxeliser vs the seed's las_to_volume."""

from __future__ import annotations

import argparse
from pathlib import Path

import laspy

from uxbseg.data.voxelize import GridSpec, voxelize
from uxbseg.io.las import PointArrays

from .common import tiled_las, timeit, timeit_interleaved
from .seed_reference import seed_las_to_volume


def run(points: int, repeats: int, workdir: Path) -> dict:
    path = tiled_las(points, workdir / f"tiled_{points}.las")
    las = laspy.read(path)
    n = len(las.points)
    spec = GridSpec((32, 256, 256))
    t = timeit_interleaved(
        {
            "ours": lambda: voxelize(PointArrays.from_las(las), spec),
            "seed": lambda: seed_las_to_volume(las, spec.shape),
        },
        repeats,
    )
    t_ours, t_seed = t["ours"], t["seed"]
    t_read, _ = timeit(lambda: laspy.read(path), repeats)
    res = {"points": n, "ours_s": t_ours, "seed_s": t_seed, "read_s": t_read}
    print(f"voxelise {n:,} points, grid {spec.shape}, median of {repeats} interleaved rounds:")
    print(
        f"  uxbseg voxelize (3 features + labels + point index): {t_ours:7.3f} s "
        f"{n / t_ours / 1e6:7.2f} M points/s"
    )
    print(
        f"  seed las_to_volume (label volume only):             {t_seed:7.3f} s "
        f"{n / t_seed / 1e6:7.2f} M points/s"
    )
    print(
        f"  ratio: uxbseg is {t_seed / t_ours:.1f}x faster (LAS read, same for both: "
        f"{t_read:.3f} s)"
    )
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--points", type=int, default=3_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/uxbseg-bench"))
    a = p.parse_args(argv)
    run(a.points, a.repeats, a.workdir)


if __name__ == "__main__":
    main()
