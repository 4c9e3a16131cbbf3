"""Command-line usage errors: exit code 2 with a message naming the argument, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from uxbseg.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minutes", "0"], "argument --minutes: must be > 0, got 0"),
        (["--minutes", "-1.5"], "argument --minutes: must be > 0, got -1.5"),
        (["--minutes", "soon"], "argument --minutes: invalid float value: 'soon'"),
        (["--train-tiles", "0"], "argument --train-tiles: must be > 0, got 0"),
    ],
)
def test_demo_rejects_a_budget_or_tile_count_that_is_not_positive(args, message, tmp_path, capsys):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_run_folders_are_numbered_and_the_latest_is_resumed(tmp_path, monkeypatch, capsys):
    from uxbseg.errors import BadDataError
    from uxbseg.run_dirs import latest_run_dir, new_run_dir

    assert new_run_dir(tmp_path / "runs") == tmp_path / "runs" / "run"  # need not exist yet
    for name in ("run", "run_2", "run_7", "run_x", "other"):
        (tmp_path / name).mkdir()
    assert new_run_dir(tmp_path) == tmp_path / "run_8"  # past the highest, gaps left alone
    with pytest.raises(BadDataError, match=r"no run with checkpoints/last\.ckpt"):
        latest_run_dir(tmp_path)
    for name in ("run", "run_2"):
        (tmp_path / name / "checkpoints").mkdir()
        (tmp_path / name / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert latest_run_dir(tmp_path) == tmp_path / "run_2"  # run_7 has nothing to resume
    # the CLI: --resume without --out looks in ./runs
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(tmp_path), "--resume"]) == 1
    assert "runs: no run with checkpoints/last.ckpt to resume" in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused(trained_run, tiny_dataset, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    las = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    weights = trained_run[0].best_weights
    for args in (
        ["predict", "--weights", str(weights), "--input", str(las)],
        ["train", "--data", str(tiny_dataset)],
        ["demo"],
    ):
        assert main([*args, "--out", str(afile)]) == 1, args
        assert f"error: {afile}: a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "keep me"


def test_a_write_that_fails_leaves_the_old_file_and_no_piece(tmp_path):
    from uxbseg.io.files import replacing

    path = tmp_path / "finds.csv"
    path.write_text("old")
    with pytest.raises(OSError), replacing(path) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device", str(tmp))
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["finds.csv"]
    with replacing(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # a reader sees the old file until the end
    assert path.read_text() == "new" and not tmp.exists()


def test_a_full_disk_is_an_error_with_its_fix_not_a_traceback(
    trained_run, tiny_dataset, tmp_path, capsys, monkeypatch
):
    """predict's LAS writer meets a full disk (the system's error, raised where laspy writes):
    exit 1 naming the file and the fix, and no half-written output is left."""
    import errno

    import laspy

    def full(self, destination, *args, **kwargs):
        with open(destination, "wb") as f:
            f.write(b"LASF")  # a piece of a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    monkeypatch.setattr(laspy.LasData, "write", full)
    out = tmp_path / "out"
    las = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    weights = str(trained_run[0].best_weights)
    # --probabilities adds dimensions: the file is written by laspy, not copied
    args = ["predict", "--weights", weights, "--input", str(las), "--out", str(out)]
    assert main([*args, "--probabilities", "--no-grids"]) == 1
    err = capsys.readouterr().err
    assert f".pred_{las.stem}.las.partial: No space left on device; free some space" in err
    assert "Traceback" not in err
    assert not [p.name for p in out.iterdir() if p.name.startswith(f"pred_{las.stem}")]
    assert not list(out.glob(".*.partial"))


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_a_small_budget(tmp_path, capsys):
    """The README's first command, at a tenth of a minute of training: a dataset, weights, an
    evaluation with its pictures, and every predict tile classified with every point."""
    import laspy

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.1", "--train-tiles", "4"]) == 0
    printed = capsys.readouterr().out
    assert "[4/4] predicting the predict split" in printed and "total time:" in printed
    assert (out / "report" / "report.html").is_file()
    assert len(list((out / "report").glob("pair_*.png"))) == 8  # the test tiles
    weights = list((out / "run").glob("*_best.safetensors"))
    assert len(weights) == 1
    ran = yaml.safe_load((out / "run" / "config.yaml").read_text())["trainer"]["accelerator"]
    assert ran == ("auto" if torch.cuda.is_available() else "cpu")  # never Apple's MPS
    sources = sorted((out / "data" / "predict").glob("pair_*/*.las"))
    written = sorted((out / "predict_out").glob("pred_*.las"))
    assert len(sources) == len(written) == 4
    for src, pred in zip(sources, written, strict=True):
        a, b = laspy.read(src), laspy.read(pred)
        assert len(b.points) == len(a.points)
        assert set(np.unique(b.classification)) <= {2, 27, 6}
    assert (out / "predict_out" / "finds.geojson").is_file()


def test_train_without_a_validation_split_says_how_to_make_one(tmp_path, capsys):
    from uxbseg.data.synthetic import synth_dataset

    root = tmp_path / "data"
    synth_dataset(root, {"train": 2}, seed=3)
    assert not (root / "test").exists()
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {root / 'test'}: no validation split" in err
    assert f"uxbseg tile {root} NEW_ROOT --side S --hold-out 0.2" in err
    assert not out.exists()  # refused before any work


def test_train_refuses_devices_this_machine_lacks_before_any_work(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--config", "tiny", "--out", str(out)]
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not cuda:
        assert main([*args, "--set", "trainer.accelerator=gpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: trainer.accelerator=gpu: ")
        assert (
            "set trainer.accelerator=auto (a GPU when torch sees one, else the CPU) or cpu" in err
        )
    else:
        assert main([*args, "--set", f"trainer.devices={cuda + 1}"]) == 1
        assert f"torch sees {cuda} CUDA GPU(s) here" in capsys.readouterr().err
    assert not out.exists()  # nothing written
    # a name Lightning does not know: its own words, as an error, not a traceback
    assert main([*args, "--set", "trainer.accelerator=gpuu", "--set", "trainer.max_epochs=1"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the data checks' log lines
    assert err.startswith("error: Lightning refused the trainer's settings (")
    assert "accelerator='gpuu'" in err and "trainer.accelerator=gpuu, trainer.devices=1" in err


def _allocate_too_much(*args, **kwargs):
    torch.empty(2**46, dtype=torch.uint8)  # 64 TiB: the CPU allocator refuses at once


@pytest.mark.parametrize(
    ("command", "target", "fix"),
    [
        ("train", "uxbseg.training.train.train", "--set data.batch_size=1"),
        ("predict", "uxbseg.predict.predict_files", "lower --batch"),
    ],
)
def test_running_out_of_memory_says_what_to_lower(
    command, target, fix, trained_run, tiny_dataset, tmp_path, monkeypatch, capsys
):
    # the allocator's own error, raised where the command's work begins
    monkeypatch.setattr(target, _allocate_too_much)
    las = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    args = {
        "train": ["--data", str(tiny_dataset)],
        "predict": ["--weights", str(trained_run[0].best_weights), "--input", str(las)],
    }[command]
    assert main([command, *args, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "error: out of memory ([enforce fail" in err and "can't allocate memory" in err
    assert fix in err and "Traceback" not in err


def test_other_runtime_errors_keep_their_traceback(tiny_dataset, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr("uxbseg.training.train.train", broken)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "out")])


def test_a_gpu_out_of_memory_in_evaluate_names_the_batch(
    trained_run, tiny_dataset, monkeypatch, capsys
):
    def cuda_oom(*args, **kwargs):  # torch's own exception type, as CUDA raises it
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.\nline two")

    monkeypatch.setattr("uxbseg.evaluate.evaluate", cuda_oom)
    weights = str(trained_run[0].best_weights)
    assert main(["evaluate", "--weights", weights, "--data", str(tiny_dataset)]) == 1
    err = capsys.readouterr().err
    assert "error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB.); lower" in err
    assert "line two" not in err


def test_device_picks_where_the_model_runs(trained_run, tiny_dataset, tmp_path, capsys):
    las = next((tiny_dataset / "predict" / "pair_0000").glob("*.las"))
    weights = str(trained_run[0].best_weights)
    args = ["predict", "--weights", weights, "--input", str(las), "--out", str(tmp_path / "o")]
    assert main([*args, "--device", "cpu"]) == 0
    assert (tmp_path / "o" / f"pred_{las.stem}.las").is_file()
    with pytest.raises(SystemExit) as exc:  # not a device's name: a usage error
        main([*args, "--device", "gpu"])
    assert exc.value.code == 2
    assert (
        "give auto, cpu, cuda, cuda:N (the N-th GPU) or mps, got 'gpu'" in capsys.readouterr().err
    )
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    assert (
        main(["evaluate", "--weights", weights, "--data", str(tiny_dataset), "--device", missing])
        == 1
    )
    err = capsys.readouterr().err
    assert f"error: --device {missing}: " in err and err.rstrip().endswith("or give --device cpu")
    if torch.version.cuda is None:  # this CPU-only build: the fix is another torch, not a flag
        assert f"this torch ({torch.__version__}) is built without CUDA; install a CUDA" in err
    else:
        assert "torch sees" in err


def test_env_says_what_uxbseg_runs_on(capsys, tmp_path, monkeypatch):
    import json

    import laspy

    import uxbseg

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    (tmp_path / "inductor").mkdir()
    (tmp_path / "inductor" / "kernel.bin").write_bytes(b"\0" * 2**20)  # 1 MiB
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["packages"]["torch"] == str(torch.__version__)
    assert env["packages"]["uxbseg"] == uxbseg.__version__
    assert env["packages"]["laspy"] == laspy.__version__ and env["cores"] >= 1
    assert "Lazrs" in env["laz_backends"]  # lazrs is a dependency: LAZ is readable
    assert env["caches"]["inductor"] == {"folder": str(tmp_path / "inductor"), "mib": 1.0}
    assert env["model_runs_on"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert len(env["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert f"predict and evaluate run the model on: {env['model_runs_on']}" in text
    assert "LAZ backends: " in text and f"inductor cache: {tmp_path / 'inductor'} (1 MiB)" in text
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["onednn"] is torch.backends.mkldnn.is_available()
    onednn = "oneDNN" if env["onednn"] else "no oneDNN: slower 3D convs"
    assert f"(torch: {torch.get_num_threads()} threads, {onednn})" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch uses the GPU here")
def test_an_nvidia_gpu_torch_cannot_use_is_named_with_the_fix(monkeypatch, capsys, caplog):
    from uxbseg import environment, inference

    monkeypatch.setattr(environment, "_nvidia_driver", lambda: None)
    assert environment.unused_gpu() is None  # no driver: nothing to say
    driver = "NVRM version: NVIDIA UNIX x86_64 Kernel Module 580.159.04"
    monkeypatch.setattr(environment, "_nvidia_driver", lambda: driver)
    why = environment.unused_gpu()
    assert why.startswith(f"this machine has an NVIDIA driver ({driver}) but ")
    if torch.version.cuda is None:  # this CPU-only build
        assert f"this torch ({torch.__version__}) is built without CUDA" in why
        assert "install a CUDA build of torch" in why
    else:
        assert "sees no GPU" in why
    assert main(["env"]) == 0
    assert f"  but {why}" in capsys.readouterr().out
    inference._warn_unused_gpu.cache_clear()
    with caplog.at_level("WARNING", logger="uxbseg.inference"):
        assert inference.default_device().type == "cpu"
        inference.default_device()  # said once
    assert [r.getMessage() for r in caplog.records] == [why]
    inference._warn_unused_gpu.cache_clear()
