"""Finds: objects of the points' classes, and how many real ones a prediction found."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from uxbseg.classes import IGNORE
from uxbseg.finds import (
    FIND_MIN_AREA,
    SEAM_TOLERANCE,
    Find,
    count_finds,
    find_objects,
    merge_finds,
    object_counts,
    outline,
    score_auc,
    write_finds,
    write_finds_geojson,
)


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


def test_a_finds_score_is_the_mean_probability_of_its_points_class():
    x, y, cls = _scene()
    scores = np.where(cls == 1, 0.6, np.where(cls == 2, 0.9, 0.99))
    scores[(cls == 2) & (x < 15)] = 0.7  # the structure's west half less sure
    pl, st = sorted(find_objects(x, y, cls, scores=scores.astype(np.float16)), key=lambda f: f.kind)
    assert pl.score == pytest.approx(0.6, abs=1e-3)  # float16 storage
    west = ((cls == 2) & (x < 15) & (np.abs(x - 15) < 5)).sum() / ((cls == 2) & (x > 9)).sum()
    assert st.score == pytest.approx(0.7 * west + 0.9 * (1 - west), abs=0.01)
    assert all(f.score is None for f in find_objects(x, y, cls))
    # joined across a seam: weighted by the parts' points
    w = Find("structure", 99.0, 50.0, 10.0, 30, 98.0, 49.0, 100.0, 51.0, score=0.5)
    e = Find("structure", 101.0, 50.0, 10.0, 10, 100.2, 49.0, 102.0, 51.0, score=0.9)
    west_box, east_box = (0.0, 0.0, 100.0, 100.0), (100.2, 0.0, 200.0, 100.0)
    ((f, _),) = merge_finds([("w", west_box, [w]), ("e", east_box, [e])])
    assert f.score == pytest.approx((0.5 * 30 + 0.9 * 10) / 40)
    ((f, _),) = merge_finds([("w", west_box, [w]), ("e", east_box, [replace(e, score=None)])])
    assert f.score is None


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


def test_object_counts_give_each_predicted_objects_score_and_whether_it_is_real():
    x, y, truth = _scene()
    pred = truth.copy()
    false = (np.abs(x - 30) < 3) & (np.abs(y - 35) < 3)
    pred[false] = 2  # a false structure, less sure than the real one
    scores = np.where(false, 0.55, np.where(pred == 2, 0.9, 0.7))
    scored: dict = {}
    counts = object_counts(x, y, truth, pred, scores=scores, scored=scored)
    assert counts["structure"] == {"true": 1, "found": 1, "predicted": 2, "real": 1}
    assert sorted(scored["structure"]) == [(pytest.approx(0.55), False), (pytest.approx(0.9), True)]
    assert scored["plazuela"] == [(pytest.approx(0.7), True)]
    assert score_auc(scored["structure"]) == 1.0  # the real one first
    assert score_auc([(0.2, True), (0.6, False), (0.4, True), (0.1, False)]) == 0.5
    assert score_auc([(0.3, True), (0.6, False)]) == 0.0
    assert score_auc(scored["plazuela"]) is None  # nothing false to rank below
    assert score_auc([]) is None
    assert object_counts(x, y, truth, pred) == counts  # the same counts without scores


def test_write_finds_is_a_csv_with_a_header(tmp_path):
    finds = [
        Find("structure", 1.0, 2.0, 30.0, 12, 0.0, 0.0, 3.0, 4.0, score=0.8734),
        Find("plazuela", 1.0, 2.0, 30.0, 12, 0.0, 0.0, 3.0, 4.0),  # no score known
    ]
    path = write_finds(tmp_path / "f.csv", finds)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {
        "kind": "structure", "x": "1.00", "y": "2.00", "area": "30.00", "points": "12",
        "xmin": "0.00", "ymin": "0.00", "xmax": "3.00", "ymax": "4.00", "score": "0.87",
    }  # fmt: skip
    assert rows[1]["kind"] == "plazuela" and rows[1]["score"] == ""
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
    s = Find("structure", 1.0, 2.0, 30.0, 12, 0.0, 0.0, 3.0, 4.0)
    path = write_finds(tmp_path / "three.csv", [s, f, s], [["a.las"]] * 3)
    assert count_finds(path) == {"plazuela": 1, "structure": 2}
    assert count_finds(write_finds(tmp_path / "none.csv", [])) == {"plazuela": 0, "structure": 0}


def _area(ring) -> float:
    """Signed area of a closed (x, y) ring: positive anticlockwise."""
    xy = np.asarray(ring[:-1])
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_outline_of_cells_with_a_hole_and_parts_touching_at_a_corner():
    # row 0 at the top; the hole (1, 1) touches the empty corner (0, 0) only diagonally
    mask = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
    (poly,) = outline(mask, corner=(100.0, 200.0), cell=(0.5, 0.5))
    exterior, hole = poly
    assert _area(exterior) == 8 * 0.25 and _area(hole) == -0.25  # anticlockwise, hole clockwise
    assert exterior[0] == exterior[-1] and len(exterior) == 7  # 6 corners: no point mid-side
    assert set(exterior) == {
        (100.0, 199.5), (100.0, 198.5), (101.5, 198.5), (101.5, 200.0), (100.5, 200.0),
        (100.5, 199.5),
    }  # fmt: skip
    assert set(hole) == {(100.5, 199.5), (101.0, 199.5), (101.0, 199.0), (100.5, 199.0)}
    # two cells touching only at a corner: a polygon each
    parts = outline(np.array([[1, 0], [0, 1]], bool), (0.0, 0.0), (1.0, 1.0))
    assert sorted(_area(p[0]) for p in parts) == [1.0, 1.0] and all(len(p) == 1 for p in parts)


def test_outline_area_is_the_cells_area_on_random_masks():
    """Exterior minus holes is the cells' area, every ring closed, exteriors anticlockwise and
    holes clockwise (RFC 7946), whatever the mask (cells 2 m x 0.5 m)."""
    rng = np.random.default_rng(0)
    holes = 0
    for _ in range(300):
        mask = rng.random(tuple(rng.integers(1, 14, 2))) < rng.uniform(0.3, 0.8)
        polygons = outline(mask, (10.0, 20.0), (2.0, 0.5))
        total = sum(_area(p[0]) + sum(_area(h) for h in p[1:]) for p in polygons)
        assert total == pytest.approx(mask.sum() * 1.0)
        for p in polygons:
            assert _area(p[0]) > 0 and all(_area(h) < 0 for h in p[1:])
            assert all(ring[0] == ring[-1] for ring in p)
            holes += len(p) - 1
    assert holes > 50  # the masks had holes to get right


def test_find_objects_outline_matches_its_area_and_box():
    x, y, cls = _scene()
    for f in find_objects(x, y, cls):  # one polygon a 4-connected part (8-connected finds)
        assert sum(_area(r) for poly in f.outline for r in poly) == pytest.approx(f.area)
        assert max(_area(poly[0]) for poly in f.outline) > 0.9 * f.area  # one main part
        xs, ys = zip(*(v for poly in f.outline for v in poly[0]), strict=True)
        assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(
            (f.xmin, f.ymin, f.xmax, f.ymax)
        )


def test_write_finds_geojson_outlines_crs_and_files(tmp_path):
    x, y, cls = _scene()
    finds = find_objects(x, y, cls)
    boxed = Find("structure", 1.0, 2.0, 30.0, 12, 0.0, 0.0, 3.0, 4.0)  # no outline: its box
    files = [["a.las"]] * len(finds) + [["a.las", "b.las"]]
    path = write_finds_geojson(tmp_path / "finds.geojson", [*finds, boxed], files, epsg=2154)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::2154"
    *traced, box = doc["features"]
    for feature, f in zip(traced, finds, strict=True):
        assert feature["geometry"]["type"] == "MultiPolygon"
        rings = [[tuple(v) for v in r] for p in feature["geometry"]["coordinates"] for r in p]
        assert sum(map(_area, rings)) == pytest.approx(f.area, abs=0.05)
        assert feature["properties"]["kind"] == f.kind
        assert feature["properties"]["area"] == round(f.area, 2)
    assert box["geometry"]["coordinates"] == [[[[0, 0], [3, 0], [3, 4], [0, 4], [0, 0]]]]
    assert box["properties"] == {
        "kind": "structure", "x": 1.0, "y": 2.0, "area": 30.0, "points": 12,
        "xmin": 0.0, "ymin": 0.0, "xmax": 3.0, "ymax": 4.0, "score": None, "files": "a.las;b.las",
    }  # fmt: skip
    unnamed = json.loads(write_finds_geojson(tmp_path / "n.geojson", finds).read_text())
    assert "crs" not in unnamed and "files" not in unnamed["features"][0]["properties"]
    assert not list(tmp_path.glob(".*partial"))


def test_merged_find_keeps_the_outlines_of_its_parts():
    west, east = (0.0, 0.0, 100.0, 100.0), (100.0, 0.0, 200.0, 100.0)
    a = outline(np.ones((2, 9), bool), (95.0, 55.0), (0.5, 5.0))
    b = outline(np.ones((2, 15), bool), (100.5, 55.0), (0.5, 5.0))
    halves = [
        Find("structure", 97.5, 50.0, 45.0, 40, 95.0, 45.0, 99.5, 55.0, a),
        Find("structure", 104.0, 50.0, 75.0, 60, 100.5, 45.0, 108.0, 55.0, b),
    ]
    ((f, files),) = merge_finds([("w", west, halves[:1]), ("e", east, halves[1:])])
    assert files == ["e", "w"] and f.outline == a + b


def _split_scene(cut: float, seed: int = 1):
    """Points every ~0.3 m over 60 x 40 m: a 4 x 1.5 m structure (6 m²) at (cut, 20) and a
    1 x 1 m speck of structure at the west file's edge (0.5, 5), cut at x = ``cut`` into a
    west and an east file."""
    rng = np.random.default_rng(seed)
    n = 60 * 40 * 12
    x, y = rng.uniform(0, 60, n), rng.uniform(0, 40, n)
    cls = np.zeros(n, np.int64)
    cls[(np.abs(x - cut) < 2) & (np.abs(y - 20) < 0.75)] = 2
    cls[(np.abs(x - 0.5) < 0.5) & (np.abs(y - 5) < 0.5)] = 2
    west = x < cut
    return [(x[m], y[m], cls[m]) for m in (west, ~west)]


def test_a_structure_cut_into_pieces_each_too_small_is_not_lost():
    """A seam cuts a 6 m² structure into two 3 m² halves, each below the 4 m² least area:
    each file's own list drops them, the run's list joins them into one find of 6 m²."""
    files = []
    for name, (x, y, cls) in zip(("w", "e"), _split_scene(30.0), strict=True):
        assert find_objects(x, y, cls) == []  # each half alone is a speck
        found = find_objects(x, y, cls, seam=3.0)
        assert all(f.edge_part for f in found) and len(found) == (2 if name == "w" else 1)
        files.append((name, (float(x.min()), float(y.min()), float(x.max()), float(y.max())),
                      found))  # fmt: skip
    ((f, names),) = merge_finds(files)  # the speck at the west edge has no other part: dropped
    assert names == ["e", "w"] and not f.edge_part
    assert (f.kind, f.x, f.y) == (
        "structure",
        pytest.approx(30, abs=0.3),
        pytest.approx(20, abs=0.3),
    )
    assert f.area == pytest.approx(6.0, rel=0.35) and len(f.outline) == 2


def test_seam_keeps_only_small_objects_at_the_edge():
    x, y, cls = _scene()
    cls[(np.abs(x - 30) < 0.5) & (np.abs(y - 39.5) < 0.5)] = 2  # a speck at the north edge
    whole = find_objects(x, y, cls)
    found = find_objects(x, y, cls, seam=3.0)
    assert [f for f in found if not f.edge_part] == whole  # the speck at (5, 5) is 4.5 m in
    (speck,) = [f for f in found if f.edge_part]
    assert speck.area < 4.0 and speck.y == pytest.approx(39.5, abs=0.6)
    # alone it is no find, nor with pieces too small together (1 + 1.5 m² < 4 m²)
    assert merge_finds([("a", (0.0, 0.0, 60.0, 40.0), found)]) == [(f, ["a"]) for f in whole]
    w = Find("structure", 99.5, 50.0, 1.0, 9, 99.0, 49.5, 100.0, 50.5, edge_part=True)
    e = Find("structure", 100.7, 50.0, 1.5, 12, 100.2, 49.5, 101.2, 50.5, edge_part=True)
    west, east = (0.0, 0.0, 100.0, 100.0), (100.2, 0.0, 200.0, 100.0)
    assert merge_finds([("w", west, [w]), ("e", east, [e])]) == []
    big = Find("structure", 102.0, 50.0, 3.5, 30, 100.2, 49.0, 103.0, 51.0, edge_part=True)
    ((joined, _),) = merge_finds([("w", west, [w]), ("e", east, [big])])  # 4.5 m² together
    assert joined.area == 4.5 and joined.points == 39


def test_evaluate_says_how_well_the_scores_rank_the_finds():
    from uxbseg.evaluate import format_result

    o = {"true": 3, "found": 2, "predicted": 4, "real": 2, "recall": 2 / 3, "precision": 0.5}
    objects = {"plazuela": {**o, "score_auc": None}, "structure": {**o, "score_auc": 0.754}}
    text = format_result({"split": "test", "tiles": 2, "objects": objects})
    assert (
        "structure found 2 of 3 (recall 0.67), 4 predicted, 2 real (precision 0.50; their "
        "scores rank the real above the false with AUC 0.75)"
    ) in text
    assert "plazuela found 2 of 3 (recall 0.67), 4 predicted, 2 real (precision 0.50);" in text


def _edge_part(rng, x0: float, y0: float) -> Find:
    """A find of random size along a random edge of the 100 m file at (x0, y0)."""
    w, h = rng.uniform(1, 20, 2)
    side = rng.integers(4)  # west, east, south, north
    xmin = {0: x0, 1: x0 + 100 - w}.get(side, x0 + rng.uniform(0, 100 - w))
    ymin = {2: y0, 3: y0 + 100 - h}.get(side, y0 + rng.uniform(0, 100 - h))
    kind = "structure" if rng.random() < 0.7 else "plazuela"
    area = float(w * h * 0.6)
    small = area < FIND_MIN_AREA[kind]
    return Find(kind, xmin + w / 2, ymin + h / 2, area, 10, xmin, ymin, xmin + w, ymin + h,
                edge_part=small)  # fmt: skip


def _touch(a: Find, b: Find, t: float) -> bool:
    return (
        b.xmin <= a.xmax + t
        and a.xmin <= b.xmax + t
        and b.ymin <= a.ymax + t
        and a.ymin <= b.ymax + t
    )


def test_merge_finds_joins_every_touching_pair_of_parts_at_file_edges():
    """Parts at the edges of a 4 x 4 grid of files, against every pair checked by hand: the
    sweep along x joins exactly the parts of other files that touch (within the tolerance)."""
    rng = np.random.default_rng(11)
    files, parts = [], []
    for r in range(4):
        for c in range(4):
            name, x0, y0 = f"f{r}{c}", 100.0 * c, 100.0 * r
            finds = [_edge_part(rng, x0, y0) for _ in range(30)]
            parts += [(name, f) for f in finds]
            files.append((name, (x0, y0, x0 + 100.0, y0 + 100.0), finds))
    group = list(range(len(parts)))  # union-find over every pair

    def root(k: int) -> int:
        while group[k] != k:
            k = group[k]
        return k

    for i, (fi, a) in enumerate(parts):
        for j in range(i + 1, len(parts)):
            fj, b = parts[j]
            if fi != fj and a.kind == b.kind and _touch(a, b, SEAM_TOLERANCE):
                group[root(j)] = root(i)
    joined: dict[int, list[Find]] = {}
    for k, (_, f) in enumerate(parts):
        joined.setdefault(root(k), []).append(f)
    want = []
    for fs in joined.values():
        area = sum(f.area for f in fs)
        if all(f.edge_part for f in fs) and area < FIND_MIN_AREA[fs[0].kind]:
            continue  # specks at edges, too small even joined
        want.append(round(area, 6))
    want.sort()
    got = sorted(round(m.area, 6) for m, _ in merge_finds(files))
    assert got == want
    assert len(want) < len(parts) - 50  # many parts were joined: the comparison can fail
