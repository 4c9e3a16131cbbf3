"""Prediction windows: a file larger than the training tiles is cut into tiles of their size."""

import json
import math

import laspy
import numpy as np
import pytest
import torch
from PIL import Image

from uxbseg.cli import main
from uxbseg.config import load_config
from uxbseg.data.voxelize import GridSpec, voxelize
from uxbseg.errors import BadDataError
from uxbseg.io.las import PointArrays
from uxbseg.io.raster import image_window, load_image, open_image
from uxbseg.io.weights import load_model, weights_config
from uxbseg.predict import PredictJob, predict_files
from uxbseg.windows import plan_windows

from .conftest import ROOT, TINY_TEST_OVERRIDES, real_las_files
from .test_predict import _assert_nothing_lost


@pytest.mark.parametrize(
    ("x_limits", "y_limits", "side", "overlap", "shape"),
    [
        ((0, 100_000), (0, 100_000), (10_000, 10_000), 0.0, (10, 10)),  # 1 km of 100 m tiles
        ((0, 100_000), (0, 100_000), (10_000, 10_000), 0.25, (13, 13)),  # 75 m apart
        ((0, 100_000), (0, 100_000), (10_000, 10_000), 0.5, (19, 19)),  # 50 m apart
        ((-5_000, 14_999), (7, 2_507), (10_000, 10_000), 0.0, (1, 2)),  # narrower than a tile
        ((-5_000, 14_999), (7, 2_507), (10_000, 10_000), 0.25, (1, 3)),
        ((0, 13_001), (0, 26_000), (10_000, 10_000), 0.0, (3, 2)),  # overlapping windows
        ((0, 13_001), (0, 26_000), (10_000, 10_000), 0.25, (4, 2)),
        ((3, 1_000_003), (0, 999), (1_000, 1_000), 0.0, (1, 1000)),
        ((3, 1_000_003), (0, 999), (1_000, 1_000), 0.1, (1, 1111)),
    ],
)
def test_windows_cover_every_point_with_one_window_that_holds_it(
    x_limits, y_limits, side, overlap, shape
):
    plan = plan_windows(x_limits, y_limits, side, overlap=overlap)
    assert plan.shape == shape
    for starts, s, (lo, hi) in (
        (plan.x_starts, side[0], x_limits),
        (plan.y_starts, side[1], y_limits),
    ):
        if len(starts) > 1:  # neighbours overlap by at least the fraction asked ...
            assert np.diff(starts).max() <= s * (1 - overlap)
            # ... and one window fewer could not: the plan is as small as it can be
            assert (len(starts) - 2) * s * (1 - overlap) < (hi - lo) - s
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.integers(*x_limits, 20_000, endpoint=True), x_limits])
    Y = np.concatenate([rng.integers(*y_limits, 20_000, endpoint=True), y_limits])
    rows, cols = plan.rows(Y), plan.columns(X)
    for row, col in {(int(r), int(c)) for r, c in zip(rows, cols)}:
        win = plan.window(row, col)
        assert win.x[1] - win.x[0] == side[0] and win.y[1] - win.y[0] == side[1]
        mine = (rows == row) & (cols == col)
        assert ((X[mine] >= win.x[0]) & (X[mine] <= win.x[1])).all()
        assert ((Y[mine] >= win.y[0]) & (Y[mine] <= win.y[1])).all()
        # a point is at least overlap / 2 of a side inside its window, but at the file's edges
        for v, (a, b), s, (lo, hi) in (
            (X, win.x, side[0], x_limits),
            (Y, win.y, side[1], y_limits),
        ):
            if len(plan.x_starts if v is X else plan.y_starts) == 1:
                continue
            inner = overlap * s / 2 - 1
            if a > lo:
                assert (v[mine] - a).min() >= inner
            if b < hi:
                assert (b - v[mine]).min() >= inner
    # row 0 is the north: the window of the highest points comes first
    assert rows[np.argmax(Y)] == 0 and rows[np.argmin(Y)] == shape[0] - 1
    assert cols[np.argmin(X)] == 0 and cols[np.argmax(X)] == shape[1] - 1
    wins = list(plan)
    assert len(wins) == len(plan) == shape[0] * shape[1]
    # the windows reach the data's edges where the data is wider than a window
    if shape[1] > 1:
        assert min(w.x[0] for w in wins) == x_limits[0]
        assert max(w.x[1] for w in wins) == x_limits[1]


def test_a_file_about_the_size_of_a_tile_is_not_cut():
    assert plan_windows((0, 12_500), (0, 12_500), (10_000, 10_000)) is None
    assert plan_windows((0, 12_501), (0, 100), (10_000, 10_000)).shape == (1, 2)
    with pytest.raises(ValueError, match="side"):
        plan_windows((0, 10), (0, 10), (0, 5))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="overlap"):
            plan_windows((0, 100), (0, 100), (10, 10), overlap=bad)


