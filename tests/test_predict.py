"""Prediction: nothing lost, no leakage, bad inputs reported, LAZ in -> LAZ out."""

import shutil

import laspy
import numpy as np
import pytest
import torch

from uxbseg.cli import main
from uxbseg.errors import BadDataError
from uxbseg.finds import count_finds
from uxbseg.io.las import read_raw_vlrs
from uxbseg.io.weights import load_model
from uxbseg.predict import PredictJob, predict_files

from .conftest import REAL_LAS, real_las_files

# sub-fields that share a byte with classification in formats 0-5 must survive too
LEGACY_FLAGS = ("synthetic", "key_point", "withheld")


def _assert_nothing_lost(src, dst, keep_classification=False, new_dims=()):
    a, b = laspy.read(src), laspy.read(dst)
    ha, hb = a.header, b.header
    assert (hb.version.major, hb.version.minor) == (ha.version.major, ha.version.minor)
    assert hb.point_format.id == ha.point_format.id
    np.testing.assert_array_equal(hb.scales, ha.scales)
    np.testing.assert_array_equal(hb.offsets, ha.offsets)
    assert hb.point_count == ha.point_count == len(b.points)
    assert hb.global_encoding.value == ha.global_encoding.value
    assert (hb.system_identifier, hb.file_source_id) == (ha.system_identifier, ha.file_source_id)
    # VLRs byte for byte as stored (laszip's own record describes the compression, not the data)
    raw_a = [v for v in read_raw_vlrs(src) if v[0] not in ("copc", "laszip encoded")]
    raw_b = [v for v in read_raw_vlrs(dst) if v[0] != "laszip encoded"]
    eb_a = [d for u, r, d in raw_a if (u, r) == ("LASF_Spec", 4)]
    grows = bool(keep_classification or new_dims)
    has_eb = bool(eb_a)
    assert len(raw_b) == len(raw_a) + (1 if grows and not has_eb else 0)
    seen = {}
    for user, rid, data in raw_a:
        i = seen[(user, rid)] = seen.get((user, rid), -1) + 1
        match = [d for u, r, d in raw_b if (u, r) == (user, rid)]
        assert len(match) > i, (user, rid)
        got = match[i]
        if (user, rid) == ("LASF_Spec", 4) and grows and i == 0:  # grows by the new dims
            assert got[:20] == data[:20] and got[22:54] == data[22:54]
            assert got[54:].startswith(data[54:])
        else:
            assert got == data, (user, rid)
    for v in ha.vlrs:
        if v.user_id == "copc":  # COPC in -> plain LAZ out: the octree index is not copied
            assert not any(w.user_id == "copc" for w in hb.vlrs)
    evlrs_a = [e for e in a.evlrs or [] if e.user_id != "copc"]
    assert len(b.evlrs or []) == len(evlrs_a)
    for ea, eb in zip(evlrs_a, b.evlrs or []):
        assert (ea.user_id, ea.record_id) == (eb.user_id, eb.record_id)
        assert bytes(ea.record_data_bytes()) == bytes(eb.record_data_bytes())
    names = [n for n in a.point_format.dimension_names if n != "classification"]
    for name in names:
        np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(a[name]), err_msg=name)
    np.testing.assert_array_equal(b.X, a.X)
    if keep_classification:
        np.testing.assert_array_equal(np.asarray(b.classification), np.asarray(a.classification))
    return a, b


@pytest.fixture(scope="module")
def weights(trained_run):
    return trained_run[0].best_weights


@pytest.mark.real
@pytest.mark.slow
def test_every_real_file_nothing_lost(weights, tmp_path):
    files = real_las_files()
    model, cfg = load_model(weights)
    # the whole name as id: simple.las and simple.copc.laz share a stem (check_jobs refuses that)
    jobs = [PredictJob(p, None, p.name.replace(".", "_")) for p in files]
    # each file whole: the files span 0 m to 4.6 km, thousands of the 100 m training tiles
    # (cut into windows in test_windows.py and in the next test)
    results = predict_files(model, cfg, jobs, tmp_path, progress=False, window="off")
    assert [r.error for r in results] == [None] * len(files)
    for r in results:
        src = r.job.las
        assert r.las.suffix == (".laz" if src.name.endswith(".laz") else ".las")
        a, b = _assert_nothing_lost(src, r.las)
        assert set(np.unique(b.classification)) <= {2, 27, 6}
        grid = np.load(r.npy)
        assert grid.dtype == np.uint8 and grid.shape == tuple(cfg.grid.shape)
        for flag in LEGACY_FLAGS if a.header.point_format.id < 6 else ():
            np.testing.assert_array_equal(np.asarray(b[flag]), np.asarray(a[flag]))


