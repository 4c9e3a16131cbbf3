"""predict --resume: a run cut short goes on where it stopped, with the same outputs an
uninterrupted run writes."""

import json
import os
import shutil

import laspy
import numpy as np
import pytest
from PIL import Image

from uxbseg import predict as predict_module
from uxbseg import predict_windows
from uxbseg.cli import main
from uxbseg.errors import BadDataError
from uxbseg.io.weights import load_model
from uxbseg.predict import PredictJob, predict_files
from uxbseg.predict_resume import RECORD, model_fingerprint

from .test_survey import _split_pair


def _classes(path):
    return np.asarray(laspy.read(path).classification)


@pytest.mark.slow
def test_a_run_cut_short_goes_on_where_it_stopped(
    trained_run, tiny_dataset, tmp_path, monkeypatch, capsys
):
    _split_pair(tiny_dataset, tmp_path)
    model, cfg = load_model(trained_run[0].best_weights)
    jobs = [PredictJob(tmp_path / "tiles" / f"{n}.las", None, n) for n in ("west", "east")]
    kw = dict(window=100.0, progress=False, probabilities=True)
    full = predict_files(model, cfg, jobs, tmp_path / "full", **kw)
    assert [r.survey for r in full] == [2, 2] and not any(r.kept for r in full)

    # a run stopped (Ctrl-C) while the east file was being predicted
    out = tmp_path / "cut"
    one = predict_module.predict_one

    def stopped(model, cfg, job, *a, **k):
        if job.out_id == "east":
            raise KeyboardInterrupt
        return one(model, cfg, job, *a, **k)

    monkeypatch.setattr(predict_module, "predict_one", stopped)
    with pytest.raises(KeyboardInterrupt):
        predict_files(model, cfg, jobs, out, **kw)
    monkeypatch.undo()
    head, *done = (json.loads(line) for line in (out / RECORD).read_text().splitlines())
    assert head["settings"]["overlap"] == 0.25 and [d["id"] for d in done] == ["west"]
    assert not (out / "pred_east.las").exists()
    west_written = (out / "pred_west.las").stat().st_mtime_ns

    # resumed: the west file is kept, the east one predicted with the west's points around it
    run = []
    infer = predict_windows.infer_tiles

    def counted(m, i, *a, **k):
        run.append(len(i))
        return infer(m, i, *a, **k)

    monkeypatch.setattr(predict_windows, "infer_tiles", counted)
    res = predict_files(model, cfg, jobs, out, resume=True, **kw)
    assert [r.kept for r in res] == [True, False] and run
    assert (out / "pred_west.las").stat().st_mtime_ns == west_written
    for r, f in zip(res, full, strict=True):
        assert (r.points, r.counts, r.windows, r.survey, r.bounds) == (
            f.points, f.counts, f.windows, f.survey, f.bounds
        )  # fmt: skip
        assert r.found == f.found and r.edge_parts == f.edge_parts
        assert [g.outline for g in r.found] == [g.outline for g in f.found]
        np.testing.assert_array_equal(_classes(r.las), _classes(f.las))
    for name in ("finds.csv", "finds.geojson"):  # the run's lists, the kept file's finds in them
        assert (out / name).read_text() == (tmp_path / "full" / name).read_text()

    # resumed again: nothing left to do (a line cut short by a stop is passed over)
    with open(out / RECORD, "a") as f:
        f.write('{"id":"east","sta')
    run.clear()
    res = predict_files(model, cfg, jobs, out, resume=True, **kw)
    assert [r.kept for r in res] == [True, True] and not run
    # on its own, the west file is not the survey's west file (its edge would be classified
    # without the east's points): predicted again (in a copy, which the rest does not use)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (alone,) = predict_files(model, cfg, jobs[:1], copy, resume=True, **kw)
    assert not alone.kept and alone.survey == 0
    # an input changed since, or an output gone: predicted again
    os.utime(jobs[0].las)
    (out / "pred_east.finds.csv").unlink()
    res = predict_files(model, cfg, jobs, out, resume=True, **kw)
    assert [r.kept for r in res] == [False, False]
    res = predict_files(model, cfg, jobs, out, resume=True, report=tmp_path / "rep", **kw)
    assert [r.kept for r in res] == [True, True]
    pictures = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pictures == ["overview.png", "pred_east.las.png", "pred_west.las.png"]
    monkeypatch.undo()
    # the kept files' pictures, drawn from their written classes, are those of a fresh run
    predict_files(model, cfg, jobs, tmp_path / "fresh", report=tmp_path / "rep2", **kw)
    for name in pictures:
        kept_png = np.asarray(Image.open(tmp_path / "rep" / name))
        np.testing.assert_array_equal(kept_png, np.asarray(Image.open(tmp_path / "rep2" / name)))

    # other settings or other weights: refused, naming the difference
    with pytest.raises(BadDataError, match=r"overlap \(0.25 then, 0.5 now\)"):
        predict_files(model, cfg, jobs, out, resume=True, overlap=0.5, **kw)
    with pytest.raises(BadDataError, match=r"probabilities \(True then, False now\)"):
        predict_files(model, cfg, jobs, out, resume=True, **{**kw, "probabilities": False})
    fingerprint = model_fingerprint(model)
    other, _ = load_model(trained_run[0].best_weights)
    next(other.parameters()).data.add_(1e-3)
    assert model_fingerprint(other) != fingerprint
    with pytest.raises(BadDataError, match="differs in the weights"):
        predict_files(other, cfg, jobs, out, resume=True, **kw)
    # without --resume a run starts again, and its record replaces the earlier one at once
    res = predict_files(other, cfg, jobs[:1], out, **kw)
    assert not res[0].kept
    lines = (out / RECORD).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["id"] == "west"

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / RECORD).write_text("not json\n")
    with pytest.raises(BadDataError, match="predict without --resume to start again"):
        predict_files(model, cfg, jobs, tmp_path / "junk", resume=True, **kw)

    # the command line
    args = ["predict", "--weights", str(trained_run[0].best_weights), "--input", str(jobs[0].las),
            str(jobs[1].las), "--out", str(tmp_path / "cli"), "--window", "100"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "kept from the earlier run" in printed and "(2 kept from the earlier run)" in printed


def test_a_folder_predicted_into_itself_can_be_given_again(
    trained_run, tiny_dataset, tmp_path, capsys
):
    """The outputs an earlier run wrote into the input folder (its record names them) are not
    taken for inputs: no pred_pred_*, no refusal, and --resume keeps the file."""
    folder = tmp_path / "survey"
    folder.mkdir()
    for pair in sorted((tiny_dataset / "predict").glob("pair_*")):
        las = next(pair.glob("*.las"))
        shutil.copy(las, folder / f"{pair.name}.las")
    args = ["predict", "--weights", str(trained_run[0].best_weights), "--input", str(folder),
            "--out", str(folder), "--no-grids"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 0  # its outputs are not inputs now
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("2 of 2 files written") == 3 and "2 kept from the earlier run" in out
    names = sorted(p.name for p in folder.glob("*.las"))
    assert names == ["pair_0000.las", "pair_0001.las", "pred_pair_0000.las", "pred_pair_0001.las"]
    # a pred_ file no run wrote here is an input like any other
    shutil.copy(folder / "pred_pair_0000.las", folder / "pred_other.las")
    assert main(args) == 0
    assert (folder / "pred_pred_other.las").is_file()