def test_voxelize_over_given_limits():
    rng = np.random.default_rng(1)
    n = 5000
    pts = PointArrays(
        X=rng.integers(100, 1100, n), Y=rng.integers(-50, 950, n), Z=rng.integers(0, 300, n)
    )
    spec = GridSpec(shape=(4, 16, 16), binning="seed")
    own = voxelize(pts, spec, with_labels=False)
    lim = ((int(pts.X.min()), int(pts.X.max())), (int(pts.Y.min()), int(pts.Y.max())))
    same = voxelize(pts, spec, with_labels=False, xy_limits=lim)
    np.testing.assert_array_equal(same.point_voxel, own.point_voxel)
    np.testing.assert_array_equal(same.features, own.features)
    # twice as wide to the east: every point lands in the western half of the columns
    wide = voxelize(pts, spec, False, ((lim[0][0], 2 * lim[0][1] - lim[0][0]), lim[1]))
    assert (wide.point_voxel % 16).max() <= 8
    assert (wide.features[0][..., 9:] == 0).all() and wide.features[0].sum() > 0


def test_image_window_is_the_part_of_the_image_over_it(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)  # 200 m east-west, 100 m north-south
    path = tmp_path / "tpi.png"
    Image.fromarray(rgb).save(path)
    bounds = (1000.0, 5000.0, 1200.0, 5100.0)
    arr = np.asarray(open_image(path, "RGB"))
    whole = image_window(arr, bounds, bounds, 32)
    np.testing.assert_array_equal(whole, load_image(path, 32))
    Image.fromarray(rgb[:, 64:]).save(tmp_path / "east.png")
    east = image_window(arr, bounds, (1100.0, 5000.0, 1200.0, 5100.0), 32)
    np.testing.assert_allclose(east, load_image(tmp_path / "east.png", 32), atol=1e-6)
    # beyond the image: its edge pixels, repeated
    beyond = image_window(arr, bounds, (1200.0, 5000.0, 1300.0, 5100.0), 8)
    edge = image_window(arr, bounds, (1199.9, 5000.0, 1200.0, 5100.0), 8)
    np.testing.assert_allclose(beyond, edge, atol=0.05)


def test_mask_window_is_the_part_of_the_mask_over_it(tmp_path):
    from uxbseg.io.raster import load_mask, mask_window, read_mask_values

    values = np.zeros((64, 128), dtype=np.uint8)  # 200 m east-west, 100 m north-south
    values[:, 64:] = 150  # structure in the east half
    values[:32, 80:96] = 76  # a plazuela in its north
    path = tmp_path / "mask.png"
    Image.fromarray(values).save(path)
    bounds = (1000.0, 5000.0, 1200.0, 5100.0)
    values = read_mask_values(path)
    np.testing.assert_array_equal(mask_window(values, bounds, bounds, (16, 32)),
                                  load_mask(path, (16, 32)))  # fmt: skip
    east = mask_window(values, bounds, (1100.0, 5000.0, 1200.0, 5100.0), (32, 64))
    want = np.full((32, 64), 2)
    want[:16, 16:32] = 1
    np.testing.assert_array_equal(east, want)


def test_training_records_the_tiles_side(trained_run):
    cfg = weights_config(trained_run[0].best_weights)
    assert cfg.grid.tile_extent is not None
    assert 99.0 <= cfg.grid.tile_extent <= 100.0  # the synthetic tiles are 100 m
    saved = load_config(trained_run[0].run_dir / "config.yaml")
    assert saved.grid.tile_extent == cfg.grid.tile_extent
    # and their density: the generator draws 2-10 points per m2 a tile
    assert 2.0 <= cfg.grid.tile_density <= 10.0
    assert saved.grid.tile_density == cfg.grid.tile_density


