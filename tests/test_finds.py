"""Finds: objects of the points' classes, and how many real ones a prediction found."""

import csv

import numpy as np
import pytest

from uxbseg.classes import IGNORE
from uxbseg.finds import Find, find_objects, merge_finds, object_counts, write_finds


def _scene(seed=0):
    """Points every ~0.3 m over 60 x 40 m: a 10 x 6 m structure at (15, 20), a 20 x 20 m
    plazuela at (45, 20), a 1 x 1 m speck of structure at (5, 5); ground elsewhere."""
    rng = np.random.default_rng(seed)
    n = 60 * 40 * 12
    x, y = rng.uniform(0, 60, n), rng.uniform(0, 40, n)
    cls = np.zeros(n, np.int64)
    cls[(np.abs(x - 15) < 5) & (np.abs(y - 20) < 3)] = 2
    cls[(np.abs(x - 45) < 10) & (np.abs(y - 20) < 10)] = 1
    cls[(np.abs(x - 5) < 0.5) & (np.abs(y - 5) < 0.5)] = 2
    return x, y, cls


def test_find_objects_gives_each_object_its_place_size_and_points():
    x, y, cls = _scene()
    finds = sorted(find_objects(x, y, cls), key=lambda f: f.kind)
    assert [f.kind for f in finds] == ["plazuela", "structure"]  # the speck is dropped
    pl, st = finds
    assert (pl.x, pl.y) == (pytest.approx(45, abs=0.5), pytest.approx(20, abs=0.5))
    assert (st.x, st.y) == (pytest.approx(15, abs=0.5), pytest.approx(20, abs=0.5))
    assert pl.area == pytest.approx(400, rel=0.15) and st.area == pytest.approx(60, rel=0.2)
    # its points: those of its class in its cells (a few at its rim fall in ground cells)
    speck = ((np.abs(x - 5) < 0.5) & (np.abs(y - 5) < 0.5)).sum()
    assert 0.9 * ((cls == 2).sum() - speck) < st.points <= (cls == 2).sum() - speck
    assert (st.xmin, st.xmax) == (pytest.approx(10, abs=1), pytest.approx(20, abs=1))
    assert (st.ymin, st.ymax) == (pytest.approx(17, abs=1), pytest.approx(23, abs=1))
    assert find_objects(x, y, np.zeros_like(cls)) == []


def test_object_counts_found_and_real():
    x, y, truth = _scene()
    pred = truth.copy()
    pred[(np.abs(x - 45) < 10) & (np.abs(y - 20) < 10) & (x > 40)] = 0  # 3/4 of the plazuela lost
    pred[(np.abs(x - 30) < 3) & (np.abs(y - 35) < 3)] = 2  # a false structure
    counts = object_counts(x, y, truth, pred)
    assert counts["plazuela"] == {"true": 1, "found": 0, "predicted": 1, "real": 1}
    assert counts["structure"] == {"true": 1, "found": 1, "predicted": 2, "real": 1}
    # truths that are IGNORE are no objects
    ignored = np.where(truth == 2, IGNORE, truth)
    assert object_counts(x, y, ignored, pred)["structure"]["true"] == 0


def test_write_finds_is_a_csv_with_a_header(tmp_path):
    finds = [Find("structure", 1.0, 2.0, 30.0, 12, 0.0, 0.0, 3.0, 4.0)]
    path = write_finds(tmp_path / "f.csv", finds)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"kind": "structure", "x": "1.00", "y": "2.00", "area": "30.00", "points": "12",
         "xmin": "0.00", "ymin": "0.00", "xmax": "3.00", "ymax": "4.00"}
    ]  # fmt: skip
    assert not list(tmp_path.glob(".*partial"))


def test_one_point_or_a_line_of_points_is_no_trouble():
    one = find_objects(np.array([5.0]), np.array([7.0]), np.array([2]))
    assert one == []  # a single cell is below the least area
    x = np.linspace(0, 50, 200)
    line = find_objects(x, np.full_like(x, 3.0), np.full(200, 2), cell=1.0)
    assert len(line) == 1 and line[0].points == 200 and line[0].ymin <= 3.0 <= line[0].ymax


def test_a_find_cut_by_a_seam_is_merged_and_no_other():
    west, east = (0.0, 0.0, 100.0, 100.0), (100.0, 0.0, 200.0, 100.0)
    halves = [  # a structure from x 95 to 108 cut at 100: 5 m in the west, 8 m in the east
        Find("structure", 97.5, 50.0, 50.0, 40, 95.0, 45.0, 99.5, 55.0),
        Find("structure", 104.0, 50.0, 80.0, 60, 100.5, 45.0, 108.0, 55.0),
    ]
    others = [
        Find("plazuela", 101.0, 20.0, 200.0, 90, 100.5, 10.0, 110.0, 30.0),  # other kind
        Find("structure", 50.0, 50.0, 30.0, 10, 47.0, 47.0, 53.0, 53.0),  # inside the west
        Find("structure", 98.0, 80.0, 20.0, 9, 96.0, 78.0, 99.5, 82.0),  # alone at the edge
    ]
    files = [("w", west, [halves[0], *others[1:]]), ("e", east, [halves[1], others[0]])]
    merged = merge_finds(files)
    assert len(merged) == 4
    (seam,) = [(f, files) for f, files in merged if files == ["e", "w"]]
    f = seam[0]
    assert (f.kind, f.area, f.points) == ("structure", 130.0, 100)
    assert f.x == pytest.approx((97.5 * 50 + 104.0 * 80) / 130)
    assert (f.xmin, f.xmax, f.ymin, f.ymax) == (95.0, 108.0, 45.0, 55.0)
    assert sorted(fs for _, fs in merged) == [["e"], ["e", "w"], ["w"], ["w"]]
    # two parts in one file are two finds, however close
    assert len(merge_finds([("w", west, halves)])) == 2


def test_write_finds_names_the_files(tmp_path):
    f = Find("plazuela", 1.0, 2.0, 30.0, 12, 0.0, 0.0, 3.0, 4.0)
    path = write_finds(tmp_path / "all.csv", [f], [["a.las", "b.las"]])
    with open(path) as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["files"] == "a.las;b.las" and row["kind"] == "plazuela"
