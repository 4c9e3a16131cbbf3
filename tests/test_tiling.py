"""uxbseg tile: labelled pairs larger than a tile cut into tiles, every point in exactly one."""

import filecmp
import shutil
import struct

import laspy
import numpy as np
import pytest
from PIL import Image

from uxbseg.cli import main

from .test_windows import _adjacent_pair


@pytest.fixture
def big_and_small(tiny_dataset, tmp_path):
    """A dataset with a 200 m x 100 m labelled pair (two test tiles side by side) in test/ and
    an ordinary 100 m pair in train/."""
    root = tmp_path / "src"
    _adjacent_pair(tiny_dataset, root)
    small = next((tiny_dataset / "train").glob("pair_*"))
    shutil.copytree(small, root / "train" / small.name)
    return root, small


def test_a_large_pair_is_cut_and_a_small_one_copied(big_and_small, tiny_dataset, tmp_path, capsys):
    root, small = big_and_small
    out = tmp_path / "tiles"
    assert main(["tile", str(root), str(out), "--side", "100"]) == 0
    text = capsys.readouterr().out
    assert "test/pair_0000: 200.0 x 100.0 -> 2 tiles" in text
    assert f"train/{small.name}: 100.0 x 100.0 -> copied" in text
    for f in small.iterdir():  # copied byte for byte
        assert filecmp.cmp(f, out / "train" / small.name / f.name, shallow=False)
    src = laspy.read(root / "test" / "pair_0000" / "both.las")
    tiles = sorted((out / "test").glob("pair_0000_r*_c*"))
    assert [t.name for t in tiles] == ["pair_0000_r00_c00", "pair_0000_r00_c01"]
    parts = [laspy.read(t / "both.las") for t in tiles]
    # every point in exactly one tile, with all its fields; the header's scales and format kept
    assert sum(len(p.points) for p in parts) == len(src.points)

    def key(las) -> np.ndarray:  # the points by raw X and Y, sorted: equal as multisets
        return np.sort(np.asarray(las.X, np.int64) * 10**9 + np.asarray(las.Y))

    np.testing.assert_array_equal(np.sort(np.concatenate([key(p) for p in parts])), key(src))
    for p in parts:
        assert p.header.point_format.id == src.header.point_format.id
        np.testing.assert_array_equal(p.header.scales, src.header.scales)
    west, east = parts
    assert np.asarray(west.x).max() < 100.0 <= np.asarray(east.x).min()
    # the tiles' classes are the file's: the two original tiles again (the west edge points of
    # the east tile, x = 100 exactly, go east)
    originals = [
        laspy.read(next(p.glob("*.las")))
        for p in sorted((tiny_dataset / "test").glob("pair_*"))[:2]
    ]
    assert abs(len(west.points) - len(originals[0].points)) < 0.01 * len(originals[0].points)
    # image and mask cut at their own resolution: the west tile's are the first tile's
    first = sorted((tiny_dataset / "test").glob("pair_*"))[0]
    want = np.asarray(Image.open(next(first.glob("uxb_msk*.png"))))
    got = np.asarray(Image.open(tiles[0] / "uxb_msk_pl_st_both.png"))
    assert abs(got.shape[1] - want.shape[1]) <= 2 and got.shape[0] == want.shape[0]
    n = min(got.shape[1], want.shape[1])
    assert (got[:, :n] == want[:, :n]).mean() > 0.98
    assert main(["inspect", str(out)]) == 0  # a dataset like any other


def test_tiles_are_scored_as_the_windows_predict_them(big_and_small, trained_run, tmp_path):
    """Training on the tiles teaches what predict sees: the tiles, each predicted whole, get
    (nearly) the classes of the large file cut into windows without overlap (only the points
    on a window's far edge differ in context)."""
    from uxbseg.evaluate import evaluate
    from uxbseg.io.weights import load_model

    root, _ = big_and_small
    out = tmp_path / "tiles"
    assert main(["tile", str(root), str(out), "--side", "100", "--split", "test"]) == 0
    model, cfg = load_model(trained_run[0].best_weights)
    windows = evaluate(model, cfg, root, progress=False, window=100.0, overlap=0.0)
    tiles = evaluate(model, cfg, out, progress=False)
    assert windows["windows"]["tiles"] == 1 and "windows" not in tiles and tiles["tiles"] == 2
    a, b = (np.asarray(r["points"]["confusion"]) for r in (windows, tiles))
    assert a.sum() == b.sum()
    assert np.abs(a - b).sum() < 0.02 * a.sum()


def test_tile_refuses_what_it_cannot_do(big_and_small, tmp_path, capsys):
    root, _ = big_and_small
    out = tmp_path / "tiles"
    with pytest.raises(SystemExit) as exc:
        main(["tile", str(root), str(out), "--side", "-5"])
    assert exc.value.code == 2
    assert main(["tile", str(root), str(root), "--side", "100"]) == 1
    assert "another folder than the dataset" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["tile", str(root), str(tmp_path / "file"), "--side", "100"]) == 1
    assert "a file, not a folder" in capsys.readouterr().err
    assert main(["tile", str(root), str(out), "--side", "100"]) == 0
    capsys.readouterr()
    assert main(["tile", str(root), str(out), "--side", "100"]) == 1  # never over earlier tiles
    assert "exists already" in capsys.readouterr().err
    next((root / "test" / "pair_0000").glob("uxb*.png")).unlink()
    assert main(["tile", str(root), str(tmp_path / "t2"), "--side", "100"]) == 1
    assert "cannot be tiled" in capsys.readouterr().err and not (tmp_path / "t2").exists()