def test_a_file_far_sparser_than_the_training_tiles_is_warned_about(
    trained_run, tiny_dataset, tmp_path, caplog
):
    """Warned once in full, then counted: a survey of many such files says it once."""
    import logging

    model, cfg = load_model(trained_run[0].best_weights)
    src = next((tiny_dataset / "predict").glob("pair_*/*.las"))
    las = laspy.read(src)
    keep = np.zeros(len(las.points), bool)
    keep[::20] = True
    las.points = las.points[keep]
    las.write(tmp_path / "sparse.las")
    las.write(tmp_path / "sparse2.las")
    jobs = [
        PredictJob(src, None, "dense"),
        PredictJob(tmp_path / "sparse.las", None, "sparse"),
        PredictJob(tmp_path / "sparse2.las", None, "sparse2"),
    ]
    with caplog.at_level(logging.WARNING, logger="uxbseg"):
        results = predict_files(model, cfg, jobs, tmp_path / "out", window="off", progress=False)
    assert all(r.error is None for r in results)  # a warning, not a failure
    said = [r.getMessage() for r in caplog.records if "points per square unit" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(str(tmp_path / "sparse.las"))
    assert "x sparser than the training tiles" in said[0]
    assert "2 of 3 files had the density warning above" in caplog.text


def test_a_stray_point_far_out_is_classified_and_no_density_warning_follows(
    trained_run, tiny_dataset, tmp_path, caplog
):
    """One point 3 km east of a 100 m tile: the file's box is 31 times wider, but the density
    warned of is where the points are (the tile's own), and the stray point is classified too
    (in a window of its own)."""
    import logging

    model, cfg = load_model(trained_run[0].best_weights)
    src = next((tiny_dataset / "predict").glob("pair_*/*.las"))
    las = laspy.read(src)
    x = np.asarray(las.x).copy()
    x[0] = x.max() + 3000.0
    las.x = x
    las.write(tmp_path / "stray.las")
    jobs = [PredictJob(tmp_path / "stray.las", None, "stray")]
    with caplog.at_level(logging.WARNING, logger="uxbseg"):
        (result,) = predict_files(model, cfg, jobs, tmp_path / "out", progress=False)
    assert result.error is None
    assert "points per square unit" not in caplog.text
    out = laspy.read(tmp_path / "out" / "pred_stray.las")
    assert len(out.points) == len(las.points)
    assert set(np.unique(out.classification)) <= {2, 27, 6}


def _two_tiles_far_apart(tiny_dataset, tmp_path, axis):
    """Two test tiles (each with corner points so that it spans exactly 100 m) put 300 m apart
    along ``axis`` in one file, and an image of that file made from the tiles' images."""
    pairs = sorted((tiny_dataset / "test").glob("pair_*"))[:2]
    tiles, images = [], []
    for i, pair in enumerate(pairs):
        src = laspy.read(next(pair.glob("*.las")))
        x = np.asarray(src.x) - src.x.min()
        y = np.asarray(src.y) - src.y.min()
        z = np.asarray(src.z)
        x, y = np.append(x, [0.0, 100.0]), np.append(y, [0.0, 100.0])
        z = np.append(z, [np.median(z)] * 2)
        shift = 300.0 * i
        tiles.append((x + shift * (axis == "x"), y + shift * (axis == "y"), z))
        header = laspy.LasHeader(point_format=3, version="1.2")
        header.scales, header.offsets = [0.01] * 3, [0.0] * 3
        las = laspy.LasData(header)
        las.x, las.y, las.z = x, y, z
        las.write(tmp_path / f"tile{i}.las")
        im = np.asarray(Image.open(next(pair.glob("tpi_100m*.png"))).convert("RGB"))
        images.append(im)
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = [0.01] * 3, [0.0] * 3
    las = laspy.LasData(header)
    las.x, las.y, las.z = (np.concatenate([t[k] for t in tiles]) for k in range(3))
    las.write(tmp_path / "both.las")
    s = images[0].shape[0]
    big = np.zeros((s, 4 * s, 3) if axis == "x" else (4 * s, s, 3), dtype=np.uint8)
    if axis == "x":
        big[:, :s], big[:, 3 * s :] = images
    else:  # row 0 is north: the second tile, 300 m north, is at the top
        big[3 * s :], big[:s] = images
    Image.fromarray(big).save(tmp_path / "both.png")
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"tile{i}.png")
    return [len(t[0]) for t in tiles]


