"""Surveys: files that tile one area, predicted as one file holding all of them would be."""

import json
import logging
import struct
from dataclasses import replace

import laspy
import numpy as np
import pytest
from PIL import Image

from uxbseg import predict_windows, survey
from uxbseg.classes import CLASSES, las_code_to_class
from uxbseg.cli import main
from uxbseg.finds import SEAM_TOLERANCE, find_objects
from uxbseg.io.las import read_point_fields
from uxbseg.io.raster import image_window, mosaic_window
from uxbseg.io.weights import load_model
from uxbseg.predict import PredictJob, predict_files
from uxbseg.survey import PointStore, find_surveys, points_in_box, read_headers


def _write(path, x, y, z=None, offsets=(0.0, 0.0, 0.0), scales=(0.01, 0.01, 0.01), wkt=None):
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = list(scales), list(offsets)
    if wkt is not None:
        header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(wkt))
    las = laspy.LasData(header)
    x, y = np.asarray(x, float), np.asarray(y, float)
    las.x, las.y = x, y
    las.z = np.zeros_like(x) if z is None else z
    las.intensity = np.arange(len(x), dtype=np.uint16)
    las.write(path)
    return path


def _square(path, x0, y0, side=100.0, **kw):
    return _write(path, [x0, x0 + side, x0, x0 + side], [y0, y0, y0 + side, y0 + side], **kw)


def test_files_side_by_side_form_a_survey_and_others_do_not(tmp_path, caplog):
    a = _square(tmp_path / "a.las", 0, 0)
    b = _square(tmp_path / "b.las", 100, 0)  # touches a
    c = _square(tmp_path / "c.las", 250, 0)  # 50 m from b: within a side, so in the survey
    far = _square(tmp_path / "far.las", 1000, 0)  # alone
    strip = _square(tmp_path / "strip.las", 1020, 0)  # covers 80 % of far: the same ground
    broken = tmp_path / "broken.las"
    broken.write_bytes(b"not a las file")
    files = [(p, None) for p in (a, b, c, far, strip, broken)]
    with caplog.at_level(logging.INFO, logger="uxbseg.survey"):
        surveys = find_surveys(read_headers(files), 100.0, PointStore(tmp_path / "store"))
    assert set(surveys) == {a, b, c}
    survey = surveys[a]
    assert surveys[b] is survey and surveys[c] is survey
    assert [f.path for f in survey.files] == [a, b, c]  # the order given
    assert survey.bounds == pytest.approx((0.0, 0.0, 350.0, 100.0))
    assert "far.las and strip.las overlap by more than 1%" in caplog.text
    # a narrower reach splits them: c is 50 m from b
    assert set(find_surveys(read_headers(files), 40.0, PointStore(tmp_path / "store"))) == {
        a,
        b,
    }


def test_a_file_whose_header_states_no_box_joins_its_survey_by_its_points(tmp_path, caplog):
    a = _square(tmp_path / "a.las", 0, 0)
    b = _square(tmp_path / "b.las", 100, 0)
    with open(b, "r+b") as f:  # a writer that left the box unset: max/min x, y, z all zero
        f.seek(179)
        f.write(struct.pack("<6d", *[0.0] * 6))
    assert laspy.open(b).header.maxs[0] == 0.0
    with caplog.at_level(logging.WARNING, logger="uxbseg.io.las"):
        files = read_headers([(a, None), (b, None)])
        surveys = find_surveys(files, 100.0, PointStore(tmp_path / "store"))
    assert files[1].bounds == pytest.approx((100.0, 0.0, 200.0, 100.0))  # its points' box
    assert surveys[a] is surveys[b]
    assert f"{b}: its header states no usable box" in caplog.text