@pytest.mark.real
def test_a_one_point_file_is_classified_and_said_so(weights, tmp_path, capsys):
    (one,) = [p for p in real_las_files() if p.name == "single-point-cloud.laz"]
    args = ["predict", "--weights", str(weights), "--input", str(one), "--out", str(tmp_path)]
    assert main(args) == 0
    assert "pred_single-point-cloud.laz (1 point: ground 1, plazuela 0, structure 0)" in (
        capsys.readouterr().out
    )
    _, b = _assert_nothing_lost(one, tmp_path / "pred_single-point-cloud.laz")
    assert len(b.points) == 1


@pytest.mark.real
def test_probabilities_and_keep_classification(weights, tmp_path):
    real_las_files()
    src = next(p for p in REAL_LAS if p.name == "extrabytes.las")
    model, cfg = load_model(weights)
    r = predict_files(
        model,
        cfg,
        [PredictJob(src, None, "x")],
        tmp_path,
        progress=False,
        probabilities=True,
        keep_classification=True,
        window=1500.0,  # the file spans 3.4 x 4.6 km: 3 x 4 windows
    )[0]
    assert r.error is None and r.windows == 12
    new = ("uxb_class", "prob_ground", "prob_plazuela", "prob_structure", "entropy")
    _a, b = _assert_nothing_lost(src, r.las, keep_classification=True, new_dims=new)
    p = np.stack([b.prob_ground, b.prob_plazuela, b.prob_structure])
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    # the class is the argmax after the weights' logit adjustment (tiny.yaml: 1.0)
    adjusted = p / np.array(cfg.loss.class_weights)[:, None] ** cfg.model.logit_adjustment
    np.testing.assert_array_equal(np.array([2, 27, 6])[adjusted.argmax(0)], b.uxb_class)
    assert (np.asarray(b.entropy) >= 0).all()


def test_leakage_classification_does_not_change_prediction(weights, tiny_dataset, tmp_path):
    src = next((tiny_dataset / "predict" / "pair_0001").glob("*.las"))
    image = next((tiny_dataset / "predict" / "pair_0001").glob("tpi*.png"))
    wiped = tmp_path / "wiped.las"
    las = laspy.read(src)
    las.classification = np.ones(len(las.points), np.uint8)
    las.write(wiped)
    model, cfg = load_model(weights)
    r1, r2 = predict_files(
        model,
        cfg,
        [PredictJob(src, image, "a"), PredictJob(wiped, image, "b")],
        tmp_path / "out",
        progress=False,
    )
    np.testing.assert_array_equal(np.load(r1.npy), np.load(r2.npy))
    np.testing.assert_array_equal(
        laspy.read(r1.las).classification, laspy.read(r2.las).classification
    )


def test_predict_split_by_pair_id_without_masks(weights, tiny_dataset, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset / "predict", root / "predict")
    for m in root.glob("predict/*/uxb_msk*.png"):
        m.unlink()  # predict pairs need no mask
    assert main(["predict", "--weights", str(weights), "--data", str(root)]) == 0
    out = root / "predict_out"
    assert sorted(p.name for p in out.iterdir()) == [
        ".uxbseg-predict.jsonl",  # the run's record (--resume)
        "finds.csv",
        "finds.geojson",
        "pred_0000.finds.csv",
        "pred_0000.las",
        "pred_0000.npy",
        "pred_0001.finds.csv",
        "pred_0001.las",
        "pred_0001.npy",
    ]
    printed = capsys.readouterr().out
    assert "2 of 2 files written" in printed
    run = count_finds(out / "finds.csv")
    kinds = ", ".join(f"{v} {k}" for k, v in run.items())
    assert f"finds of the run: {kinds} (" in printed and str(out / "finds.geojson") in printed


