"""Procedural UXB-like tiles: hilly terrain with natural distractors, plazuelas and mounds.

Each tile is written in the exact UXB layout (``pair_XXXX/`` with ``tpi_100m_*.png``,
``uxb_msk_pl_st_*.png`` and a LAS file). The image is the TPI (100 m radius) of the surface,
computed with a 100 m margin beyond the tile so its edges are valid, colourised and resized to
512x512; the mask holds 0/76/150. Natural knolls, ridges, terraces and gullies of the same sizes as
the archaeology are labelled ground, so a model must learn shape, not "anything raised".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
from PIL import Image
from scipy import ndimage

from ..classes import CLASSES
from ..errors import BadDataError
from ..io.raster import TPI_CLIP_M, TPI_RADIUS_M, colourise_tpi, tpi

__all__ = ["SynthParams", "synth_dataset", "synth_tile"]

log = logging.getLogger(__name__)

GROUND, PLAZUELA, STRUCTURE = (c.index for c in CLASSES)


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the generator (all lengths in metres)."""

    tile_size: float = 100.0
    cell: float = 0.5  # surface raster resolution
    margin: float = 100.0  # = TPI radius, so the tile's TPI is exact
    tpi_radius: float = TPI_RADIUS_M
    tpi_clip: float = TPI_CLIP_M  # colour ramp saturates at +-4 m
    image_size: int = 512
    relief: tuple[float, float] = (8.0, 40.0)  # terrain amplitude range over the window
    density: tuple[float, float] = (2.0, 10.0)  # points per m2
    z_noise: tuple[float, float] = (0.03, 0.08)
    empty_tile_fraction: float = 0.2
    plazuelas: tuple[int, int] = (0, 2)
    plazuela_size: tuple[float, float] = (14.0, 40.0)
    plazuela_height: tuple[float, float] = (0.3, 1.5)
    plazuela_structures: tuple[int, int] = (2, 4)
    isolated_structures: tuple[int, int] = (1, 4)
    structure_size: tuple[float, float] = (5.0, 16.0)
    structure_height: tuple[float, float] = (1.0, 6.0)
    knolls: tuple[int, int] = (1, 6)
    ridges: tuple[int, int] = (0, 3)
    terraces: tuple[int, int] = (0, 3)
    gullies: tuple[int, int] = (0, 3)
    unclassified_fraction: tuple[float, float] = (0.0, 0.05)
    epsg: int = 32616  # WGS 84 / UTM 16N (Maya lowlands)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _rotated(xx, yy, cx, cy, angle):
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    return c * dx + s * dy, -s * dx + c * dy


def _box_profile(xx, yy, cx, cy, half_a, half_b, angle, edge):
    """1 inside a rotated rectangle, sloping to 0 over ``edge`` metres outside it."""
    u, v = _rotated(xx, yy, cx, cy, angle)
    out = np.maximum(np.abs(u) - half_a, 0.0) ** 2 + np.maximum(np.abs(v) - half_b, 0.0) ** 2
    return _smoothstep(1.0 - np.sqrt(out) / edge)


def _mound_profile(xx, yy, cx, cy, half_a, half_b, angle, top_frac):
    """Truncated pyramid with a rounded (superellipse) footprint; 1 on the flat top."""
    u, v = _rotated(xx, yy, cx, cy, angle)
    r = (np.abs(u / half_a) ** 4 + np.abs(v / half_b) ** 4) ** 0.25
    return _smoothstep((1.0 - r) / (1.0 - top_frac))


def _terrain(rng, shape, cell, p: SynthParams) -> np.ndarray:
    # multi-scale smooth noise, filtered in the Fourier domain (a Gaussian of 120 cells in space
    # would dominate the generator's run time)
    spec = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f2 = fx**2 + fy**2
    z = np.zeros(shape)
    for sigma_m, weight in ((60.0, 1.0), (25.0, 0.35), (8.0, 0.08)):
        sigma = sigma_m / cell
        n = np.fft.irfft2(spec * np.exp(-2 * np.pi**2 * sigma**2 * f2), s=shape)
        z += weight * n / (n.std() + 1e-12)
    z -= z.min()
    return z / (z.max() + 1e-12) * rng.uniform(*p.relief)