@pytest.mark.slow
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("with_image", [False, True])
def test_a_window_is_predicted_as_the_tile_alone(
    trained_run, tiny_dataset, tmp_path, axis, with_image
):
    """Two tiles 300 m apart in one file, cut into 100 m windows: each point gets the
    probabilities the model gives it when its tile is predicted alone (same voxel grid, same
    image: cut from the file's image, or rendered with nothing else within the TPI radius)."""
    sizes = _two_tiles_far_apart(tiny_dataset, tmp_path, axis)
    model, cfg = load_model(trained_run[0].best_weights)

    def image(name):
        return tmp_path / f"{name}.png" if with_image else None

    singles = [PredictJob(tmp_path / f"tile{i}.las", image(f"tile{i}"), f"tile{i}") for i in (0, 1)]
    predict_files(model, cfg, singles, tmp_path / "alone", probabilities=True, progress=False)
    job = PredictJob(tmp_path / "both.las", image("both"), "both")
    (res,) = predict_files(
        model, cfg, [job], tmp_path / "win", probabilities=True, window=100.0, overlap=0.0,
        progress=False,
    )  # fmt: skip
    assert res.error is None and res.windows == 4 and res.points == sum(sizes)
    index = json.loads((tmp_path / "win" / "pred_both.windows" / "windows.json").read_text())
    assert index["side"] == 100.0 and (index["rows"], index["columns"]) == (
        (1, 4) if axis == "x" else (4, 1)
    )
    # of the two windows between the tiles, one takes the points on the first tile's far edge;
    # the other holds no point of its own and writes no grid
    assert sum(w["points"] for w in index["windows"]) == sum(sizes)
    assert len(index["windows"]) == 3
    for w in index["windows"]:
        grid = np.load(tmp_path / "win" / "pred_both.windows" / w["npy"])
        assert grid.shape == cfg.grid.shape and grid.dtype == np.uint8
    both = laspy.read(tmp_path / "win" / "pred_both.las")
    start = 0
    for i, n in enumerate(sizes):
        alone = laspy.read(tmp_path / "alone" / f"pred_tile{i}.las")
        part = slice(start, start + n)
        start += n
        # points on a tile's far edge (x or y = 100 m exactly) go to the next window
        coord = np.asarray(alone.x if axis == "x" else alone.y)
        keep = coord < 100.0
        assert keep.mean() > 0.99
        for name in ("prob_ground", "prob_plazuela", "prob_structure", "classification"):
            got = np.asarray(both[name])[part][keep]
            want = np.asarray(alone[name])[keep]
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
    # the probabilities differ between the two tiles: the test compares something
    p = np.asarray(both["prob_plazuela"])
    assert p[: sizes[0]].mean() != pytest.approx(p[sizes[0] :].mean(), abs=1e-6)


@pytest.mark.real
@pytest.mark.slow
def test_the_real_1km_tile_in_windows_loses_nothing(trained_run, tmp_path, capsys):
    (path,) = [p for p in real_las_files() if p.name.startswith("test_semis_2023")]
    weights = trained_run[0].best_weights
    args = ["--weights", str(weights), "--input", str(path), "--out", str(tmp_path)]
    rc = main(["predict", *args, "--window", "250"])
    assert rc == 0
    out = capsys.readouterr().out
    # 1 km: 5 windows 187.5 m apart on each axis (the default least overlap, 1/4 of a side)
    assert "(25 windows of 250, overlap 0.25)" in out
    (las_out,) = tmp_path.glob("pred_*.laz")
    _assert_nothing_lost(path, las_out)
    index = json.loads(next(tmp_path.glob("*.windows/windows.json")).read_text())
    assert len(index["windows"]) == 25 and index["side"] == 250.0 and index["overlap"] == 0.25
    assert sum(w["points"] for w in index["windows"]) == laspy.open(path).header.point_count


def test_window_arguments_are_checked(trained_run, tmp_path, capsys):
    weights = str(trained_run[0].best_weights)
    for flag, bad, says in [
        *(("--window", bad, "window side > 0") for bad in ("0", "-5", "big")),
        *(("--overlap", bad, "fraction of their side") for bad in ("1", "25", "-0.1", "some")),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["predict", "--weights", weights, "--input", "x.las", flag, bad])
        assert exc.value.code == 2
        assert says in capsys.readouterr().err
    model, cfg = load_model(trained_run[0].best_weights)
    with pytest.raises(BadDataError, match=r"--overlap 1\.0"):
        predict_files(model, cfg, [], tmp_path, overlap=1.0)


def test_weights_without_a_recorded_side_predict_whole_files(tiny_dataset, tmp_path, caplog):
    """Old weights (no grid.tile_extent): auto predicts each file as one tile, and says so."""
    import logging

    from uxbseg.models import UXBFusionModel
    from uxbseg.predict import resolve_window

    cfg = load_config(ROOT / "configs" / "tiny.yaml", TINY_TEST_OVERRIDES)
    assert cfg.grid.tile_extent is None
    with caplog.at_level(logging.INFO, logger="uxbseg.predict"):
        assert resolve_window("auto", cfg) is None
    assert "--window" in caplog.text
    assert resolve_window(None, cfg) is None and resolve_window(40, cfg) == 40.0
    model = UXBFusionModel.from_config(cfg)
    las = next((tiny_dataset / "predict").glob("pair_*/*.las"))
    (res,) = predict_files(model, cfg, [PredictJob(las, None, "a")], tmp_path, progress=False)
    assert res.windows == 0 and (tmp_path / "pred_a.npy").is_file()
    (res,) = predict_files(
        model, cfg, [PredictJob(las, None, "b")], tmp_path, window=30.0, progress=False
    )
    assert res.windows == 25 and (tmp_path / "pred_b.windows" / "windows.json").is_file()


