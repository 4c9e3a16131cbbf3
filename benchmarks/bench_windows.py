"""Prediction windows on labelled survey-sized tiles: point IoU and time against the overlap.

A model trained on 100 m tiles, scored on synthetic tiles several times that size (the same
generator, the archaeology and the natural distractors scaled with the area) exactly as
``predict`` classifies them: cut into windows of the training tiles' side, at each overlap, and
once squeezed whole into one grid (``--window off``, the behaviour before windows).

    python -m benchmarks windows --weights RUN/FusedSwinCrossEntropy_tpi_clr_swin_best.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from uxbseg.data.synthetic import SynthParams, synth_dataset
from uxbseg.evaluate import evaluate
from uxbseg.io.weights import load_model


def survey_params(size: float) -> SynthParams:
    """The generator's tiles at ``size`` metres a side, with as much archaeology per hectare of
    tile and as many natural distractors per hectare of terrain (tile and TPI margin) as its
    100 m tiles, none of them empty, and images at the same metres per pixel."""
    base = SynthParams()
    tile = (size / base.tile_size) ** 2
    terrain = ((size + 2 * base.margin) / (base.tile_size + 2 * base.margin)) ** 2

    def scaled(lo_hi: tuple[int, int], area: float) -> tuple[int, int]:
        return round(lo_hi[0] * area), round(lo_hi[1] * area)

    return dataclasses.replace(
        base,
        tile_size=size,
        image_size=round(base.image_size * size / base.tile_size),
        empty_tile_fraction=0.0,
        plazuelas=scaled(base.plazuelas, tile),
        isolated_structures=scaled(base.isolated_structures, tile),
        knolls=scaled(base.knolls, terrain),
        ridges=scaled(base.ridges, terrain),
        terraces=scaled(base.terraces, terrain),
        gullies=scaled(base.gullies, terrain),
    )


def survey_tiles(data: Path, seed: int, size: float, tiles: int) -> Path:
    """The dataset of ``tiles`` synthetic test tiles of ``size`` metres (:func:`survey_params`)
    under ``data``, written on first use and reused after (the windows and survey benchmarks
    score the same tiles)."""
    root = data / f"v2_s{seed}_{size:g}m_{tiles}"
    if not (root / "test").is_dir():
        synth_dataset(root, {"test": tiles}, seed=seed, params=survey_params(size))
    return root


def survey_arguments(ap: argparse.ArgumentParser) -> None:
    """The weights and the :func:`survey_tiles` options the windows and survey benchmarks share."""
    ap.add_argument("--weights", type=Path, required=True, help="weights trained on 100 m tiles")
    ap.add_argument("--tiles", type=int, default=4, help="survey tiles to score (default 4)")
    ap.add_argument("--size", type=float, default=300.0, help="their side in metres")
    ap.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/uxbseg-bench-windows"))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks windows", description=__doc__)
    survey_arguments(ap)
    ap.add_argument(
        "--overlaps", type=float, nargs="+", default=[0.0, 0.25, 0.5], help="overlaps to score"
    )
    args = ap.parse_args(argv)
    model, cfg = load_model(args.weights)
    root = survey_tiles(args.data, args.seed, args.size, args.tiles)
    print(
        f"{args.tiles} synthetic tiles of {args.size:g} m (seed {args.seed}), weights trained on "
        f"{cfg.grid.tile_extent} m tiles ({args.weights}), {torch.get_num_threads()} CPU threads"
    )
    print(
        "| windows | overlap | point IoU plazuela / structure / ground | voxel IoU pl / st "
        "| objects found / true, real / predicted: plazuela; structure | time |"
        "\n|---|---|---|---|---|---|"
    )
    for overlap in [None, *args.overlaps]:
        t0 = time.perf_counter()
        window = "off" if overlap is None else "auto"
        res = evaluate(model, cfg, root, progress=False, window=window, overlap=overlap or 0.0)
        dt = time.perf_counter() - t0
        pts, vox = res["points"]["metrics"], res["voxels"]["metrics"]
        label = "off (whole tile)" if overlap is None else f"{cfg.grid.tile_extent:g} m"
        objects = "; ".join(
            f"{o['found']}/{o['true']}, {o['real']}/{o['predicted']}"
            for o in res["objects"].values()
        )
        print(
            f"| {label} | {'-' if overlap is None else f'{overlap:g}'} | "
            f"{pts['iou_plazuela']:.3f} / {pts['iou_structure']:.3f} / {pts['iou_ground']:.3f} | "
            f"{vox['iou_plazuela']:.3f} / {vox['iou_structure']:.3f} | {objects} | {dt:.1f} s |"
        )
