"""predict --report: a picture of each classified file, its finds outlined, and report.html."""

import re
import shutil

import numpy as np
from PIL import Image

from uxbseg.classes import CLASSES
from uxbseg.cli import main
from uxbseg.finds import Find, find_objects
from uxbseg.io.raster import colourise_tpi
from uxbseg.predict_report import PredictReport

from .test_finds import _scene


def _colour(name: str) -> tuple[int, int, int]:
    return next(tuple(c.colour) for c in CLASSES if c.name == name)


def test_report_pictures_files_and_lists_the_most_finds_first(tmp_path):
    x, y, cls = _scene()  # 60 x 40 m: a structure, a plazuela, a speck
    z = 0.02 * x + np.where(cls > 0, 1.5, 0.0)
    finds = find_objects(x, y, cls)
    image = tmp_path / "tpi.png"
    Image.fromarray(colourise_tpi(np.tile(np.linspace(-4, 4, 60), (40, 1)), size=None)).save(image)
    report = PredictReport(tmp_path / "rep", panel=300)
    box = (x.min(), y.min(), x.max(), y.max())
    a = report.add("a.las", box, x, y, z, cls, finds)  # TPI rendered from the points
    b = report.add("b.las", box, x, y, z, np.zeros_like(cls), [], image)  # the given image
    page = report.close("2 files").read_text()
    pic = np.asarray(Image.open(a).convert("RGB"))
    assert Image.open(b).size == Image.open(a).size
    assert pic.shape[1] > 3 * 300  # three panels of 300 x 200 side by side
    third = pic[:, 2 * pic.shape[1] // 3 :]
    for kind in ("plazuela", "structure"):  # each find outlined in its class's colour
        assert (third == _colour(kind)).all(axis=2).sum() > 50, kind
    middle = pic[:, pic.shape[1] // 3 : 2 * pic.shape[1] // 3]
    plazuela = (middle == _colour("plazuela")).all(axis=2).sum()
    assert 0.5 * 20 * 20 / (60 * 40) < plazuela / (300 * 200) < 2 * 20 * 20 / (60 * 40)
    assert re.findall(r'<img src="([^"]+)"', page) == ["a.las.png", "b.las.png"]
    assert "a.las: 1 plazuela, 1 structure found" in page and "2 files" in page
    assert not list((tmp_path / "rep").glob(".*partial"))


def test_predict_report_option(trained_run, tiny_dataset, tmp_path, capsys):
    weights = trained_run[0].best_weights
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset / "predict", root / "predict")
    args = ["predict", "--weights", str(weights), "--data", str(root), "--no-grids"]
    assert main([*args, "--report", str(tmp_path / "rep")]) == 0
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "overview.png",  # two files in one CRS: a map of both
        "pred_0000.las.png",
        "pred_0001.las.png",
        "report.html",
    ]
    assert f"pictures: {tmp_path / 'rep' / 'report.html'}" in capsys.readouterr().out
    rows = (root / "predict_out" / "finds.csv").read_text().splitlines()[1:]
    kinds = [r.split(",")[0] for r in rows]
    page = (tmp_path / "rep" / "report.html").read_text()
    said = f"2 of 2 files classified into {root / 'predict_out'}; finds: "
    assert (
        said + f"{kinds.count('plazuela')} plazuela, {kinds.count('structure')} structure" in page
    )
    assert "report" not in {p.name for p in (root / "predict_out").iterdir()}


def test_overview_maps_every_file_and_outlines_their_finds(tmp_path):
    x, y, cls = _scene()  # 60 x 40 m; a second file beside it, 60 m east
    z = np.zeros_like(x)
    finds = find_objects(x, y, cls)
    east = [
        Find(f.kind, f.x + 60, f.y, f.area, f.points, f.xmin + 60, f.ymin, f.xmax + 60,
                f.ymax, tuple(tuple(tuple((a + 60, b) for a, b in r) for r in p)
                              for p in f.outline))
        for f in finds
    ]  # fmt: skip
    box = (float(x.min()), float(y.min()), float(x.max()) + 60, float(y.max()))
    report = PredictReport(tmp_path / "rep", panel=100, overview=box, overview_points=2 * len(x))
    west_box, east_box = (
        (x.min(), y.min(), x.max(), y.max()),
        (x.min() + 60, y.min(), x.max() + 60, y.max()),
    )
    report.add("west.las", west_box, x, y, z, cls, finds)
    report.add("east.las", east_box, x + 60, y, z, cls, east)
    page = report.close("2 files").read_text()
    over = np.asarray(Image.open(tmp_path / "rep" / "overview.png").convert("RGB"))
    # 12 points a m2: pixels of 0.58 m (4 points each), 208 x 69, enlarged 3x to 600 at least
    assert over.shape[:2] == (69 * 3, 208 * 3)
    half = over.shape[1] // 2
    for side in (over[:, :half], over[:, half:]):  # each file's plazuela, outlined in black
        assert (side == _colour("plazuela")).all(axis=2).sum() > 0.05 * side.shape[0] * half
        assert (side == (0, 0, 0)).all(axis=2).sum() > 200
    assert page.index("overview.png") < page.index("west.las.png")
    report.close("files in two CRSs", overview=False)  # no common map: no picture is made
    report2 = PredictReport(tmp_path / "rep2", panel=100, overview=box, overview_points=len(x))
    report2.add("west.las", west_box, x, y, z, cls, finds)
    assert "overview.png" not in report2.close("two CRSs", overview=False).read_text()
    assert not (tmp_path / "rep2" / "overview.png").exists()