def test_window_tpi_uses_the_terrain_around_the_window():
    """With points all around, a window's TPI is the survey's TPI cut out (the 100 m discs of
    its edge cells reach into the neighbours); with none around, it is the lone tile's."""
    from uxbseg.io.raster import dem_from_points, tpi, window_tpi

    yy, xx = np.mgrid[0:300, 0:300] + 0.5  # a point at each 1 m cell's centre, 300 m a side
    x, y = xx.ravel(), yy.ravel()
    z = 10 * np.sin(x / 40) + 0.05 * y + np.where(x > 200, 6.0, 0.0)  # a terrace to the east
    survey = tpi(dem_from_points(x, y, z, (0, 0, 300, 300), 1.0), 1.0)
    window = (100.0, 100.0, 200.0, 200.0)
    got = window_tpi(x, y, z, window, 1.0)
    np.testing.assert_allclose(got, survey[100:200, 100:200], atol=1e-9)
    inside = (x >= 100) & (x <= 200) & (y >= 100) & (y <= 200)
    lone = tpi(dem_from_points(x[inside], y[inside], z[inside], window, 1.0), 1.0)
    np.testing.assert_allclose(window_tpi(x[inside], y[inside], z[inside], window, 1.0), lone)
    # the terrace beside the window lowers its eastern cells' TPI: the margin matters
    assert (got[:, -10:] - lone[:, -10:]).mean() < -0.5


def test_window_outputs_replace_the_other_kind_and_failures_leave_none(tiny_dataset, tmp_path):
    from uxbseg.models import UXBFusionModel

    cfg = load_config(ROOT / "configs" / "tiny.yaml", TINY_TEST_OVERRIDES)
    model = UXBFusionModel.from_config(cfg)
    las = next((tiny_dataset / "predict").glob("pair_*/*.las"))
    job = PredictJob(las, None, "a")
    predict_files(model, cfg, [job], tmp_path, window="off", progress=False)
    assert (tmp_path / "pred_a.npy").is_file()
    predict_files(model, cfg, [job], tmp_path, window=60.0, progress=False)
    assert not (tmp_path / "pred_a.npy").exists()  # stale: the grids are in the folder now
    assert len(list((tmp_path / "pred_a.windows").glob("r*_c*.npy"))) == 4
    predict_files(model, cfg, [job], tmp_path, window=None, progress=False)
    assert (tmp_path / "pred_a.npy").is_file() and not (tmp_path / "pred_a.windows").exists()
    for window in (None, 60.0):  # --no-grids: no grids; earlier grids go, being stale
        (res,) = predict_files(model, cfg, [job], tmp_path, window=window, grids=False)
        assert res.npy is None and res.windows == (4 if window else 0)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            ".uxbseg-predict.jsonl",
            "finds.csv",
            "finds.geojson",
            "pred_a.finds.csv",
            "pred_a.las",
        ]
    predict_files(model, cfg, [job], tmp_path, window=None, progress=False)
    # a code the point format cannot hold fails the file after inference: nothing is left
    job = PredictJob(las, None, "b")
    codes = [200, 27, 6]  # ground (every point, untrained) as 200: format 1 holds 0-31
    (res,) = predict_files(model, cfg, [job], tmp_path, codes=codes, window=60.0, progress=False)
    assert res.error is not None and "200" in res.error
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".uxbseg-predict.jsonl",
        "finds.csv",
        "finds.geojson",
        "pred_a.finds.csv",
        "pred_a.las",
        "pred_a.npy",
    ]


def test_windows_in_batches_give_what_one_at_a_time_gives(trained_run, tiny_dataset, tmp_path):
    model, cfg = load_model(trained_run[0].best_weights)
    las = next((tiny_dataset / "predict").glob("pair_*/*.las"))
    out = {}
    for batch in (1, 3):  # 16 windows: five batches of 3 and one of 1
        job = PredictJob(las, None, f"b{batch}")
        (res,) = predict_files(
            model, cfg, [job], tmp_path, probabilities=True, window=30.0, overlap=0.0,
            batch=batch, progress=False,
        )  # fmt: skip
        assert res.windows == 16
        out[batch] = laspy.read(res.las)
    for name in ("prob_ground", "prob_plazuela", "prob_structure"):
        np.testing.assert_allclose(out[3][name], out[1][name], atol=1e-4, err_msg=name)
    same = np.asarray(out[3].classification) == np.asarray(out[1].classification)
    assert same.mean() > 0.999
    for w in json.loads((tmp_path / "pred_b1.windows" / "windows.json").read_text())["windows"]:
        a = np.load(tmp_path / "pred_b1.windows" / w["npy"])
        b = np.load(tmp_path / "pred_b3.windows" / w["npy"])
        assert (a == b).mean() > 0.999