def _add_distractors(rng, z, xx, yy, extent, p: SynthParams) -> None:
    lo, hi = extent
    for _ in range(rng.integers(p.knolls[0], p.knolls[1] + 1)):  # natural rounded knolls
        cx, cy = rng.uniform(lo, hi, 2)
        sigma = rng.uniform(3.0, 15.0)
        z += rng.uniform(0.8, 5.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    for _ in range(rng.integers(p.ridges[0], p.ridges[1] + 1)):  # elongated ridges
        cx, cy = rng.uniform(lo, hi, 2)
        u, v = _rotated(xx, yy, cx, cy, rng.uniform(0, np.pi))
        w, length = rng.uniform(3.0, 10.0), rng.uniform(40.0, 150.0)
        z += rng.uniform(1.0, 4.0) * np.exp(-(v**2) / (2 * w**2) - (u**2) / (2 * length**2))
    for _ in range(rng.integers(p.terraces[0], p.terraces[1] + 1)):  # agricultural terraces
        cx, cy = rng.uniform(lo, hi, 2)
        u, _v = _rotated(xx, yy, cx, cy, rng.uniform(0, 2 * np.pi))
        z += rng.uniform(0.4, 1.5) * _smoothstep(u / rng.uniform(1.0, 3.0) + 0.5)
    for _ in range(rng.integers(p.gullies[0], p.gullies[1] + 1)):  # erosion gullies
        cx, cy = rng.uniform(lo, hi, 2)
        u, v = _rotated(xx, yy, cx, cy, rng.uniform(0, np.pi))
        w, length = rng.uniform(1.5, 5.0), rng.uniform(30.0, 120.0)
        z -= rng.uniform(0.8, 3.0) * np.exp(-(v**2) / (2 * w**2) - (u**2) / (2 * length**2))


def _add_archaeology(rng, z, label, xx, yy, p: SynthParams) -> None:
    t = p.tile_size
    if rng.random() < p.empty_tile_fraction:
        return
    mounds = []  # (cx, cy, half_a, half_b, angle, height)
    for _ in range(rng.integers(p.plazuelas[0], p.plazuelas[1] + 1)):
        a, b = rng.uniform(*p.plazuela_size, 2) / 2
        cx, cy = rng.uniform(a + 2, t - a - 2), rng.uniform(b + 2, t - b - 2)
        angle, h, edge = rng.uniform(0, np.pi), rng.uniform(*p.plazuela_height), rng.uniform(1, 3)
        prof = _box_profile(xx, yy, cx, cy, a, b, angle, edge)
        z += h * prof
        label[prof > 0.5] = PLAZUELA
        # 2-4 structures on the platform's sides around an open patio
        sides = rng.permutation(4)[
            : rng.integers(p.plazuela_structures[0], p.plazuela_structures[1] + 1)
        ]
        for side in sides:
            along = a if side in (0, 1) else b
            across = b if side in (0, 1) else a
            ma = rng.uniform(0.3, 0.7) * along
            mb = rng.uniform(2.5, min(6.0, max(2.6, across * 0.4)))
            off = across - mb * 0.9
            sign = 1 if side % 2 == 0 else -1
            du, dv = (0.0, sign * off) if side in (0, 1) else (sign * off, 0.0)
            ca, sa = np.cos(angle), np.sin(angle)
            mx, my = cx + ca * du - sa * dv, cy + sa * du + ca * dv
            ha, hb = (ma, mb) if side in (0, 1) else (mb, ma)
            mounds.append((mx, my, ha, hb, angle, rng.uniform(1.0, 4.0)))
    for _ in range(rng.integers(p.isolated_structures[0], p.isolated_structures[1] + 1)):
        a, b = rng.uniform(*p.structure_size, 2) / 2
        cx, cy = rng.uniform(a + 1, t - a - 1), rng.uniform(b + 1, t - b - 1)
        mounds.append((cx, cy, a, b, rng.uniform(0, np.pi), rng.uniform(*p.structure_height)))
    for cx, cy, a, b, angle, h in mounds:
        prof = _mound_profile(xx, yy, cx, cy, a, b, angle, rng.uniform(0.2, 0.5))
        z += h * prof
        label[h * prof > 0.15] = STRUCTURE


def _geokeys(epsg: int) -> laspy.VLR:
    # GeoKeyDirectoryTag: header (1, 1, 0, n_keys) then (key, location, count, value) entries
    keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg]
    return laspy.VLR(
        "LASF_Projection",
        34735,
        "GeoTiff GeoKeyDirectoryTag",
        np.array(keys, dtype="<u2").tobytes(),
    )


