"""Data pipeline throughput: samples/s delivered by the DataLoader, cold and with the voxel cache.

Prints the per-worker rate so the rate of a bigger machine can be read off (the pipeline scales
with workers until the disk or the cores run out).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from torch.utils.data import DataLoader

from uxbseg.config import load_config, packaged_config
from uxbseg.data.cache import VoxelCache
from uxbseg.data.dataset import UXBDataset
from uxbseg.data.pairs import find_pairs
from uxbseg.data.synthetic import synth_dataset
from uxbseg.data.voxelize import GridSpec


def _rate(ds, workers: int) -> float:
    loader = DataLoader(ds, batch_size=1, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=["tiny", "seed"], default="seed")
    p.add_argument("--tiles", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/uxbseg-bench"))
    a = p.parse_args(argv)
    root = a.workdir / f"synth{a.tiles}"
    if not (root / "train").is_dir():
        synth_dataset(root, {"train": a.tiles}, seed=1)
    cfg = load_config(packaged_config(a.config), ["model.pretrained_2d=null"])
    grid = GridSpec.from_config(cfg.grid)
    pairs = find_pairs(root, "train")
    cache_dir = a.workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    print(
        f"{a.config} grid {grid.shape}, image {cfg.data.image_size}, {len(pairs)} synthetic "
        "tiles (~30-100k points each)"
    )
    for w in a.workers:
        cold = _rate(UXBDataset(pairs, grid, cfg.data.image_size), w)
        cache = VoxelCache(cache_dir, grid)
        _rate(UXBDataset(pairs, grid, cfg.data.image_size, cache=cache), w)  # fill
        warm = _rate(UXBDataset(pairs, grid, cfg.data.image_size, cache=cache), w)
        per = max(w, 1)
        print(
            f"  workers {w}: cold {cold:6.1f} samples/s ({cold / per:5.1f} per worker), "
            f"cached {warm:6.1f} samples/s ({warm / per:5.1f} per worker), "
            f"cache {warm / cold:.1f}x"
        )


if __name__ == "__main__":
    main()