WKT_FT = (
    'PROJCS["NAD83 / Oregon GIC Lambert (ft)",GEOGCS["NAD83",DATUM["North_American_Datum_1983",'
    'SPHEROID["GRS 1980",6378137,298.257222101],TOWGS84[0,0,0,0,0,0,0]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic_2SP"],'
    'PARAMETER["false_easting",1312335.958],UNIT["foot",0.3048],AXIS["X",EAST],AXIS["Y",NORTH]]'
)
WKT2_M = (
    'PROJCRS["x",BASEGEOGCRS["y",DATUM["d",ELLIPSOID["e",6378137,298.2,LENGTHUNIT["metre",1]]]],'
    'CONVERSION["c",METHOD["m"],PARAMETER["False easting",1000,LENGTHUNIT["US survey foot",'
    '0.304800609601219]]],CS[Cartesian,2],AXIS["(E)",east,ORDER[1],LENGTHUNIT["metre",1]],'
    'AXIS["(N)",north,ORDER[2],LENGTHUNIT["metre",1]]]'
)


def test_crs_units_come_from_the_projected_crs_itself():
    from uxbseg.io.las import _wkt_units, units_warning

    assert _wkt_units(WKT_FT) == (("foot", 0.3048), None)
    # the conversion's false easting in US feet is not the axes' unit
    assert _wkt_units(WKT2_M) == (("metre", 1.0), None)
    compound = f'COMPD_CS["c",{WKT2_M},VERT_CS["v",VERT_DATUM["n",2005],UNIT["US survey foot",1]]]'
    assert _wkt_units(compound) == (("metre", 1.0), ("US survey foot", 0.3048006096012192))
    # latitude / longitude: no length unit at all
    geog = 'GEOGCS["WGS 84",DATUM["D",SPHEROID["WGS 84",6378137,298.257]],UNIT["degree",0.01745]]'
    for wkt in (geog, f'COMPD_CS["c",{geog},VERT_CS["v",VERT_DATUM["n",2005],UNIT["metre",1]]]'):
        (name, metres), _v = _wkt_units(wkt)
        assert name == "degree" and math.isnan(metres)
    header = laspy.LasHeader(point_format=3, version="1.4")
    las = laspy.LasData(header)
    las.header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(geog))
    assert "latitude and longitude in degrees" in units_warning(las)
    las.header.vlrs[-1] = laspy.vlrs.known.WktCoordinateSystemVlr(WKT2_M)
    assert units_warning(las) is None


def test_crs_epsg_is_the_horizontal_crs_own_code():
    from uxbseg.io.las import _wkt_epsg, crs_epsg

    geog = (
        'GEOGCS["WGS 84",DATUM["D",SPHEROID["WGS 84",6378137,298.257,AUTHORITY["EPSG","7030"]],'
        'AUTHORITY["EPSG","6326"]],UNIT["degree",0.01745],AUTHORITY["EPSG","4326"]]'
    )
    proj = f'PROJCS["p",{geog},PROJECTION["tm"],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
    proj += 'AUTHORITY["EPSG","32620"]]'
    vert = 'VERT_CS["v",VERT_DATUM["n",2005],UNIT["metre",1],AUTHORITY["EPSG","5703"]]'
    assert _wkt_epsg(proj) == 32620  # not the datum's, the unit's or the base CRS's
    assert _wkt_epsg(geog) == 4326
    assert _wkt_epsg(f'COMPD_CS["c",{proj},{vert},AUTHORITY["EPSG","9999"]]') == 32620
    assert _wkt_epsg(WKT2_M[:-1] + ',ID["EPSG",2154]]') == 2154  # WKT 2's ID
    assert _wkt_epsg(WKT2_M) is None and _wkt_epsg(WKT_FT) is None  # no authority given
    header = laspy.LasHeader(point_format=3, version="1.4")
    keys = laspy.vlrs.known.GeoKeyDirectoryVlr()
    keys.geo_keys_header.number_of_keys = 1
    entry = laspy.vlrs.geotiff.GeoKeyEntryStruct(3072, 0, 1, 32767)  # user-defined
    keys.geo_keys = [entry]
    header.vlrs.append(keys)
    assert crs_epsg(header) is None
    keys.geo_keys = [laspy.vlrs.geotiff.GeoKeyEntryStruct(3072, 0, 1, 2154)]
    assert crs_epsg(header) == 2154


def test_a_file_in_feet_is_predicted_with_a_warning_and_noted_by_inspect(
    trained_run, tiny_dataset, tmp_path, caplog, capsys
):
    import logging
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny_dataset / "predict", root / "predict")
    las_path = next((root / "predict" / "pair_0000").glob("*.las"))
    las = laspy.read(las_path)
    las.header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(WKT_FT))
    las.write(las_path)
    model, cfg = load_model(trained_run[0].best_weights)
    with caplog.at_level(logging.WARNING, logger="uxbseg.predict"):
        (res,) = predict_files(
            model, cfg, [PredictJob(las_path, None, "ft")], tmp_path / "o", progress=False
        )
    assert res.error is None and res.points == len(las.points)
    assert "horizontal unit is the foot (0.3048 m)" in caplog.text
    assert str(las_path) in caplog.text
    assert main(["inspect", str(root)]) == 0  # a note, not a problem
    out = capsys.readouterr().out
    assert "note pair_0000: its CRS's horizontal unit is the foot" in out
    assert "pair_0001: its CRS" not in out