def test_header_boxes_that_cannot_be_or_do_not_hold_the_points():
    from uxbseg.io.las import header_box, header_box_note

    las = laspy.LasData(laspy.LasHeader(point_format=3, version="1.2"))
    las.header.scales, las.header.offsets = [0.01] * 3, [1000.0, 2000.0, 0.0]
    las.x, las.y, las.z = np.array([1000.0, 1100.0]), np.array([2000.0, 2050.0]), np.zeros(2)
    las.update_header()
    limits = ((int(las.X.min()), int(las.X.max())), (int(las.Y.min()), int(las.Y.max())))
    lo, hi = header_box(las.header)
    assert lo.tolist() == [0, 0] and hi.tolist() == [10000, 5000]  # raw units
    assert header_box_note(las, limits) is None
    las.header.maxs = [1090.0, 2050.0, 0.0]  # 10 m short of the points
    note = header_box_note(las, limits)
    assert "its header states the box x 1000.00..1090.00" in note
    assert "its points span x 1000.00..1100.00, y 2000.00..2050.00" in note
    for mins, maxs in (([0, 0, 0], [0, 0, 0]), ([5, 0, 0], [1, 9, 0]), ([np.nan, 0, 0], [1, 1, 0])):
        las.header.mins, las.header.maxs = mins, maxs
        assert header_box(las.header) is None  # unset, inverted, not finite
        assert header_box_note(las, limits) is None  # the survey takes the points' box instead


