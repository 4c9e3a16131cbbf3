"""What ``--weights`` takes: the exported weights, a run's Lightning checkpoint, and refusals that
say what to pass instead (never advice to unpickle a file)."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from uxbseg.cli import main
from uxbseg.errors import BadDataError
from uxbseg.io.weights import load_model


def _predict(weights, las, out) -> int:
    return main(["predict", "--weights", str(weights), "--input", str(las), "--out", str(out)])


def test_a_runs_lightning_checkpoint_loads_its_model_weights(trained_run, tiny_dataset, tmp_path):
    result, _ = trained_run
    ckpt = result.run_dir / "checkpoints" / "last.ckpt"
    model, cfg = load_model(ckpt)  # its config from the run's config.yaml
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    got = model.state_dict()
    assert got.keys() == {k.removeprefix("model.") for k in saved if k.startswith("model.")}
    for k, v in got.items():
        torch.testing.assert_close(v, saved[f"model.{k}"], rtol=0, atol=0)
    assert cfg.grid.shape == load_model(result.best_weights)[1].grid.shape
    las = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    assert _predict(ckpt, las, tmp_path / "out") == 0
    assert (tmp_path / "out" / f"pred_{las.stem}.las").is_file()


def test_files_that_are_not_weights_are_refused_with_what_to_pass(
    trained_run, tiny_dataset, tmp_path, capsys
):
    result, _ = trained_run
    run = tmp_path / "run"  # a copy of the run: its config.yaml found beside each file
    shutil.copytree(result.run_dir, run)
    las = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    out = tmp_path / "out"

    # the run's config.yaml given for its weights
    assert _predict(run / "config.yaml", las, out) == 1
    assert "config.yaml: not a weights file" in capsys.readouterr().err

    # a .pth holding a pickled module (code to run), not tensors: refused, no advice to unpickle
    torch.save(torch.nn.Linear(2, 2), run / "module.pth")
    assert _predict(run / "module.pth", las, out) == 1
    err = capsys.readouterr().err
    assert "module.pth: holds Python objects besides tensors" in err
    assert "weights_only" not in err and "Traceback" not in err

    # a tensor, not a state dict
    torch.save(torch.zeros(3), run / "tensor.pth")
    assert _predict(run / "tensor.pth", las, out) == 1
    assert "tensor.pth: holds a Tensor, not a state dict" in capsys.readouterr().err
    assert not out.exists() or not list(out.glob("pred_*"))


def test_weights_of_another_model_are_summed_up_not_listed(trained_run, tmp_path):
    result, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    state = torch.load(result.run_dir / f"{result.best_weights.stem}.pth", weights_only=True)
    dropped = sorted(state)[:5]
    for k in dropped:
        del state[k]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, run / "other.pth")
    with pytest.raises(BadDataError) as exc:
        load_model(run / "other.pth")
    text = str(exc.value)
    listed = re.search(r"5 missing \(([^)]*) and 2 more\)", text).group(1).split(", ")
    assert len(listed) == 3 and set(listed) <= set(dropped)
    assert "1 not in the model (extra.weight)" in text
    assert len(text) < 600  # not the model's 400 names


def test_a_mistyped_input_is_refused_before_the_model_is_built(trained_run, tmp_path, capsys):
    weights = trained_run[0].best_weights
    out = tmp_path / "out"
    args = ["predict", "--weights", str(weights), "--out", str(out), "--input"]
    assert main([*args, str(tmp_path / "a.las"), str(tmp_path / "b.las")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'a.las'}: no such file or folder (and 1 more); check" in err
    assert not out.exists()  # nothing made, nothing run


def test_weights_of_other_shapes_are_named_briefly(trained_run, tmp_path):
    result, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    state = torch.load(result.run_dir / f"{result.best_weights.stem}.pth", weights_only=True)
    key = next(k for k, v in state.items() if v.ndim == 1 and v.is_floating_point())
    state[key] = torch.zeros(len(state[key]) + 1)
    torch.save(state, run / "wider.pth")
    with pytest.raises(BadDataError) as exc:
        load_model(run / "wider.pth")
    text = str(exc.value)
    assert f"size mismatch for {key}" in text and "pass weights together" in text
    assert len(text) < 600