def test_bad_inputs_are_reported_and_others_written(weights, tiny_dataset, tmp_path, capsys):
    good = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    corrupt = tmp_path / "corrupt.las"
    corrupt.write_bytes(b"LASF" + b"\0" * 400)
    las = laspy.read(good)
    las.write(tmp_path / "full.laz")
    truncated = tmp_path / "truncated.laz"
    truncated.write_bytes((tmp_path / "full.laz").read_bytes()[:20000])
    empty = tmp_path / "empty.las"
    e = laspy.LasData(las.header)
    e.points = las.points[:0]
    e.write(empty)
    out = tmp_path / "out"
    args = [
        "predict",
        "--weights",
        str(weights),
        "--out",
        str(out),
        "--input",
        str(good),
        str(corrupt),
        str(truncated),
        str(empty),
    ]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert f"FAILED {corrupt}" in text and f"FAILED {truncated}" in text
    assert f"FAILED {empty}" in text and "empty" in text
    assert sorted(p.name for p in out.iterdir()) == [
        ".uxbseg-predict.jsonl",  # the run's record (--resume)
        "finds.csv",
        "finds.geojson",
        f"pred_{good.stem}.finds.csv",
        f"pred_{good.stem}.las",
        f"pred_{good.stem}.npy",
    ]
    # a missing image is named, before any work
    assert (
        main(
            [
                "predict",
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "o2"),
                "--input",
                str(good),
                "--image",
                str(tmp_path / "nope.png"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err  # refused before the model is built
    assert f"error: {tmp_path / 'nope.png'}: no such file or folder; check the path" in err
    assert not (tmp_path / "o2").exists()


def test_code_that_does_not_fit_the_point_format(weights, tiny_dataset, tmp_path, capsys):
    src = next((tiny_dataset / "predict" / "pair_0001").glob("*.las"))  # format 1: 0-31
    out = tmp_path / "out"  # 64 for ground, which every tile has
    args = [
        "predict",
        "--weights",
        str(weights),
        "--out",
        str(out),
        "--input",
        str(src),
        "--codes",
        "64,27,6",
    ]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "cannot be stored in point format 1" in text
    assert not out.exists() or not list(out.iterdir())  # nothing partial
    assert main([*args, "--keep-classification"]) == 0  # a new dimension holds any code


def test_evaluate_reports_three_levels_and_baseline(weights, tiny_dataset, capsys):
    import json

    assert main(["evaluate", "--weights", str(weights), "--data", str(tiny_dataset), "--json"]) == 0

    def no_nan(constant):  # strict JSON: NaN and Infinity are not JSON
        raise AssertionError(f"{constant} in the JSON")

    res = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert None in res["points"]["baseline"].values()  # an undefined metric is null
    for lvl in ("voxels", "pixels", "points"):
        m, base = res[lvl]["metrics"], res[lvl]["baseline"]
        assert 0.0 <= m["acc"] <= 1.0
        assert base["recall_ground"] == 1.0 and base["recall_structure"] == 0.0
        assert np.array(res[lvl]["confusion"]).shape == (3, 3)
        lo, hi = res[lvl]["iou_interval"]["ground"]
        assert lo <= m["iou_ground"] <= hi
    # each tile's points, in the split's order, adding up to the split's
    tiles = res["per_tile"]
    names = sorted(p.name for p in (tiny_dataset / "test").iterdir())
    assert [t["pair_id"] for t in tiles] == names
    assert np.sum([t["confusion"] for t in tiles], axis=0).tolist() == res["points"]["confusion"]
    for t in tiles:
        cm = np.array(t["confusion"])
        assert t["points"] == cm.sum() > 0
        ground = cm[0, 0] / (cm[0].sum() + cm[:, 0].sum() - cm[0, 0])
        assert t["iou"]["ground"] == pytest.approx(ground)
    # objects: the test tiles' true plazuelas and structures, counted from their points
    from uxbseg.classes import las_code_to_class
    from uxbseg.finds import object_counts

    truth = {"plazuela": 0, "structure": 0}
    for las_path in sorted((tiny_dataset / "test").glob("pair_*/*.las")):
        las = laspy.read(las_path)
        cls = las_code_to_class(np.asarray(las.classification))
        for name, c in object_counts(las.x, las.y, cls, cls).items():
            assert c["found"] == c["true"] == c["predicted"] == c["real"]  # truth finds itself
            truth[name] += c["true"]
    assert sum(truth.values()) > 0
    for name, o in res["objects"].items():
        assert o["true"] == truth[name] and 0 <= o["found"] <= o["true"]
        assert 0 <= o["real"] <= o["predicted"]
        if 0 < o["real"] < o["predicted"]:  # real and false finds: their scores ranked
            assert 0.0 <= o["score_auc"] <= 1.0
        else:
            assert o["score_auc"] is None
    assert main(["evaluate", "--weights", str(weights), "--data", str(tiny_dataset)]) == 0
    text = capsys.readouterr().out
    assert "points (all-ground)" in text
    assert "pixels = the 2D image head alone" in text  # says which row reaches the LAS
    assert f"95 % interval over the {res['tiles']} tiles" in text
    assert f"structure found {res['objects']['structure']['found']} of {truth['structure']}" in text


def test_finds_list_the_objects_of_the_written_classes(weights, tiny_dataset, tmp_path, capsys):
    """pred_<id>.finds.csv holds the plazuelas and structures of the classes in the written
    LAS (a negative logit adjustment makes the barely trained model predict some)."""
    import csv

    from uxbseg.classes import las_code_to_class
    from uxbseg.finds import find_objects

    src = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    args = ["predict", "--weights", str(weights), "--input", str(src), "--out", str(tmp_path)]
    assert main([*args, "--logit-adjustment", "-3"]) == 0
    out = laspy.read(tmp_path / f"pred_{src.stem}.las")
    want = find_objects(out.x, out.y, las_code_to_class(np.asarray(out.classification)))
    assert len(want) > 0
    with open(tmp_path / f"pred_{src.stem}.finds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], float(r["x"]), float(r["area"])) for r in rows] == [
        (w.kind, pytest.approx(w.x, abs=0.01), pytest.approx(w.area, abs=0.01)) for w in want
    ]
    n = {k: sum(w.kind == k for w in want) for k in ("plazuela", "structure")}
    assert f"finds: {n['plazuela']} plazuela, {n['structure']} structure" in capsys.readouterr().out
    with open(tmp_path / "finds.csv") as f:  # the run's finds in one list: one file here
        rows = list(csv.DictReader(f))
    assert len(rows) == len(want) and {r["files"] for r in rows} == {f"pred_{src.stem}.las"}


def test_logit_adjustment_only_moves_voxels_to_ground(weights, tiny_dataset, capsys):
    """Dividing by the class weights (ground's the smallest) can turn a plazuela or structure
    voxel into ground, never ground into anything else; 0 is the plain argmax."""
    import json

    def confusion(tau: str) -> np.ndarray:
        args = ["evaluate", "--weights", str(weights), "--data", str(tiny_dataset), "--json"]
        assert main([*args, "--logit-adjustment", tau]) == 0
        return np.array(json.loads(capsys.readouterr().out)["voxels"]["confusion"])

    plain, adjusted = confusion("0"), confusion("1")
    assert (plain.sum(1) == adjusted.sum(1)).all()  # same truth
    assert (adjusted[:, 0] >= plain[:, 0]).all()  # per true class, at least as many ground
    assert adjusted[:, 0].sum() > plain[:, 0].sum()  # and some moved (weights 0.05 vs 0.45/0.5)


@pytest.mark.real
def test_uncompressed_write_keeps_every_byte_but_classification(tmp_path):
    """LAS in -> LAS out changes the classification bytes and nothing else (header, VLRs,
    padding, records, EVLRs as stored), for every uncompressed real file."""
    from uxbseg.io.las import read_las, write_classified

    files = [p for p in real_las_files() if p.suffix.lower() == ".las"]
    assert files
    for src in files:
        las = read_las(src)
        n, fmt = len(las.points), las.header.point_format
        codes = np.random.default_rng(0).choice(np.array([2, 27, 6], np.uint8), n)
        dst = write_classified(las, codes, tmp_path / src.name, compress=False, src=src)
        a, b = src.read_bytes(), dst.read_bytes()
        assert len(a) == len(b), src.name
        start, size = las.header.offset_to_point_data, fmt.size
        end = start + n * size
        assert a[:start] == b[:start] and a[end:] == b[end:], src.name
        ra = np.frombuffer(a[start:end], np.uint8).reshape(n, size)
        rb = np.frombuffer(b[start:end], np.uint8).reshape(n, size)
        col = 16 if fmt.id >= 6 else 15  # the classification byte
        others = np.ones(size, bool)
        others[col] = False
        np.testing.assert_array_equal(ra[:, others], rb[:, others], err_msg=src.name)
        back = laspy.read(dst)
        np.testing.assert_array_equal(np.asarray(back.classification), codes)
        if fmt.id < 6:  # flags sharing the byte survive
            for flag in LEGACY_FLAGS:
                np.testing.assert_array_equal(back[flag], laspy.read(src)[flag])


def test_tta_is_mirror_equivariant(weights):
    """Averaged over the four mirror images, the prediction of a mirrored tile is the mirrored
    prediction (each flip mapped back correctly), and it differs from the plain one."""
    import torch

    from uxbseg.inference import infer_tile, infer_tiles

    model, cfg = load_model(weights)
    model.eval()
    rng = np.random.default_rng(0)
    s, (d, h, w) = cfg.data.image_size, cfg.grid.shape
    image = rng.standard_normal((3, s, s)).astype(np.float32)
    vox = rng.random((len(cfg.grid.features), d, h, w)).astype(np.float32)
    cpu = torch.device("cpu")
    p, _ = infer_tile(model, image, vox, cpu, tta=True)
    for axes in ((-1,), (-2,)):
        q, _ = infer_tile(
            model,
            np.ascontiguousarray(np.flip(image, axes)),
            np.ascontiguousarray(np.flip(vox, axes)),
            cpu,
            tta=True,
        )
        torch.testing.assert_close(q, p.flip(axes), atol=1e-5, rtol=1e-4)
    plain, _ = infer_tile(model, image, vox, cpu)
    assert plain.shape == p.shape == (3, d, h, w)
    torch.testing.assert_close(p.sum(0), torch.ones(d, h, w), atol=1e-5, rtol=0)
    assert (plain - p).abs().max() > 1e-4
    # left on the device (predict decides the classes there), the same averaged probabilities
    kept, kept2d = infer_tiles(model, image[None], vox[None], cpu, tta=True, on_device=True)
    torch.testing.assert_close(kept[0], p, atol=0, rtol=0)
    assert kept2d is not None and kept2d.shape == (1, 3, h, w)  # the 2D head at grid size


def test_an_input_folder_stands_for_its_las_files(weights, tiny_dataset, tmp_path, capsys):
    folder = tmp_path / "survey"
    folder.mkdir()
    for pair in ("pair_0000", "pair_0001"):
        src = next((tiny_dataset / "predict" / pair).glob("*.las"))
        shutil.copy(src, folder / src.name.replace(".las", ".LAS"))  # upper case too
    (folder / "notes.txt").write_text("not a point cloud")
    (folder / "sub").mkdir()  # sub-folders are not searched
    shutil.copy(src, folder / "sub" / "elsewhere.las")
    out = tmp_path / "out"
    assert (
        main(["predict", "--weights", str(weights), "--input", str(folder), "--out", str(out)]) == 0
    )
    stems = sorted(p.stem for p in folder.glob("*.LAS"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            ".uxbseg-predict.jsonl",
            "finds.csv",
            "finds.geojson",
            *(f"pred_{s}.{ext}" for s in stems for ext in ("finds.csv", "las", "npy")),
        ]
    )
    printed = capsys.readouterr().out
    assert "2 of 2 files written" in printed
    run = count_finds(out / "finds.csv")
    kinds = ", ".join(f"{v} {k}" for k, v in run.items())
    assert f"finds of the run: {kinds} (" in printed and str(out / "finds.geojson") in printed


def _predict_fails(weights, args, out, capsys) -> str:
    assert main(["predict", "--weights", str(weights), "--out", str(out), *args]) == 1
    assert not out.exists()  # refused before any work
    return capsys.readouterr().err


def test_inputs_that_would_overwrite_each_other_are_refused(
    weights, tiny_dataset, tmp_path, capsys
):
    src = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "tile.las", tmp_path / "b" / "tile.laz"
    shutil.copy(src, first)
    laspy.read(src).write(second)  # same stem: both pred_tile.npy
    err = _predict_fails(weights, ["--input", str(first), str(second)], tmp_path / "o", capsys)
    assert f"{first} and {second} would both be written as pred_tile.*" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _predict_fails(weights, ["--input", str(empty)], tmp_path / "o", capsys)
    assert f"{empty}: a folder without .las/.laz files" in err
    image = next((tiny_dataset / "predict" / "pair_0000").glob("tpi*.png"))
    args = ["--input", str(tmp_path / "a"), "--image", str(image)]
    err = _predict_fails(weights, args, tmp_path / "o", capsys)
    assert f"{tmp_path / 'a'} is a folder" in err
    # --out = the inputs' folder, where one input is named as another's prediction
    survey = tmp_path / "survey"
    survey.mkdir()
    shutil.copy(src, survey / "x.las")
    shutil.copy(src, survey / "pred_x.las")
    before = (survey / "pred_x.las").read_bytes()
    args = ["predict", "--weights", str(weights), "--out", str(survey), "--input", str(survey)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        f"{survey / 'pred_x.las'}: the prediction of {survey / 'x.las'} would be written over"
        in err
    )
    assert (survey / "pred_x.las").read_bytes() == before
    assert sorted(p.name for p in survey.iterdir()) == ["pred_x.las", "x.las"]
    # the library refuses the same, before any work
    model, cfg = load_model(weights)
    jobs = [PredictJob(first, None, "tile"), PredictJob(second, None, "tile")]
    with pytest.raises(BadDataError, match="would both be written as pred_tile"):
        predict_files(model, cfg, jobs, tmp_path / "lib", progress=False)
    assert not (tmp_path / "lib").exists()


def test_evaluate_names_every_incomplete_pair_before_any_tile(
    weights, tiny_dataset, tmp_path, capsys
):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset / "test", root / "test")
    pair0, pair1 = sorted((root / "test").iterdir())
    next(pair0.glob("uxb_msk*.png")).unlink()
    next(pair1.glob("tpi*.png")).unlink()
    assert main(["evaluate", "--weights", str(weights), "--data", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"2 pair(s) of {root / 'test'} cannot be evaluated" in err
    assert (
        f"  {pair0.name}: {pair0}: no mask" in err and f"  {pair1.name}: {pair1}: no image" in err
    )


def test_inference_autotunes_cudnn_on_a_gpu_only(monkeypatch, caplog):
    from uxbseg.inference import autotune_convs, model_for_inference

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    model = torch.nn.Conv3d(1, 1, 1).train()
    with caplog.at_level("INFO", logger="uxbseg.inference"):
        out = model_for_inference(model, torch.device("cpu"))
    assert f"the model runs on the CPU (float32, {torch.get_num_threads()} threads)" in caplog.text
    assert out is model and not out.training
    assert torch.backends.cudnn.benchmark is False  # no process-wide change on the CPU
    autotune_convs(torch.device("cuda"))  # a device object: no GPU needed to set the flag
    assert torch.backends.cudnn.benchmark is True


def test_an_image_of_another_shape_than_the_points_is_warned_of(weights, tiny_dataset, tmp_path,
                                                                  caplog):  # fmt: skip
    pair = tiny_dataset / "predict" / "pair_0000"
    src = laspy.read(next(pair.glob("*.las")))
    x = np.asarray(src.x)
    src.points = src.points[x <= x.min() + 0.5 * (x.max() - x.min())]  # the western half
    src.write(tmp_path / "half.las")
    image = next(pair.glob("tpi_100m_*.png"))  # the whole tile's
    args = ["predict", "--weights", str(weights), "--input", str(tmp_path / "half.las")]
    with caplog.at_level("WARNING", logger="uxbseg.domain"):
        assert main([*args, "--image", str(image), "--out", str(tmp_path / "o")]) == 0
    (said,) = [r.getMessage() for r in caplog.records if "the image is" in r.getMessage()]
    assert said.startswith(f"{tmp_path / 'half.las'}: the image is 512 x 512 pixels (1.00:1)")
    assert "(0.50:1)" in said
    caplog.clear()
    with caplog.at_level("WARNING", logger="uxbseg.domain"):  # rendered from the points: none
        assert main([*args, "--out", str(tmp_path / "o2")]) == 0
    assert not [r for r in caplog.records if "the image is" in r.getMessage()]
