import shutil

import laspy
import numpy as np
import pytest
from PIL import Image

from uxbseg.cli import main


@pytest.fixture
def broken(tiny_dataset, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    return root


def test_clean_dataset_exits_zero(tiny_dataset, capsys):
    assert main(["inspect", str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    for split in ("[train] 4 pairs", "[test] 2 pairs", "[predict] 2 pairs"):
        assert split in out
    assert "pair_0000" in out and "no problems found" in out


def test_broken_files_are_named(broken, capsys):
    las = next((broken / "train" / "pair_0000").glob("*.las"))
    las.write_bytes(las.read_bytes()[: las.stat().st_size // 2])  # truncated
    next((broken / "train" / "pair_0001").glob("uxb_msk*.png")).unlink()  # missing mask
    mask = next((broken / "test" / "pair_0000").glob("uxb_msk*.png"))
    m = np.array(Image.open(mask))
    m[:5, :4] = 200
    Image.fromarray(m).save(mask)
    assert main(["inspect", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert str(las) in out and "truncated" in out
    assert "pair_0001: no mask" in out
    assert str(mask) in out and "200 (20 px)" in out


def test_json_lists_each_pairs_problems_and_notes(broken, capsys):
    import json

    las = next((broken / "train" / "pair_0000").glob("*.las"))
    las.write_bytes(las.read_bytes()[: las.stat().st_size // 2])  # truncated
    assert main(["inspect", str(broken), "--json"]) == 1  # the same exit code as the tables
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and set(report["splits"]) == {"train", "test", "predict"}
    train = {p["pair_id"]: p for p in report["splits"]["train"]}
    (problem,) = train["pair_0000"]["problems"]
    assert problem["file"] == str(las) and "truncated" in problem["reason"] and problem["fix"]
    ok = train["pair_0001"]
    assert ok["problems"] == [] and ok["points"] > 0 and ok["extent"][0] > 0
    assert sum(ok["las_classes"].values()) == ok["points"]
    assert any("outside the class map" in n for n in ok["notes"])
    assert len(report["splits"]["test"]) == 2
    assert report["notes"] == []  # a test/ split is there


def test_a_dataset_without_validation_split_is_told_how_to_make_one(broken, capsys):
    import json

    shutil.rmtree(broken / "test")
    assert main(["inspect", str(broken)]) == 0  # a note, not a problem: predict needs no test/
    out = capsys.readouterr().out
    assert "[predict] 2 pairs" in out and "[test]" not in out
    note = "note: no test/ split: `uxbseg train` validates on it"
    assert note in out and f"`uxbseg tile {broken} NEW_ROOT --side 100 --hold-out 0.2`" in out
    assert main(["inspect", str(broken), "--json"]) == 0
    (said,) = json.loads(capsys.readouterr().out)["notes"]
    assert said.startswith("no test/ split")


def test_more_problems(broken, capsys):
    p0 = broken / "train" / "pair_0000"
    img = next(p0.glob("tpi*.png"))
    shutil.copy(img, p0 / "tpi_100m_copy.png")  # two candidates
    p1 = broken / "train" / "pair_0001"
    next(p1.glob("tpi*.png")).write_bytes(b"garbage")  # unreadable PNG
    p2 = broken / "train" / "pair_0002"
    las_path = next(p2.glob("*.las"))
    las = laspy.read(las_path)
    empty = laspy.LasData(las.header)
    empty.points = las.points[:0]
    empty.write(las_path)  # empty LAS
    p3 = broken / "train" / "pair_0003"
    las_path = next(p3.glob("*.las"))
    las = laspy.read(las_path)
    las.X = np.full(len(las.points), las.X[0])  # zero X extent
    las.write(las_path)
    mask = next((broken / "test" / "pair_0001").glob("uxb*.png"))
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(mask)  # size mismatch
    assert main(["inspect", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "2 candidate images" in out
    assert "not a readable image" in out
    assert "the point cloud is empty" in out
    assert "zero XY extent" in out
    assert "differs from image size" in out
    assert "Traceback" not in out


def test_unmapped_codes_are_reported_not_errors(tiny_dataset, capsys):
    main(["inspect", str(tiny_dataset), "--split", "train"])
    assert "outside the class map are ignored in training" in capsys.readouterr().out


def test_missing_root_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err


def test_a_tile_of_another_size_is_noted(broken, capsys):
    """A 300 m tile among 100 m ones is seen at a third of their scale: a note, not a problem."""
    las_path = next((broken / "test" / "pair_0001").glob("*.las"))
    las = laspy.read(las_path)
    las.x = np.asarray(las.x) * 3 - 2 * float(las.x.min())
    las.y = np.asarray(las.y) * 3 - 2 * float(las.y.min())
    las.write(las_path)
    assert main(["inspect", str(broken)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "the grid spans each tile" in line]
    assert len(notes) == 1 and "note pair_0001" in notes[0]
    assert "3x the median 100.0 m of train/" in notes[0] and "at 0.33x" in notes[0]
    main(["inspect", str(broken), "--split", "test"])  # without train/: the split's own median
    out = capsys.readouterr().out  # of a 100 m and a 300 m tile: 200 m, both are noted
    assert out.count("x the median 200.0 m of test/") == 2


def test_a_tile_of_another_density_is_noted(broken, capsys):
    """A tile thinned to a tenth of its points: its voxel features differ; a note."""
    las_path = next((broken / "test" / "pair_0001").glob("*.las"))
    las = laspy.read(las_path)
    keep = np.zeros(len(las.points), bool)
    keep[::10] = True
    keep[
        [int(np.argmin(las.X)), int(np.argmax(las.X)), int(np.argmin(las.Y)), int(np.argmax(las.Y))]
    ] = True
    las.points = las.points[keep]  # the same bounding box
    las.write(las_path)
    assert main(["inspect", str(broken)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "points per square unit" in line]
    assert len(notes) == 1 and "note pair_0001" in notes[0]
    assert "x sparser than train/" in notes[0]
    ratio = float(notes[0].split("x sparser")[0].rsplit(" ", 1)[-1])
    assert 5 < ratio < 20  # a tenth of the points of a tile like the others


def test_density_note_names_the_ratio():
    from uxbseg.data.pairs import density_note

    assert density_note(5.0, 6.0, "train/") is None
    assert density_note(1.5, 6.0, "train/") is None  # exactly 4x: still within
    sparse = density_note(0.06, 6.0, "the training tiles")
    assert "100x sparser than the training tiles (6)" in sparse
    assert "8x denser" in density_note(48.0, 6.0, "train/")
    assert density_note(0.0, 6.0, "x") is None and density_note(1.0, 0.0, "x") is None


def test_a_16_bit_image_is_noted_with_how_it_is_read(broken, capsys):
    """Pillow would turn a 16-bit TPI image white; inspect says how uxbseg reads it instead."""
    image = next((broken / "test" / "pair_0000").glob("tpi_100m_*.png"))
    grey = np.asarray(Image.open(image).convert("L")).astype(np.uint16)
    Image.fromarray(grey * 257).save(image)
    assert main(["inspect", str(broken), "--split", "test"]) == 0
    out = capsys.readouterr().out
    (note,) = [line for line in out.splitlines() if "greyscale image" in line]
    assert note.startswith("  note pair_0000: image: 16-bit greyscale image, values")
    assert "read as 8 bits (value / 256)" in note


def test_an_image_of_another_shape_than_its_points_is_noted(broken, capsys):
    """The points fill the western 60 % of the tile (a survey's edge tile) while the square
    image covers all of it: laid over the points' box, the image is misplaced on them."""
    las_path = next((broken / "test" / "pair_0001").glob("*.las"))
    las = laspy.read(las_path)
    x = np.asarray(las.x)
    las.points = las.points[x <= x.min() + 0.6 * (x.max() - x.min())]
    las.write(las_path)
    assert main(["inspect", str(broken), "--split", "test"]) == 0
    out = capsys.readouterr().out
    (note,) = [line for line in out.splitlines() if "the image is" in line]
    assert note.startswith(
        "  note pair_0001: the image is 512 x 512 pixels (1.00:1) but the points"
    )
    assert "(0.60:1)" in note and "crop the image to the points' box" in note


def test_aspect_note_tolerates_points_short_of_the_edges():
    from uxbseg.data.pairs import aspect_note

    assert aspect_note((512, 512), (99.2, 100.0)) is None  # within 5 %
    assert aspect_note((512, 256), (200.0, 100.0)) is None  # the same shape
    assert "(1.00:1)" in aspect_note((512, 512), (100.0, 80.0))
    assert aspect_note(None, (1.0, 1.0)) is None and aspect_note((5, 5), (0.0, 1.0)) is None


def test_a_stray_point_far_from_the_tile_is_a_problem(broken, capsys):
    """One point 2 km east of a 100 m tile would squeeze the tile into 5 % of the grid."""
    las_path = next((broken / "train" / "pair_0002").glob("*.las"))
    las = laspy.read(las_path)
    n = len(las.points)
    x = np.asarray(las.x).copy()
    x[n // 2] = x.max() + 2000.0
    las.x = x
    las.write(las_path)
    assert main(["inspect", str(broken), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert str(las_path) in out and f"1 of {n} points lie far outside the others: X spans" in out
    assert "the tile's content fills 5% of it along X" in out and "filters.crop" in out


def test_stray_points_leaves_tiles_of_two_parts_alone():
    from uxbseg.data.pairs import stray_points

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10_000, 20_000)
    west = rng.integers(0, 3_000, 19_000)  # a lake between two shores: both parts are real
    east = rng.integers(9_000, 10_000, 1_000)
    x = np.concatenate([west, east])
    assert stray_points(x, y, (0.01, 0.01), (0.0, 0.0)) is None
    islet = np.concatenate([rng.integers(0, 2_000, 19_990), rng.integers(7_000, 7_010, 10)])
    assert stray_points(islet, y, (0.01, 0.01), (0.0, 0.0)) is None  # 3.5x the bulk's span
    x[:5] = 1_000_000  # five points 10 km away
    said = stray_points(x, y, (0.01, 0.01), (500.0, 0.0))
    assert said.startswith("5 of 20000 points lie far outside the others: X spans 500.00..10500.00")
    assert stray_points(x[:999], y[:999], (0.01, 0.01), (0.0, 0.0)) is None  # too few to judge


def test_the_table_widens_for_long_pair_ids_and_class_lists(tmp_path):
    """A tile's id (pair_0000_r08_c05_from_train) or its many LAS codes shift the columns
    instead of running into the next one."""
    from uxbseg.data.pairs import Pair, PairReport
    from uxbseg.inspect_report import format_reports

    codes = {1: 9, 2: 2570, 3: 30, 4: 43, 5: 1038, 6: 230, 17: 120, 64: 47, 66: 12, 67: 142}
    long = PairReport(
        Pair("pair_0000_r08_c05_from_train", tmp_path, None, None, None, []),
        points=4520, point_format=6, extent=(100.0, 99.9), las_classes=codes,
        mask_values={0: 10214, 76: 190}, image_size=(102, 102),
    )  # fmt: skip
    short = PairReport(Pair("pair_0001", tmp_path, None, None, None, []), points=7)
    lines = format_reports({"train": [long, short]}).splitlines()
    head, rows = lines[3], lines[5:7]
    assert rows[0].startswith("pair_0000_r08_c05_from_train  ")  # whole, then the gap
    assert rows[0].index("4520") + 4 == head.index("points") + len("points")  # right-aligned
    assert "67:142  0:10214 76:190 " in rows[0] and rows[0].endswith("  ok")  # 2 spaces apart
    for name in ("points", "LAS classes (code:points)", "mask values (value:px)", "status"):
        col = head.index(name)
        assert rows[0][col - 2 : col] == "  " or name == "points"
    assert rows[1].startswith("pair_0001 ") and rows[1].endswith("ok")
    assert head.index("status") == rows[1].index("ok")
