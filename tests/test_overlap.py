"""Tiles that cover the same ground: the terrain rasters, and inspect's notes."""

import shutil

import laspy
import numpy as np
import pytest

from uxbseg.cli import main
from uxbseg.data.overlap import GROUND_CELL, SAME_TERRAIN, GroundRaster, shared_ground


def _terrain(x0, y0, side=100.0, n=20_000, seed=0, lift=0.0, bumps=0.0):
    """Points over a square with a sloping terrain (and a wavy one with ``bumps``)."""
    rng = np.random.default_rng(seed)
    x = x0 + rng.uniform(0, side, n)
    y = y0 + rng.uniform(0, side, n)
    z = 50.0 + 0.05 * x + 0.02 * y + bumps * np.sin(x / 7.0) * np.cos(y / 5.0) + lift
    return x, y, z


def test_the_raster_holds_the_lowest_point_of_each_cell():
    x = np.array([0.5, 1.0, 5.0, 9.9, 9.9])
    y = np.array([0.5, 3.9, 0.1, 9.0, 9.5])
    z = np.array([3.0, 1.0, 7.0, 2.0, 5.0])
    g = GroundRaster.from_points(x, y, z)  # 4 m cells: (0, 0), (0, 1), (2, 2) hold points
    cells = {(int(r), int(c)): float(v) for r, c, v in zip(g.rows, g.cols, g.zmin)}
    assert cells == {(0, 0): 1.0, (0, 1): 7.0, (2, 2): 2.0}
    assert g.bounds == (0.5, 0.1, 9.9, 9.5)
    # the grid is anchored at the origin: a tile elsewhere is on its own cells
    far = GroundRaster.from_points(x + 1003.0, y - 17.0, z)
    assert (int(far.cols.min()), int(far.rows.min())) == (250, -5)
    # a stray point 100 km off costs one cell, not the box between
    stray = GroundRaster.from_points(np.append(x, 1e5), np.append(y, 1e5), np.append(z, 0.0))
    assert len(stray.zmin) == 4  # (sorted cells, not a raster over the box)
    for k in ("rows", "cols", "zmin"):  # the same cells as the dense raster's, then the stray
        np.testing.assert_array_equal(getattr(stray, k)[:3], getattr(g, k))
    assert (stray.rows[3], stray.cols[3], stray.zmin[3]) == (25_000, 25_000, 0.0)


def test_shared_ground_tells_the_same_place_from_the_same_numbers():
    a = GroundRaster.from_points(*_terrain(0, 0, bumps=3.0))
    # the eastern half of a, surveyed again (other points, the same terrain)
    again = GroundRaster.from_points(*_terrain(50, 0, side=50.0, seed=1, bumps=3.0))
    sg = shared_ground(a, again)
    assert sg.share == pytest.approx(1.0, abs=0.01)  # again lies wholly in a
    assert sg.same and sg.dz < SAME_TERRAIN
    half = GroundRaster.from_points(*_terrain(50, 0, side=100.0, seed=2, bumps=3.0))
    assert shared_ground(a, half).share == pytest.approx(0.5, abs=0.01)
    assert shared_ground(a, half).same
    # another place in the same local coordinates: the boxes agree, the terrain does not
    other = GroundRaster.from_points(*_terrain(0, 0, seed=3, lift=8.0, bumps=1.0))
    sg = shared_ground(a, other)
    assert sg.share == pytest.approx(1.0, abs=0.01) and sg.dz > 3.0 and not sg.same
    # tiles cut side by side from one area touch: no shared ground, however equal the terrain
    x, y, z = _terrain(0, 0, side=200.0, n=40_000, bumps=3.0)
    west, east = x < 100.0, x >= 100.0
    sg = shared_ground(
        GroundRaster.from_points(x[west], y[west], z[west]),
        GroundRaster.from_points(x[east], y[east], z[east]),
    )
    assert sg is None or (sg.share < 0.001 and sg.dz is None)
    # a sliver narrower than a cell: too little to compare
    sliver = GroundRaster.from_points(*_terrain(100.0 - GROUND_CELL / 2, 0, bumps=3.0))
    sg = shared_ground(a, sliver)
    assert sg.share < 0.05 and sg.dz is None and not sg.same


def _write_like(src, dest, lift=0.0):
    las = laspy.read(src)
    las.z = np.asarray(las.z) + lift
    las.write(dest)


def test_inspect_notes_a_test_tile_on_training_ground(tiny_dataset, tmp_path, capsys, monkeypatch):
    from uxbseg.data import overlap

    monkeypatch.setattr(overlap, "_BLOCK", 1)  # each tile against the others in its own block
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    train0 = root / "train" / "pair_0000"
    # a copy of a training tile among the test tiles: leakage
    shutil.copytree(train0, root / "test" / "pair_0007")
    # a training tile's box with other terrain (another place in the same numbers): no note
    other = root / "test" / "pair_0008"
    shutil.copytree(root / "train" / "pair_0001", other)
    las = next(other.glob("*.las"))
    _write_like(las, las, lift=25.0)
    # the same training tile twice in train/
    shutil.copytree(root / "train" / "pair_0002", root / "train" / "pair_0009")
    assert main(["inspect", str(root)]) == 0  # notes, not problems
    out = capsys.readouterr().out
    assert (
        "note pair_0007: covers the ground of train/pair_0000 (100% of the smaller tile; "
        "terrain within a median 0.00 m)" in out
    )
    assert "note pair_0008: covers" not in out
    assert "note pair_0009: the same ground as train/pair_0002" in out and "trained on twice" in out
    # the synthetic tiles lie apart: nothing else is noted
    assert out.count("covers the ground of") == 1 and out.count("the same ground as") == 1


@pytest.mark.slow
def test_training_warns_when_validation_tiles_cover_training_ground(
    tiny_dataset, tiny_cfg, tmp_path, caplog
):
    import logging

    from uxbseg.training.train import train

    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    shutil.copytree(root / "train" / "pair_0003", root / "test" / "pair_0005")
    tiny_cfg.trainer.max_epochs = 1
    with caplog.at_level(logging.WARNING, logger="uxbseg.training.train"):
        train(root, tiny_cfg, tmp_path / "run", progress=False)
    assert (
        "1 of the 3 test tiles cover training ground (e.g. pair_0005 covers 100% of "
        "train/pair_0003, their terrain within a median 0.00 m)" in caplog.text
    )
