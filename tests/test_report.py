"""evaluate --report: a picture of each tile (north up) and report.html, worst tile first."""

import re

import numpy as np
import pytest
from PIL import Image

from uxbseg.classes import CLASSES, IGNORE
from uxbseg.cli import main
from uxbseg.report import ERROR_COLOURS, class_raster


def test_class_raster_is_north_up_and_takes_the_majority():
    # a 4 x 4 raster over 100 m: points at each cell's centre, structure in the north-west
    centres = np.arange(4) * 25 + 12.5
    xx, yy = np.meshgrid(centres, centres)
    x, y = xx.ravel(), yy.ravel()
    cls = np.where((x < 50) & (y > 50), 2, 0)
    # the south-east cell: three ground points against one plazuela; an ignored point (class
    # IGNORE) on the north-east cell does not count
    x = np.concatenate([x, [87.5, 87.5, 87.5, 87.5]])
    y = np.concatenate([y, [12.5, 12.5, 12.5, 87.5]])
    cls = np.concatenate([cls, [0, 0, 1, IGNORE]])
    r = class_raster(x, y, cls, (0.0, 0.0, 100.0, 100.0), (4, 4))
    want = np.zeros((4, 4), int)
    want[:2, :2] = 2  # row 0 is the north, column 0 the west
    np.testing.assert_array_equal(r, want)


def test_class_raster_fills_small_gaps_only():
    x = np.array([0.5, 99.5])
    y = np.array([99.5, 99.5])
    r = class_raster(x, y, np.array([1, 2]), (0.0, 0.0, 100.0, 100.0), (100, 100))
    assert r[0, 0] == 1 and r[0, 99] == 2
    assert r[2, 2] == 1 and r[0, 97] == 2  # within the fill distance
    assert r[50, 50] == -1  # far from any point: no data


def test_evaluate_report_pictures_every_tile_worst_first(
    trained_run, tiny_dataset, tmp_path, capsys
):
    weights = str(trained_run[0].best_weights)
    out = tmp_path / "report"
    assert (
        main(["evaluate", "--weights", weights, "--data", str(tiny_dataset), "--report", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert f"pictures of every tile, worst first: {out / 'report.html'}" in text
    pairs = sorted(p.name for p in (tiny_dataset / "test").glob("pair_*"))
    assert sorted(p.stem for p in out.glob("*.png")) == pairs
    page = (out / "report.html").read_text()
    assert "points" in page and "IoU" in page  # the metrics table
    listed = re.findall(r"<h3>(pair_\d+): point IoU ([^<]*)</h3>", page)
    assert [p for p, _ in listed] != [] and sorted(p for p, _ in listed) == pairs
    # under each heading the tile's objects, which add up to the split's
    said = re.findall(r"<p>objects: .*?structure found (\d+) of (\d+)", page)
    assert len(said) == len(pairs)
    found, true = (sum(int(s[k]) for s in said) for k in (0, 1))
    assert f"structure found {found} of {true}" in text and true > 0

    def score(ious: str) -> float:
        vals = [float(v) for v in re.findall(r"\w+ ([0-9.]+)", ious)]
        return float(np.mean(vals)) if vals else 1.0

    scores = [score(s) for _, s in listed]
    assert scores == sorted(scores)  # worst first (2-decimal rounding keeps the order)
    for pair in pairs:
        im = np.asarray(Image.open(out / f"{pair}.png").convert("RGB"))
        assert im.shape[1] > 3 * im.shape[0]  # four panels side by side
        # the prediction panel (third of four) holds class colours and no-data white only
        w = (im.shape[1] - 8) // 4
        panel = im[40:-8, 8 + 2 * w : 8 + 3 * w - 8].reshape(-1, 3)
        allowed = {c.colour for c in CLASSES} | {(255, 255, 255)}
        colours = {tuple(int(v) for v in c) for c in np.unique(panel, axis=0)}
        assert colours <= allowed, colours - allowed
        assert len(colours & {c.colour for c in CLASSES}) >= 1


def test_report_into_a_file_is_refused(trained_run, tiny_dataset, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    weights = str(trained_run[0].best_weights)
    args = ["evaluate", "--weights", weights, "--data", str(tiny_dataset), "--report", str(target)]
    assert main(args) == 1
    assert "a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


@pytest.mark.parametrize("name", list(ERROR_COLOURS))
def test_error_colours_differ_from_the_classes(name):
    assert ERROR_COLOURS[name] not in {c.colour for c in CLASSES}