def synth_tile(rng: np.random.Generator, origin: tuple[float, float], p: SynthParams):
    """One tile: (LasData, RGB image (S, S, 3) uint8, mask (S, S) uint8 with 0/76/150)."""
    n_tile = round(p.tile_size / p.cell)
    n_m = round(p.margin / p.cell)
    n = n_tile + 2 * n_m
    coords = (np.arange(n) - n_m + 0.5) * p.cell  # cell centres, tile spans [0, tile_size]
    xx, yy_up = np.meshgrid(coords, coords)
    yy = yy_up[::-1]  # row 0 = north (largest y)
    z = _terrain(rng, (n, n), p.cell, p)
    _add_distractors(rng, z, xx, yy, (-p.margin, p.tile_size + p.margin), p)
    label = np.zeros((n, n), dtype=np.uint8)
    _add_archaeology(rng, z, label, xx, yy, p)

    inner = slice(n_m, n_m + n_tile)
    tpi_tile = tpi(z, p.cell, p.tpi_radius)[inner, inner]
    image = colourise_tpi(tpi_tile, p.tpi_clip, p.image_size)
    values = np.array([c.mask_value for c in CLASSES], dtype=np.uint8)
    lab_tile = label[inner, inner]
    mask = np.asarray(
        Image.fromarray(values[lab_tile]).resize(
            (p.image_size, p.image_size), Image.Resampling.NEAREST
        )
    )

    # points: uniform in the tile plus its four corners (so the XY bbox is the image footprint)
    n_pts = int(rng.uniform(*p.density) * p.tile_size**2)
    px = np.concatenate([rng.uniform(0, p.tile_size, n_pts), [0, p.tile_size, 0, p.tile_size]])
    py = np.concatenate([rng.uniform(0, p.tile_size, n_pts), [0, 0, p.tile_size, p.tile_size]])
    # bilinear sample of the surface (grid index space: col from x, row from north)
    fc = px / p.cell - 0.5 + n_m
    fr = (p.tile_size - py) / p.cell - 0.5 + n_m
    pz = ndimage.map_coordinates(z, [fr, fc], order=1, mode="nearest")
    pz += rng.normal(0, rng.uniform(*p.z_noise), len(pz))
    ri = np.clip(np.round(fr).astype(int), 0, n - 1)
    ci = np.clip(np.round(fc).astype(int), 0, n - 1)
    codes = np.array([c.las_code for c in CLASSES], dtype=np.uint8)[label[ri, ci]]
    # a few low returns left unclassified (code 1): present in geometry, ignored by labels
    unc = rng.random(len(pz)) < rng.uniform(*p.unclassified_fraction)
    pz[unc] += rng.uniform(0.3, 3.0, unc.sum())
    codes[unc] = 1

    header = laspy.LasHeader(point_format=1, version="1.2")
    header.scales = np.array([0.01, 0.01, 0.01])
    ox, oy = origin
    header.offsets = np.array([np.floor(ox), np.floor(oy), 0.0])
    header.vlrs.append(_geokeys(p.epsg))
    las = laspy.LasData(header)
    las.x = ox + px
    las.y = oy + py
    las.z = 100.0 + pz
    slope = np.hypot(*np.gradient(z, p.cell))[ri, ci]
    las.intensity = np.clip(rng.normal(900, 120, len(pz)) - 150 * slope, 0, 65535).astype(np.uint16)
    las.return_number = np.where(unc, 1, np.where(rng.random(len(pz)) < 0.3, 2, 1)).astype(np.uint8)
    las.number_of_returns = np.where(las.return_number == 2, 2, np.where(unc, 2, 1)).astype(
        np.uint8
    )
    las.classification = codes
    order = np.argsort(py + rng.uniform(0, 2.0, len(py)))  # flight-line-like acquisition order
    las.points = las.points[order]
    las.gps_time = 3.0e8 + np.arange(len(pz)) * 1e-5 + rng.uniform(0, 1e3)
    return las, image, mask


def synth_dataset(
    out: str | Path,
    splits: dict[str, int] | None = None,
    seed: int = 0,
    params: SynthParams | None = None,
) -> list[Path]:
    """Write a synthetic dataset in the UXB layout; returns the pair folders written.

    Writing again over an earlier synthetic dataset replaces its files; a pair folder that holds
    any other file (a real dataset's) is refused before anything is written.
    """
    p = params or SynthParams()
    splits = splits if splits is not None else {"train": 40, "test": 12, "predict": 8}
    out = Path(out)
    plan = []  # (split index, tile index, folder, origin, file names)
    for s_i, (split, count) in enumerate(splits.items()):
        for i in range(count):
            k = len(plan)
            origin = (250_000.0 + 1000.0 * (k % 20), 1_950_000.0 + 1000.0 * (k // 20))
            tag = f"{int(origin[0])}_{int(origin[1])}"
            names = (f"tpi_100m_{tag}.png", f"uxb_msk_pl_st_{tag}.png", f"tile_{tag}.las")
            plan.append((s_i, i, out / split / f"pair_{i:04d}", origin, names))
    for _, _, folder, _, names in plan:
        others = sorted(set(os.listdir(folder)) - set(names)) if folder.is_dir() else []
        if others:
            raise BadDataError(
                f"{folder} already holds {', '.join(others[:3])}"
                f"{' ...' if len(others) > 3 else ''}: synthetic tiles would be mixed into "
                "that pair; write the synthetic dataset to an empty folder"
            )
    folders = []
    for s_i, i, folder, origin, (image_name, mask_name, las_name) in plan:
        rng = np.random.default_rng([seed, s_i, i])
        las, image, mask = synth_tile(rng, origin, p)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / image_name)
        Image.fromarray(mask).save(folder / mask_name)
        las.write(folder / las_name)
        folders.append(folder)
        log.debug("wrote %s (%d points)", folder, len(las.points))
    return folders