def test_finds_geojson_names_the_files_crs_unless_they_differ(
    trained_run, tiny_dataset, tmp_path, caplog
):
    import logging

    wkt = WKT2_M[:-1] + ',ID["EPSG",2154]]'
    paths = []
    for name in ("pair_0000", "pair_0001"):
        las = laspy.read(next((tiny_dataset / "predict" / name).glob("*.las")))
        las.header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(wkt))
        paths.append(tmp_path / f"{name}.las")
        las.write(paths[-1])
    model, cfg = load_model(trained_run[0].best_weights)
    jobs = [PredictJob(p, None, p.stem) for p in paths]
    # with probabilities: laspy rebuilds the VLRs as the extra bytes go in; the CRS is read first
    same = tmp_path / "same"
    predict_files(model, cfg, jobs, same, progress=False, grids=False, probabilities=True)
    doc = json.loads((tmp_path / "same" / "finds.geojson").read_text())
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::2154"
    rows = (tmp_path / "same" / "finds.csv").read_text().splitlines()
    assert len(doc["features"]) == len(rows) - 1  # the CSV's finds
    las = laspy.read(paths[1])
    las.header.vlrs[-1] = laspy.vlrs.known.WktCoordinateSystemVlr(wkt.replace("2154", "32620"))
    las.write(paths[1])
    with caplog.at_level(logging.WARNING, logger="uxbseg.predict"):
        predict_files(model, cfg, jobs, tmp_path / "mixed", progress=False, grids=False)
    assert "several CRSs (EPSG 2154, 32620)" in caplog.text
    assert "crs" not in json.loads((tmp_path / "mixed" / "finds.geojson").read_text())