@pytest.mark.real
def test_the_real_1km_tile_is_cut_with_every_record_kept(tmp_path):
    """Extra bytes, VLRs, every field of every point: the 16 tiles hold the file's records."""
    from .conftest import real_las_files

    (path,) = [p for p in real_las_files() if p.name.startswith("test_semis_2023")]
    pair = tmp_path / "src" / "predict" / "pair_0001"
    pair.mkdir(parents=True)
    shutil.copy(path, pair / path.name)
    rgb = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(pair / "tpi_100m_x.png")
    out = tmp_path / "tiles"
    assert main(["tile", str(tmp_path / "src"), str(out), "--side", "250"]) == 0
    src = laspy.read(path)
    parts = [laspy.read(p) for p in sorted(out.glob("predict/pair_0001_r*_c*/*.laz"))]
    assert len(parts) == 16
    records = np.concatenate([np.asarray(p.points.array) for p in parts])
    order = ["X", "Y", "Z", "gps_time"]
    np.testing.assert_array_equal(
        np.sort(records, order=order), np.sort(np.asarray(src.points.array), order=order)
    )
    for p in parts:
        assert list(p.point_format.extra_dimension_names) == list(
            src.point_format.extra_dimension_names
        )
        assert [v.record_id for v in p.header.vlrs] == [v.record_id for v in src.header.vlrs]
    images = [Image.open(next(f.parent.glob("tpi*.png"))) for f in out.glob("predict/*/*.laz")]
    assert all(240 <= im.size[0] <= 260 for im in images)  # 250 m of a 1000 px / 1 km image


def test_hold_out_moves_whole_blocks_of_training_tiles_to_test(tiny_dataset, tmp_path, capsys):
    """A 200 m labelled pair and a 100 m one in train/, cut into 100 m tiles; --hold-out 0.3
    with 100 m blocks moves one tile (one block of three) to test/, the same one each run."""
    root = tmp_path / "src"
    _adjacent_pair(tiny_dataset, root)
    shutil.move(root / "test", root / "train")
    small = next((tiny_dataset / "train").glob("pair_*"))
    shutil.copytree(small, root / "train" / "pair_0001")
    args = ["tile", str(root), "--side", "100", "--hold-out", "0.3", "--block", "100"]
    moved = []
    for run in ("a", "b"):
        assert main([*args[:2], str(tmp_path / run), *args[2:]]) == 0
        out = capsys.readouterr().out
        assert "held out in test/: 1 of 3 training tiles (33%; asked 30%), 1 of the 3 blocks" in out
        test = sorted(p.name for p in (tmp_path / run / "test").iterdir())
        train = sorted(p.name for p in (tmp_path / run / "train").iterdir())
        assert len(test) == 1 and test[0].endswith("_from_train") and len(train) == 2
        assert test[0].removesuffix("_from_train") not in train
        moved.append(test[0])
    assert moved[0] == moved[1]  # the seed decides
    # the tile moved whole: its files as tile wrote them, and inspect finds no leak
    folder = tmp_path / "a" / "test" / moved[0]
    assert {p.suffix for p in folder.iterdir()} == {".las", ".png"} and len(
        list(folder.iterdir())
    ) == 3
    assert main(["inspect", str(tmp_path / "a")]) == 0
    assert "covers the ground of" not in capsys.readouterr().out
    # nothing to train on would be left, or nothing to hold out: errors before or after cutting
    assert main([*args[:2], str(tmp_path / "c"), "--side", "100", "--hold-out", "0.9",
                 "--block", "1000"]) == 1  # fmt: skip
    assert "lie in 2 block(s) of 1000" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*args[:2], str(tmp_path / "d"), "--side", "100", "--hold-out", "1.5"])
    assert usage.value.code == 2
    assert "must be between 0 and 1, got 1.5" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "e"), "--side", "100", "--split", "test",
                 "--hold-out", "0.2"]) == 1  # fmt: skip
    assert "include --split train" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_hold_out_places_a_tile_whose_header_states_no_box_by_its_points(
    tiny_dataset, tmp_path, capsys
):
    """Two 100 m training pairs side by side at (5000, 5000), copied whole by tile; one LAS
    header's box left unset (zeros). Its block comes from its points: both tiles lie in one
    1000 m block, so holding out half of them would leave nothing to train on."""
    root = tmp_path / "src"
    for i, pair in enumerate(sorted((tiny_dataset / "train").glob("pair_*"))[:2]):
        dst = root / "train" / pair.name
        shutil.copytree(pair, dst)
        path = next(dst.glob("*.las"))
        las = laspy.read(path)
        las.x = np.asarray(las.x) - las.x.min() + 5000.0 + 100.0 * i
        las.y = np.asarray(las.y) - las.y.min() + 5000.0
        las.write(path)
    with open(path, "r+b") as f:  # the second pair's header: max/min x, y, z all zero
        f.seek(179)
        f.write(struct.pack("<6d", *[0.0] * 6))
    args = ["tile", str(root), str(tmp_path / "out"), "--side", "100", "--hold-out", "0.5"]
    assert main([*args, "--block", "1000"]) == 1
    err = capsys.readouterr().err
    assert "lie in 1 block(s) of 1000" in err  # not two: (0, 0) from the zeros


def test_the_hold_out_command_names_the_side_to_four_digits():
    from uxbseg.tiling import hold_out_command

    assert hold_out_command("R", 999.99) == "uxbseg tile R NEW_ROOT --side 1000 --hold-out 0.2"
    assert hold_out_command("R", 99.95).endswith("--side 99.95 --hold-out 0.2")
    assert hold_out_command("R", 12345.6).endswith("--side 12350 --hold-out 0.2")
    assert hold_out_command("R", None).endswith("--side S --hold-out 0.2")