def test_two_areas_cut_in_one_local_frame_are_no_survey(tmp_path, caplog):
    """Each area's two pieces touch, and so do pieces of different areas: one set of
    neighbours, holding the same ground twice; none is a survey. A third area elsewhere is."""
    pieces = [
        _square(tmp_path / f"{area}{i}.las", 150.0 * i, 0, side=150.0)
        for area in "ab"
        for i in range(2)
    ]
    far = [_square(tmp_path / f"c{i}.las", 5000.0 + 150.0 * i, 0, side=150.0) for i in range(2)]
    files = [(p, None) for p in pieces + far]
    with caplog.at_level(logging.WARNING, logger="uxbseg.survey"):
        surveys = find_surveys(read_headers(files), 100.0, PointStore(tmp_path / "store"))
    assert set(surveys) == set(far)
    assert "4 files lie side by side, but a0.las and b0.las among them cover the same" in (
        caplog.text
    )
    # tiles delivered with margins share 10 % of their ground: still one survey, as before
    west = _square(tmp_path / "w.las", 9000.0, 0, side=105.0)
    east = _square(tmp_path / "e.las", 9095.0, 0, side=105.0)
    north = _write(tmp_path / "n.las", [9000.0, 9200.0], [150.0, 250.0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uxbseg.survey"):
        headers = read_headers([(p, None) for p in (west, east, north)])
        surveys = find_surveys(headers, 100.0, PointStore(tmp_path / "store"))
    assert set(surveys) == {west, east, north} and "lie side by side, but" not in caplog.text


def _utm(zone: int) -> str:
    return (
        f'PROJCS["WGS 84 / UTM zone {zone}N",GEOGCS["WGS 84",DATUM["D",SPHEROID["WGS 84",'
        f'6378137,298.257]],UNIT["degree",0.01745]],UNIT["metre",1],'
        f'AUTHORITY["EPSG","326{zone}"]]'
    )


def test_files_that_name_different_crss_are_not_neighbours(tmp_path, caplog):
    """Two UTM zones share their numbers: files side by side in them are two places."""
    a = _square(tmp_path / "a.las", 250_000, 0, wkt=_utm(15))
    b = _square(tmp_path / "b.las", 250_100, 0, wkt=_utm(16))
    c = _square(tmp_path / "c.las", 250_200, 0, wkt=_utm(16))
    d = _square(tmp_path / "d.las", 250_300, 0)  # names no CRS: it may be c's neighbour
    headers = read_headers([(p, None) for p in (a, b, c, d)])
    assert [h.epsg for h in headers] == [32615, 32616, 32616, None]
    with caplog.at_level(logging.WARNING, logger="uxbseg.survey"):
        surveys = find_surveys(headers, 100.0, PointStore(tmp_path / "store"))
    assert set(surveys) == {b, c, d}
    assert "a.las (EPSG:32615) and b.las (EPSG:32616) lie side by side" in caplog.text


def test_points_in_box_keeps_the_box_and_converts_the_frame(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 100, 500), rng.uniform(0, 100, 500)
    z = rng.uniform(10, 20, 500)
    path = _write(tmp_path / "n.las", x, y, z, offsets=(0.0, 0.0, 0.0))
    src = laspy.read(path)
    fields = read_point_fields(path, chunk=37)  # in chunks, all of them
    np.testing.assert_array_equal(fields["Z"], np.asarray(src.Z))
    np.testing.assert_array_equal(fields["return_number"], np.asarray(src.return_number))
    box = (20.0, 30.0, 60.0, 100.0)
    inside = (src.x >= 20) & (src.x <= 60) & (src.y >= 30)
    frame = ((0.01, 0.01, 0.01), (0.0, 0.0, 0.0))
    got, at = points_in_box(fields, frame, box, frame)
    assert len(got) == inside.sum() > 100
    np.testing.assert_array_equal(at, np.flatnonzero(inside))  # positions in the file
    np.testing.assert_array_equal(got.X, np.asarray(src.X)[inside])  # the same integers
    np.testing.assert_array_equal(got.intensity, np.asarray(src.intensity)[inside])
    assert got.classification is None
    # another file's frame: raw values of that frame, the same places to its step
    other, _ = points_in_box(fields, frame, box, ((0.001, 0.01, 0.01), (5.0, -10.0, 1.0)))
    np.testing.assert_allclose(other.X * 0.001 + 5.0, np.asarray(src.x)[inside], atol=5e-4)
    np.testing.assert_allclose(other.Y * 0.01 - 10.0, np.asarray(src.y)[inside], atol=5e-3)
    np.testing.assert_allclose(other.Z * 0.01 + 1.0, np.asarray(src.z)[inside], atol=5e-3)


def test_the_store_keeps_a_files_points_while_a_file_to_come_reads_them(tmp_path):
    paths = [_square(tmp_path / f"{k}.las", 100.0 * i, 0) for i, k in enumerate("abc")]
    store = PointStore(tmp_path / "out")
    surveys = find_surveys(read_headers([(p, None) for p in paths]), 100.0, store)
    row = surveys[paths[0]]
    row.reach = 50.0  # a reads b, b reads a and c, c reads b
    for f in row.files:
        assert len(store.fields(f)["X"]) == 4
    (folder,) = (tmp_path / "out").glob(".uxbseg-survey-*")
    row.finish(paths[0])  # b, still to come, reads a
    assert all(p in store for p in paths)
    # nothing still to come reads a, nor c (c reads its own file); c, still to come, reads b
    row.finish(paths[1])
    assert [p in store for p in paths] == [False, True, False]
    row.finish(paths[2])
    assert not any(p in store for p in paths) and not any(folder.iterdir())
    store.close()
    assert not folder.exists()


def test_a_window_across_two_images_is_cut_from_both():
    rng = np.random.default_rng(1)
    whole = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)  # 5 m pixels over 200 x 100 m
    west, east = whole[:, :20].copy(), whole[:, 20:].copy()
    window = (50.0, 0.0, 150.0, 100.0)
    want = image_window(whole, (0.0, 0.0, 200.0, 100.0), window, 64)
    got = mosaic_window(
        [(west, (0.0, 0.0, 100.0, 100.0)), (east, (100.0, 0.0, 200.0, 100.0))], window, 64
    )
    alone = image_window(west, (0.0, 0.0, 100.0, 100.0), window, 64)
    # output pixels are 100/64 m: more than a source pixel (5 m) from the seam, they are the
    # whole image's; at the seam each side interpolates its own image's edge
    cx = 50.0 + (np.arange(64) + 0.5) * 100.0 / 64
    away = np.abs(cx - 100.0) > 5.0
    np.testing.assert_allclose(got[:, :, away], want[:, :, away], atol=1e-5)
    assert np.abs(got - want).mean() < 0.05
    east_half = cx > 105.0
    assert np.abs(alone[:, :, east_half] - want[:, :, east_half]).mean() > 0.3  # edge repeated


def _split_pair(tiny_dataset, tmp_path):
    """Two test tiles side by side, as one 200 m x 100 m file and as two 100 m files (the same
    points in the same order, west then east)."""
    pairs = sorted((tiny_dataset / "test").glob("pair_*"))[:2]
    parts = []
    for i, pair in enumerate(pairs):
        src = laspy.read(next(pair.glob("*.las")))
        x = np.asarray(src.x) - src.x.min() + 100.0 * i
        parts.append((x, np.asarray(src.y) - src.y.min(), np.asarray(src.z)))
    _write(tmp_path / "whole.las", *(np.concatenate(k) for k in zip(*parts)))
    (tmp_path / "tiles").mkdir()
    for name, part in zip(("west", "east"), parts):
        _write(tmp_path / "tiles" / f"{name}.las", *part)
    return [len(p[0]) for p in parts]


@pytest.mark.slow
def test_tiles_of_a_survey_are_classified_as_the_whole_file(
    trained_run, tiny_dataset, tmp_path, capsys, monkeypatch
):
    sizes = _split_pair(tiny_dataset, tmp_path)
    model, cfg = load_model(trained_run[0].best_weights)
    kw = dict(probabilities=True, window=100.0, progress=False)
    (whole,) = predict_files(model, cfg, [PredictJob(tmp_path / "whole.las", None, "w")],
                             tmp_path / "whole", **kw)  # fmt: skip
    jobs = [PredictJob(tmp_path / "tiles" / f"{n}.las", None, n) for n in ("west", "east")]
    run, decoded = [], []  # windows through the model, files decoded for their neighbours
    infer, decode = predict_windows.infer_tiles, survey.read_point_fields

    def counted(m, i, *a, **k):
        run.append(len(i))
        return infer(m, i, *a, **k)

    monkeypatch.setattr(predict_windows, "infer_tiles", counted)
    monkeypatch.setattr(survey, "read_point_fields", lambda p: decoded.append(p) or decode(p))
    tiles = predict_files(model, cfg, jobs, tmp_path / "survey", **kw)
    monkeypatch.undo()
    # the window on the seam classifies points of both files and is run once, for the first
    assert sum(run) == whole.windows
    # the west file's points are kept from its own reading; the east's, decoded for the west,
    # are kept for the east's turn; nothing is left behind
    assert decoded == [jobs[1].las]
    assert not list((tmp_path / "survey").glob(".uxbseg-survey-*"))
    alone = predict_files(model, cfg, jobs, tmp_path / "alone", survey=False, **kw)
    assert whole.windows == 3 and [r.survey for r in tiles] == [2, 2]
    assert [r.windows for r in tiles] == [2, 2]  # the windows over each: one on the seam
    assert [r.windows for r in alone] == [0, 0]  # each file is one tile on its own
    fields = ("classification", "prob_ground", "prob_plazuela", "prob_structure")
    big = laspy.read(tmp_path / "whole" / "pred_w.las")
    got = {k: [] for k in fields}
    lone = {k: [] for k in fields}
    for name in ("west", "east"):
        for k in fields:
            got[k].append(np.asarray(laspy.read(tmp_path / "survey" / f"pred_{name}.las")[k]))
            lone[k].append(np.asarray(laspy.read(tmp_path / "alone" / f"pred_{name}.las")[k]))
    for k in fields:
        np.testing.assert_array_equal(np.concatenate(got[k]), np.asarray(big[k]), err_msg=k)
    # on their own the files are predicted otherwise: the comparison above can fail
    p = np.concatenate(lone["prob_plazuela"])
    assert np.abs(p - np.asarray(big["prob_plazuela"])).max() > 1e-3
    # the window on the seam is predicted once in each file, to the same grid as the whole's
    folders = [tmp_path / "survey" / f"pred_{n}.windows" for n in ("west", "east")]
    index = [json.loads((f / "windows.json").read_text()) for f in folders]
    assert index[0]["survey"] == ["west.las", "east.las"]
    for i in index:
        assert (i["rows"], i["columns"]) == (1, 3)  # the whole's plan
    assert sum(w["points"] for i in index for w in i["windows"]) == sum(sizes)
    seam = {(w["row"], w["col"]) for w in index[0]["windows"]}
    seam &= {(w["row"], w["col"]) for w in index[1]["windows"]}
    assert seam
    for r, c in seam:
        name = f"r{r:03d}_c{c:03d}.npy"
        want = np.load(tmp_path / "whole" / "pred_w.windows" / name)
        for f in folders:
            np.testing.assert_array_equal(np.load(f / name), want)
    # the command line says so, and --no-survey predicts each file on its own
    args = ["--weights", str(trained_run[0].best_weights), "--input", str(tmp_path / "tiles")]
    assert main(["predict", *args, "--out", str(tmp_path / "cli"), "--window", "100"]) == 0
    assert "in a survey of 2 files)" in capsys.readouterr().out
    assert main(["predict", *args, "--out", str(tmp_path / "cli2"), "--window", "100",
                 "--no-survey"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "in a survey" not in out and "pred_west.npy" in out  # one tile on its own


def _spoil_header_bounds(path):
    """Write a maximum X (LAS 1.2 header, byte 179) 10 m short of the points."""
    with open(path, "r+b") as f:
        f.seek(179)
        (max_x,) = struct.unpack("<d", f.read(8))
        f.seek(179)
        f.write(struct.pack("<d", max_x - 10.0))


@pytest.mark.slow
def test_a_file_whose_header_understates_its_bounds_is_predicted_on_its_own(
    trained_run, tiny_dataset, tmp_path, caplog
):
    sizes = _split_pair(tiny_dataset, tmp_path)
    east = tmp_path / "tiles" / "east.las"
    _spoil_header_bounds(east)
    model, cfg = load_model(trained_run[0].best_weights)
    jobs = [PredictJob(tmp_path / "tiles" / f"{n}.las", None, n) for n in ("west", "east")]
    with caplog.at_level(logging.INFO):
        res = predict_files(model, cfg, jobs, tmp_path / "out", window=100.0, progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (header,) = [m for m in warned if "its header states the box" in m]  # said once, with the fix
    assert header.startswith(f"{east}: ") and "rewrite the header" in header
    assert f"{east}: its points reach beyond the bounds in its header" in caplog.text  # info
    assert [r.error for r in res] == [None, None]
    assert [r.survey for r in res] == [2, 0]  # the west file still reads the east's points
    assert [r.points for r in res] == sizes
    out = laspy.read(tmp_path / "out" / "pred_east.las")
    assert len(out.points) == sizes[1]


@pytest.mark.slow
def test_given_images_of_a_survey_are_cut_across_files(trained_run, tiny_dataset, tmp_path):
    """With an image per file, a window over the seam takes each side from that side's image;
    the result is close to the whole file's with the two images laid side by side."""
    sizes = _split_pair(tiny_dataset, tmp_path)
    pairs = sorted((tiny_dataset / "test").glob("pair_*"))[:2]
    images = [np.asarray(Image.open(next(p.glob("tpi_100m*.png"))).convert("RGB")) for p in pairs]
    Image.fromarray(np.concatenate(images, axis=1)).save(tmp_path / "whole.png")
    for name, im in zip(("west", "east"), images):
        Image.fromarray(im).save(tmp_path / "tiles" / f"{name}.png")
    model, cfg = load_model(trained_run[0].best_weights)
    kw = dict(probabilities=True, window=100.0, progress=False)
    whole_job = PredictJob(tmp_path / "whole.las", tmp_path / "whole.png", "w")
    predict_files(model, cfg, [whole_job], tmp_path / "whole", **kw)
    jobs = [
        PredictJob(tmp_path / "tiles" / f"{n}.las", tmp_path / "tiles" / f"{n}.png", n)
        for n in ("west", "east")
    ]
    res = predict_files(model, cfg, jobs, tmp_path / "survey", **kw)
    assert [r.survey for r in res] == [2, 2] and [r.points for r in res] == sizes
    alone = predict_files(model, cfg, jobs, tmp_path / "alone", survey=False, **kw)
    assert [r.survey for r in alone] == [0, 0]

    def plazuela(folder, names):
        return np.concatenate(
            [laspy.read(tmp_path / folder / f"pred_{n}.las")["prob_plazuela"] for n in names]
        )

    want = plazuela("whole", ["w"])
    got = np.abs(plazuela("survey", ["west", "east"]) - want).max()
    lone = np.abs(plazuela("alone", ["west", "east"]) - want).max()
    # the images' pixels at the seam are interpolated from each side's own image (measured:
    # at most 0.0012 apart); each file on its own is far from the whole's (measured: 0.19)
    assert got < 0.005 and lone > 0.05


@pytest.mark.slow
def test_an_unreadable_neighbour_fails_alone(trained_run, tiny_dataset, tmp_path, caplog):
    _split_pair(tiny_dataset, tmp_path)
    east = tmp_path / "tiles" / "east.las"
    east.write_bytes(east.read_bytes()[:-5000])  # the header is whole, the points are not
    model, cfg = load_model(trained_run[0].best_weights)
    jobs = [PredictJob(tmp_path / "tiles" / f"{n}.las", None, n) for n in ("west", "east")]
    with caplog.at_level(logging.WARNING):
        res = predict_files(model, cfg, jobs, tmp_path / "out", window=100.0, progress=False)
    assert res[0].error is None and res[0].survey == 2
    assert "east.las" in res[1].error and "truncated" in res[1].error
    assert f"{jobs[0].las} is predicted without the points of {east}" in caplog.text
    assert not list((tmp_path / "out").glob(".uxbseg-survey-*"))


@pytest.mark.slow
def test_neighbours_in_another_frame_are_read_in_the_files_own(trained_run, tiny_dataset, tmp_path):
    """The east file with another offset (and finer scale): its points are converted into the
    west's frame as context, no window is shared (the plans are the same places in two
    frames), and the classes are still the whole file's."""
    _split_pair(tiny_dataset, tmp_path)
    east = laspy.read(tmp_path / "tiles" / "east.las")
    x, y, z = (np.asarray(east[k]) for k in "xyz")
    _write(tmp_path / "tiles" / "east.las", x, y, z, offsets=(100.0, -50.0, 3.0),
           scales=(0.005, 0.005, 0.01))  # fmt: skip
    model, cfg = load_model(trained_run[0].best_weights)
    kw = dict(probabilities=True, window=100.0, progress=False)
    predict_files(model, cfg, [PredictJob(tmp_path / "whole.las", None, "w")],
                  tmp_path / "whole", **kw)  # fmt: skip
    jobs = [PredictJob(tmp_path / "tiles" / f"{n}.las", None, n) for n in ("west", "east")]
    res = predict_files(model, cfg, jobs, tmp_path / "survey", **kw)
    assert [r.survey for r in res] == [2, 2]
    big = laspy.read(tmp_path / "whole" / "pred_w.las")
    got = [laspy.read(tmp_path / "survey" / f"pred_{n}.las") for n in ("west", "east")]
    for k in ("classification", "prob_plazuela", "prob_structure"):
        both = np.concatenate([np.asarray(g[k]) for g in got])
        np.testing.assert_allclose(both, np.asarray(big[k]), atol=1e-4, err_msg=k)


@pytest.mark.slow
def test_the_runs_finds_join_the_parts_a_seam_cut(trained_run, tiny_dataset, tmp_path):
    """finds.csv lists every file's finds, a find cut by the seam once: as many as the whole
    file's, where the files' own lists count it twice (a negative logit adjustment makes the
    barely trained model predict some)."""
    import csv

    from uxbseg.config import config_from_dict, config_to_dict

    _split_pair(tiny_dataset, tmp_path)
    model, cfg = load_model(trained_run[0].best_weights)
    data = config_to_dict(cfg)
    data["model"]["logit_adjustment"] = -3.0
    cfg = config_from_dict(data)
    kw = dict(window=100.0, progress=False, probabilities=True)
    (whole,) = predict_files(model, cfg, [PredictJob(tmp_path / "whole.las", None, "w")],
                             tmp_path / "whole", **kw)  # fmt: skip
    jobs = [PredictJob(tmp_path / "tiles" / f"{n}.las", None, n) for n in ("west", "east")]
    res = predict_files(model, cfg, jobs, tmp_path / "survey", **kw)
    with open(tmp_path / "survey" / "finds.csv") as f:
        rows = list(csv.DictReader(f))
    per_file = sum(sum(r.finds.values()) for r in res)
    assert len(rows) == sum(whole.finds.values()) < per_file  # measured: 1 find, 2 parts
    assert "pred_east.las;pred_west.las" in {r["files"] for r in rows}
    # each find's score is the mean probability of its class over its points, as the written
    # probabilities give it: in windows, in a survey's windows (some run for the other file),
    # and predicted as one tile
    alone = predict_files(model, cfg, jobs, tmp_path / "alone", survey=False,
                          **{**kw, "window": None})  # fmt: skip
    scored = 0
    for r in [whole, *res, *alone]:
        las = laspy.read(r.las)
        classes = las_code_to_class(np.asarray(las.classification))
        probs = np.stack([np.asarray(las[f"prob_{c.name}"]) for c in CLASSES])
        scores = np.take_along_axis(probs, classes[None], 0)[0]
        want = find_objects(las.x, las.y, classes, seam=SEAM_TOLERANCE, scores=scores)
        got = r.found + r.edge_parts
        assert [replace(f, score=None) for f in got] == [replace(f, score=None) for f in want]
        for g, w in zip(got, want, strict=True):
            assert g.score == pytest.approx(w.score, abs=2e-3)  # stored as float16
            assert 0.0 < g.score <= 1.0
        scored += len(got)
    assert scored >= 4
    assert all(row["score"] for row in rows)


def _labelled_survey(tiny_dataset, root):
    """The two test tiles side by side as two labelled pairs of ``root/test`` (west, east):
    their LAS moved to touch, with their classes, images and masks."""
    import shutil

    pairs = sorted((tiny_dataset / "test").glob("pair_*"))[:2]
    out = []
    for i, pair in enumerate(pairs):
        dest = root / "test" / f"pair_{i:04d}"
        dest.mkdir(parents=True)
        src = laspy.read(next(pair.glob("*.las")))
        header = laspy.LasHeader(point_format=3, version="1.2")
        header.scales, header.offsets = [0.01] * 3, [0.0] * 3
        las = laspy.LasData(header)
        las.x = np.asarray(src.x) - src.x.min() + 100.0 * i
        las.y = np.asarray(src.y) - src.y.min()
        las.z = np.asarray(src.z)
        las.classification = np.asarray(src.classification)
        las.write(dest / f"tile_{i}.las")
        for pattern in ("tpi_100m*.png", "uxb_msk_pl_st*.png"):
            shutil.copy(next(pair.glob(pattern)), dest)
        out.append(
            PredictJob(dest / f"tile_{i}.las", next(dest.glob("tpi_100m*.png")), f"tile_{i}")
        )
    return out


@pytest.mark.slow
def test_evaluate_scores_tiles_side_by_side_as_predict_classifies_them(
    trained_run, tiny_dataset, tmp_path, caplog, capsys, monkeypatch
):
    """--survey: the points row and the objects are those of the classes predict writes for
    the two tiles as a survey (a logit adjustment of -0.2 makes the barely trained model
    predict structures in some places); the tiles alone are scored as before."""
    import tempfile

    from uxbseg.config import config_from_dict, config_to_dict
    from uxbseg.evaluate import confusion, evaluate
    from uxbseg.finds import object_counts
    from uxbseg.metrics import metrics_from_confusion

    jobs = _labelled_survey(tiny_dataset, tmp_path / "data")
    model, cfg = load_model(trained_run[0].best_weights)
    data = config_to_dict(cfg)
    data["model"]["logit_adjustment"] = -0.2
    cfg = config_from_dict(data)
    scratch = tmp_path / "scratch"  # where the neighbours' points are kept while needed
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    kw = dict(window=100.0, progress=False)
    with caplog.at_level(logging.INFO, logger="uxbseg.evaluate"):
        plain = evaluate(model, cfg, tmp_path / "data", **kw)
    assert "survey" not in plain
    assert "2 of 2 tiles lie side by side" in caplog.text  # and --survey is named
    result = evaluate(model, cfg, tmp_path / "data", survey=True, report=tmp_path / "rep", **kw)
    assert not list(scratch.iterdir())  # the kept points are gone
    sv = result["survey"]
    assert (sv["surveys"], sv["tiles"], sv["side"], sv["overlap"]) == (1, 2, 100.0, 0.25)
    # the first pass is unchanged by --survey
    for key in ("voxels", "pixels", "points"):
        assert result[key]["confusion"] == plain[key]["confusion"], key
    assert result["objects"] == plain["objects"]
    res = predict_files(model, cfg, jobs, tmp_path / "pred", grids=False, **kw)
    assert [r.survey for r in res] == [2, 2]
    x, y, truth, got = [], [], [], []
    for r, job in zip(res, jobs, strict=True):
        src, out = laspy.read(job.las), laspy.read(r.las)
        x.append(np.asarray(src.x))
        y.append(np.asarray(src.y))
        truth.append(las_code_to_class(np.asarray(src.classification)))
        got.append(las_code_to_class(np.asarray(out.classification)))
    # each tile's row has its points alone and as a survey
    for row, t, g in zip(result["per_tile"], truth, got, strict=True):
        assert row["survey"]["confusion"] == confusion(t, g).tolist()
        assert np.sum(row["confusion"]) == np.sum(row["survey"]["confusion"])
    # the report pictures each tile once, with the classes predict writes
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<h3>") == 2
    for job, t, g in zip(jobs, truth, got, strict=True):
        iou = metrics_from_confusion(confusion(t, g))
        head = f"<h3>{job.las.parent.name}: point IoU " + ", ".join(
            f"{c.name} {iou[f'iou_{c.name}']:.2f}" if np.isfinite(iou[f"iou_{c.name}"])
            else f"{c.name} -" for c in CLASSES
        )  # fmt: skip
        assert head in page
    x, y, truth, got = (np.concatenate(v) for v in (x, y, truth, got))
    assert sv["points"]["confusion"] == confusion(truth, got).tolist()
    assert np.asarray(sv["points"]["confusion"])[:, 1:].sum() > 0  # it predicts architecture
    # alone, each tile is classified otherwise: the comparison above can fail
    assert sv["points"]["confusion"] != result["points"]["confusion"]
    base, want = sv["points"]["baseline"], result["points"]["baseline"]
    assert base.keys() == want.keys()
    for k, v in base.items():
        assert v == pytest.approx(want[k], nan_ok=True), k
    counts = object_counts(x, y, truth, got)  # over the two tiles as one area
    for name, c in counts.items():
        assert {k: sv["objects"][name][k] for k in c} == c, name
    assert sum(c["predicted"] for c in counts.values()) > 0
    weights = str(trained_run[0].best_weights)
    args = ["--weights", weights, "--data", str(tmp_path / "data"), "--window", "100"]
    assert main(["evaluate", *args, "--logit-adjustment", "-0.2", "--survey"]) == 0
    out = capsys.readouterr().out
    assert "points (as surveys)" in out and "2 tiles lie side by side in 1 survey(s)" in out
    assert "objects as surveys" in out


def test_file_pairs_in_blocks_are_those_of_every_pair():
    """The pairs found a few rows at a time (memory of files x block, not files squared) are
    exactly those of the whole matrix, in row order."""
    from pathlib import Path

    from uxbseg.survey import SURVEY_OVERLAP, SurveyFile, _file_pairs

    rng = np.random.default_rng(5)
    n = 60
    corner = rng.uniform(0, 1000, (n, 2))
    size = rng.choice([100.0, 100.0, 150.0, 400.0], n)
    epsg = rng.choice([2154, 2154, 2154, 32620, None], n)
    frame = ((0.01,) * 3, (0.0,) * 3)
    entries = [
        SurveyFile(Path(f"{k}.las"), None, (*corner[k], *(corner[k] + size[k])), *frame, 1, e)
        for k, e in enumerate(epsg)
    ]
    got = _file_pairs(entries, 100.0, block=7)
    b = np.array([f.bounds for f in entries])
    want = {k: [] for k in got}
    for i in range(n):
        for j in range(i + 1, n):
            gx = max(b[i, 0] - b[j, 2], b[j, 0] - b[i, 2])
            gy = max(b[i, 1] - b[j, 3], b[j, 1] - b[i, 3])
            shared = max(-gx, 0) * max(-gy, 0)
            smaller = min(size[i], size[j]) ** 2
            same = shared > SURVEY_OVERLAP * smaller
            within = max(gx, gy) <= 100.0 and not same
            crs = epsg[i] is not None and epsg[j] is not None and epsg[i] != epsg[j]
            hits = {
                "near": within and not crs,
                "same": same,
                "most": shared > 0.5 * smaller,
                "crs": within and crs,
            }
            for key, hit in hits.items():
                if hit:
                    want[key].append((i, j))
    for key, (i, j) in got.items():
        assert list(zip(i.tolist(), j.tolist())) == want[key], key
    assert all(len(v) for v in want.values())  # every kind occurs: the comparison can fail