def test_prefetching_keeps_order_raises_and_stops_its_thread():
    import threading

    from uxbseg.predict_windows import _prefetched

    def alive():
        return [t for t in threading.enumerate() if t.name == "uxbseg-windows"]

    assert list(_prefetched(iter(range(50)), 3)) == list(range(50))
    assert list(_prefetched(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise ValueError("window 2 is bad")

    got = []
    with pytest.raises(ValueError, match="window 2 is bad"):
        for item in _prefetched(failing(), 2):
            got.append(item)
    assert got == [1]
    # the caller stops early (a failure in the model): the producer ends, nothing is left
    for item in _prefetched(iter(range(1000)), 2):
        if item == 3:
            break
    assert not alive()


@pytest.mark.parametrize("binning", ["seed", "uniform"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_windows_own_cells_that_tile_the_file_once(binning, overlap):
    """Each window's own grid cells (those scored by evaluate) cover the file about once: as
    many cells as the file's area holds, not the windows' total (1.8x at overlap 0.25)."""
    plan = plan_windows((0, 100_000), (0, 60_000), (10_000, 10_000), overlap=overlap)
    hw = (16, 32)
    owned = 0
    for win in plan:
        own = plan.owned_cells(win, hw, binning)
        assert own.shape == hw
        owned += int(own.sum())
    k = int(binning == "seed")  # seed binning: n - 1 cells over the side, the last one a line
    cells = (16 - k) * (32 - k) * (100_000 / 10_000) * (60_000 / 10_000)  # the file's area
    assert owned == pytest.approx(cells, rel=0.08)
    assert len(plan) * 16 * 32 > 1.5 * cells or overlap == 0.0  # the check can fail


def _adjacent_pair(tiny_dataset, root):
    """The two test tiles side by side (west, east) as one labelled 200 m x 100 m pair of
    ``root/test``: LAS with their classes, image and mask laid side by side."""
    pairs = sorted((tiny_dataset / "test").glob("pair_*"))[:2]
    xs, ys, zs, cls, images, masks = [], [], [], [], [], []
    for i, pair in enumerate(pairs):
        src = laspy.read(next(pair.glob("*.las")))
        xs.append(np.asarray(src.x) - src.x.min() + 100.0 * i)
        ys.append(np.asarray(src.y) - src.y.min())
        zs.append(np.asarray(src.z))
        cls.append(np.asarray(src.classification))
        images.append(np.asarray(Image.open(next(pair.glob("tpi_100m*.png"))).convert("RGB")))
        masks.append(np.asarray(Image.open(next(pair.glob("uxb_msk_pl_st*.png"))).convert("L")))
    out = root / "test" / "pair_0000"
    out.mkdir(parents=True)
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = [0.01] * 3, [0.0] * 3
    las = laspy.LasData(header)
    las.x, las.y, las.z = np.concatenate(xs), np.concatenate(ys), np.concatenate(zs)
    las.classification = np.concatenate(cls)
    las.write(out / "both.las")
    Image.fromarray(np.concatenate(images, axis=1)).save(out / "tpi_100m_both.png")
    Image.fromarray(np.concatenate(masks, axis=1)).save(out / "uxb_msk_pl_st_both.png")
    return out


@pytest.mark.slow
def test_evaluate_scores_a_large_tile_as_predict_classifies_it(
    trained_run, tiny_dataset, tmp_path, capsys
):
    from uxbseg.classes import IGNORE, las_code_to_class
    from uxbseg.evaluate import confusion, evaluate

    pair = _adjacent_pair(tiny_dataset, tmp_path / "big")
    model, cfg = load_model(trained_run[0].best_weights)
    assert cfg.grid.tile_extent == pytest.approx(100.0, abs=1.0)
    result = evaluate(model, cfg, tmp_path / "big", progress=False)
    assert result["tiles"] == 1
    assert result["windows"] == {"tiles": 1, "side": cfg.grid.tile_extent, "overlap": 0.25}
    # the points: exactly what predict writes for the same file
    job = PredictJob(pair / "both.las", pair / "tpi_100m_both.png", "both")
    (res,) = predict_files(model, cfg, [job], tmp_path / "pred", progress=False)
    assert res.windows == 3  # 200 m: 3 windows 50 m apart along x, one along y
    truth = las_code_to_class(np.asarray(laspy.read(job.las).classification))
    got = las_code_to_class(np.asarray(laspy.read(res.las).classification))
    assert result["points"]["confusion"] == confusion(truth, got).tolist()
    # voxels and pixels: each place once (the two tiles' grid cells), not once per window
    _, h, w = cfg.grid.shape
    pixels = np.asarray(result["pixels"]["confusion"]).sum()
    assert pixels == pytest.approx(2 * h * w, rel=0.06)
    voxels = np.asarray(result["voxels"]["confusion"]).sum()
    whole = evaluate(model, cfg, tmp_path / "big", progress=False, window="off")
    assert "windows" not in whole
    assert np.asarray(whole["points"]["confusion"]).sum() == (truth != IGNORE).sum()
    # as one tile, the file's 200 m are squeezed into the grid of a 100 m tile: half the voxels
    assert voxels > 1.6 * np.asarray(whole["voxels"]["confusion"]).sum()
    assert main(["evaluate", "--weights", str(trained_run[0].best_weights), "--data",
                 str(tmp_path / "big"), "--overlap", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "1 tile(s) larger than a training tile were scored" in out
    assert "(overlap 0)" in out


def test_the_default_window_batch_is_the_training_batch_and_4x_on_a_gpu(tiny_cfg):
    from uxbseg.predict import GPU_WINDOW_BATCH, window_batch

    tiny_cfg.data.batch_size = 2
    assert window_batch(None, 0.25, tiny_cfg) == 2
    assert window_batch(None, 0.25, tiny_cfg, torch.device("cpu")) == 2
    # a device object only: no GPU is needed to ask what the default would be on one
    assert window_batch(None, 0.25, tiny_cfg, torch.device("cuda")) == 2 * GPU_WINDOW_BATCH == 8
    assert window_batch(3, 0.25, tiny_cfg, torch.device("cuda")) == 3  # --batch wins
    with pytest.raises(BadDataError, match="--batch 0"):
        window_batch(0, 0.25, tiny_cfg)


def test_the_windows_counted_are_those_a_point_of_the_file_takes_its_class_from():
    """The progress bar's total: a sparse file spans many windows that hold none of its points
    (passed by, not run); its neighbours' points (context) make no window of its own."""
    from uxbseg.predict_windows import _ownership, windows_to_run
    from uxbseg.survey import SurveyContext

    rng = np.random.default_rng(0)
    own_x = np.array([5, 7, 950, 955, 2950, 2990])  # three clusters along a 3 km strip
    own_y = rng.integers(0, 90, len(own_x))
    near = np.array([1500, 1550])  # a neighbour's points inside the strip
    xs = np.concatenate([near, own_x])
    ys = np.concatenate([[40, 50], own_y])
    pts = PointArrays(xs, ys, np.zeros_like(xs))
    plan = plan_windows((0, 3000), (0, 90), (100, 100), overlap=0.25)
    limits = ((int(own_x.min()), int(own_x.max())), (int(own_y.min()), int(own_y.max())))
    context = SurveyContext(pts, slice(2, len(xs)), limits)
    assert len(plan) == 40  # one row, 1 + ceil((3000 - 100) / 75) columns
    own = _ownership(plan, context)[0]
    assert windows_to_run(plan, context, own) == len(set(own[2:].tolist())) == 3
    empty = SurveyContext(pts, slice(0, 0), limits)
    assert windows_to_run(plan, empty, own) == 0
