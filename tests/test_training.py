import copy
import csv
import pickle
import shutil

import lightning.pytorch as pl
import pytest
import torch

from uxbseg.cli import main
from uxbseg.config import config_to_dict
from uxbseg.data.dataset import UXBDataset
from uxbseg.data.pairs import find_pairs
from uxbseg.data.voxelize import GridSpec
from uxbseg.io.weights import BEST_WEIGHTS_NAME, load_model
from uxbseg.models import UXBFusionModel
from uxbseg.training.schedule import decay_factor
from uxbseg.training.task import NonFiniteLossError, UXBSegmentationTask
from uxbseg.training.train import train

from .conftest import ROOT


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_folder_and_metrics(trained_run):
    result, cfg = trained_run
    run = result.run_dir
    assert result.best_weights == run / f"{BEST_WEIGHTS_NAME}.safetensors"
    for name in (
        "config.yaml",
        "checkpoints/last.ckpt",
        "metrics.csv",
        f"{BEST_WEIGHTS_NAME}.pth",
        f"{BEST_WEIGHTS_NAME}.safetensors",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = _rows(run / "metrics.csv")
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 2  # one per epoch
    for key in (
        "val/iou_plazuela_3d",
        "val/f1_structure_3d",
        "val/acc_2d",
        "train/loss_epoch",
        "val/precision_ground_3d",
        "val/recall_structure_2d",
        "train/loss_surface",  # tiny.yaml's surface branch has its own term
        "val/loss_surface",
    ):
        assert key in rows[0], key
    assert all(0.0 <= float(r["val/acc_3d"]) <= 1.0 for r in val)
    # tiny.yaml decays the learning rate after its one warm-up epoch (cosine over 2 epochs)
    lrs = [float(r["lr/heads"]) for r in rows if r.get("lr/heads")]
    oc = cfg.optim
    assert oc.decay == "cosine" and cfg.trainer.max_epochs == 2
    assert lrs == pytest.approx([oc.lr_main, oc.lr_main * decay_factor(0.5, oc)], rel=1e-6)


def test_best_weights_load_safely_and_reproduce(trained_run, tiny_dataset):
    result, cfg = trained_run
    pth = result.run_dir / f"{BEST_WEIGHTS_NAME}.pth"
    state = torch.load(pth, weights_only=True)
    fresh = UXBFusionModel.from_config(cfg)
    fresh.load_state_dict(state)
    fresh.eval()
    from_st, cfg_st = load_model(result.best_weights)
    assert config_to_dict(cfg_st)["model"] == config_to_dict(cfg)["model"]
    sample = UXBDataset(
        find_pairs(tiny_dataset, "test"), GridSpec.from_config(cfg.grid), cfg.data.image_size
    )[0]
    x = (sample["image"][None], sample["voxels"][None])
    with torch.no_grad():
        a, b = fresh(*x)["logits3d"], from_st(*x)["logits3d"]
        c = UXBFusionModel.from_config(cfg).eval()(*x)["logits3d"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)  # the trained weights matter


def test_training_loss_falls(tiny_cfg, tiny_dataset):
    pl.seed_everything(0)
    task = UXBSegmentationTask.from_config(tiny_cfg)
    ds = UXBDataset(find_pairs(tiny_dataset, "train"), GridSpec.from_config(tiny_cfg.grid), 64)
    batch = torch.utils.data.default_collate([ds[2], ds[3]])
    opt = torch.optim.AdamW(task.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, _ = task.criterion(task.model(batch["image"], batch["voxels"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


class _Capture(pl.Callback):
    def __init__(self):
        self.start_epoch = None
        self.opt_state = None

    def on_train_start(self, trainer, pl_module):
        self.start_epoch = trainer.current_epoch
        self.opt_state = copy.deepcopy(trainer.optimizers[0].state_dict())  # not live refs


@pytest.mark.slow
def test_resume_continues_at_next_epoch_with_same_optimizer(tiny_cfg, tiny_dataset, tmp_path):
    tiny_cfg.trainer.max_epochs = 1
    train(tiny_dataset, tiny_cfg, tmp_path, progress=False)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # saved after the validation of epoch index 0 (Lightning counts its loops in the file)
    assert saved["epoch"] == 0 and saved["global_step"] > 0
    tiny_cfg.trainer.max_epochs = 2
    cap = _Capture()
    train(tiny_dataset, tiny_cfg, tmp_path, resume=True, progress=False, extra_callbacks=[cap])
    assert cap.start_epoch == 1  # seed epoch 2
    want = saved["optimizer_states"][0]["state"]
    got = cap.opt_state["state"]
    assert want.keys() == got.keys() and len(want) > 0
    for k in want:
        torch.testing.assert_close(got[k]["exp_avg"], want[k]["exp_avg"])
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 1 and after["global_step"] == 2 * saved["global_step"]
    epochs = [r["epoch"] for r in _rows(tmp_path / "metrics.csv") if r.get("val/loss")]
    assert epochs == ["0", "1"]  # the first run's rows survive the resume


class _PoisonEpoch2(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1:
            batch["image"].fill_(float("nan"))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_best(tiny_cfg, tiny_dataset, tmp_path):
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        train(tiny_dataset, tiny_cfg, tmp_path, progress=False, extra_callbacks=[_PoisonEpoch2()])
    best = load_model(tmp_path / f"{BEST_WEIGHTS_NAME}.safetensors")[0]
    assert all(torch.isfinite(p).all() for p in best.parameters())


def test_bad_data_stops_before_training(tiny_dataset, tmp_path, capsys, caplog):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    next((root / "train" / "pair_0001").glob("uxb*.png")).unlink()
    args = [
        "train",
        "--data",
        str(root),
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "grid.shape=[32,32,64]",
        "--set",
        "data.image_size=64",
        "--set",
        "data.num_workers=0",
        "--set",
        "trainer.max_epochs=1",
        "--set",
        "trainer.surface_pretrain_steps=0",  # 600 steps, ~50 s, beside the point here
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "pair_0001" in err and "no mask" in err and "--skip-bad" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    caplog.set_level("WARNING", logger="uxbseg")
    assert main([*args, "--skip-bad"]) == 0
    assert "skipping train/pair_0001" in caplog.text
    assert (tmp_path / "run" / f"{BEST_WEIGHTS_NAME}.safetensors").is_file()


class _Payload:
    """An object a pickle-based checkpoint could smuggle in."""


def test_trainer_checkpoint_io_never_unpickles(tiny_cfg, tmp_path, monkeypatch):
    """Every checkpoint Lightning loads (resume, the ddp_spawn launcher's weights, which it reads
    with weights_only=None) goes through an I/O that refuses pickled objects - even where the
    environment tells torch.load to unpickle whenever the caller leaves weights_only open."""
    from uxbseg.training.train import TensorsOnlyCheckpointIO, _trainer

    trainer = _trainer(tiny_cfg, tmp_path, [], progress=False)
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, TensorsOnlyCheckpointIO)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "plain.ckpt")
    loaded = io.load_checkpoint(tmp_path / "plain.ckpt", weights_only=None)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    torch.save({"payload": _Payload()}, tmp_path / "object.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(tmp_path / "object.ckpt", weights_only=None)
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(tmp_path / "object.ckpt")


def test_resume_without_checkpoint_is_clear(tiny_dataset, tmp_path, capsys):
    args = [
        "train",
        "--data",
        str(tiny_dataset),
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--out",
        str(tmp_path / "empty"),
        "--resume",
    ]
    assert main(args) == 1
    assert "nothing to resume" in capsys.readouterr().err


class _RecordDraws(pl.Callback):
    """Each DDP rank writes the tile indices its sampler hands out in epoch 1."""

    def __init__(self, folder):
        self.folder = str(folder)

    def on_train_epoch_start(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        draw = sampler.global_draw().tolist()
        with open(f"{self.folder}/rank{trainer.global_rank}.txt", "w") as f:
            f.write(repr((trainer.world_size, list(sampler), draw)))


@pytest.mark.slow
def test_ddp_two_processes_train_with_disjoint_sampler_shares(tiny_cfg, tiny_dataset, tmp_path):
    import ast

    tiny_cfg.trainer.devices = 2
    tiny_cfg.trainer.strategy = "ddp_spawn"
    tiny_cfg.trainer.accelerator = "cpu"
    tiny_cfg.trainer.max_epochs = 1
    record = tmp_path / "draws"
    record.mkdir()
    train(
        tiny_dataset,
        tiny_cfg,
        tmp_path / "run",
        progress=False,
        extra_callbacks=[_RecordDraws(record)],
    )
    assert (tmp_path / "run" / f"{BEST_WEIGHTS_NAME}.safetensors").is_file()
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert any(r.get("val/loss") for r in rows)
    shares = [ast.literal_eval((record / f"rank{r}.txt").read_text()) for r in (0, 1)]
    assert shares[0][0] == shares[1][0] == 2
    draw = shares[0][2]
    assert draw == shares[1][2]  # one global draw
    assert shares[0][1] == draw[0::2] and shares[1][1] == draw[1::2]  # disjoint, covering


def test_freeze_policies_and_parameter_groups(tiny_cfg, tmp_path):
    from transformers import SegformerConfig, SegformerModel

    tiny_cfg.optim.freeze_policy = "seed"
    task = UXBSegmentationTask.from_config(tiny_cfg)
    assert task.scheduled == ["image", "voxel"]
    opt = task.configure_optimizers()
    names = [g["name"] for g in opt.param_groups]
    assert names == ["heads", "encoders"] and opt.param_groups[1]["lr"] == 0.0
    heads = {id(p) for p in opt.param_groups[0]["params"]}
    heads_of = (task.model.fusion, task.model.image_branch.head, task.model.surface_branch)
    expect = {id(p) for m in heads_of for p in m.parameters()}
    # the seed's heads (2D head + fusion) and the surface branch, which the seed does not have
    # and which trains from scratch; the two encoders are the scheduled group
    assert heads == expect
    assert opt.param_groups[0]["weight_decay"] == 1e-2

    tiny_cfg.optim.freeze_policy = "pretrained"  # nothing pretrained: nothing frozen
    task = UXBSegmentationTask.from_config(tiny_cfg)
    assert task.scheduled == []
    assert [g["name"] for g in task.configure_optimizers().param_groups] == ["heads"]

    cfg = SegformerConfig(
        hidden_sizes=[8, 8, 16, 16],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=16,
    )
    SegformerModel(cfg).save_pretrained(tmp_path / "sf")
    tiny_cfg.model.pretrained_2d = str(tmp_path / "sf")
    task = UXBSegmentationTask.from_config(tiny_cfg)
    assert task.scheduled == ["image"]  # only the loaded branch waits for the warm-up


def test_surface_replay_feeds_earlier_tiles_through_the_surface_branch(tiny_cfg, tiny_dataset):
    tiny_cfg.loss.surface_replay = 3
    task = UXBSegmentationTask.from_config(tiny_cfg)
    task.on_fit_start()
    grid = GridSpec.from_config(tiny_cfg.grid)
    ds = UXBDataset(find_pairs(tiny_dataset, "train"), grid, tiny_cfg.data.image_size)
    batch = {k: torch.stack([ds[i][k] for i in (0, 1)]) for k in ("image", "voxels", "mask2d")}
    assert task._replayed(batch) is None  # nothing kept yet; this batch now is
    assert len(task.replay) == 2
    logits, masks = task._replayed(batch)
    assert masks.shape == (2, *batch["mask2d"].shape[1:])
    assert logits.shape == (2, 3, *batch["mask2d"].shape[1:])  # 2 kept, fewer than 3 asked
    assert len(task.replay) == 4
    logits.sum().backward()
    assert task.model.surface_branch.head.weight.grad.abs().sum() > 0
    assert next(task.model.voxel_branch.parameters()).grad is None  # only the branch ran


def test_cutmix_mixes_training_batches_only(tiny_cfg, tiny_dataset):
    """With data.cutmix = 1 each training step sees tile 0 carrying a rectangle of tile 1 (and
    the labels that go with it); validation sees the tiles as they are."""
    tiny_cfg.data.cutmix, tiny_cfg.data.batch_size = 1.0, 2
    task = UXBSegmentationTask.from_config(tiny_cfg)
    task.on_fit_start()
    grid = GridSpec.from_config(tiny_cfg.grid)
    ds = UXBDataset(find_pairs(tiny_dataset, "train"), grid, tiny_cfg.data.image_size)
    keys = ("image", "voxels", "labels3d", "mask2d")
    batch = {k: torch.stack([ds[i][k] for i in (0, 1)]) for k in keys}
    seen = []
    task._shared_step = lambda b, stage: seen.append((stage, b)) or torch.tensor(1.0)
    for _ in range(4):
        task.training_step(batch, 0)
    task.validation_step(batch, 0)
    mixed = [b for stage, b in seen if stage == "train"]
    assert len(mixed) == 4
    for b in mixed:
        same = [(b["voxels"][0] == batch["voxels"][j]).all(0).all(0) for j in (0, 1)]
        assert bool((same[0] | same[1]).all())  # each column of tile 0 is its own or tile 1's
        taken = ~same[0]
        assert bool(taken.any())  # with probability 1 every step mixes
        assert torch.equal(b["labels3d"][0][:, taken], batch["labels3d"][1][:, taken])
        assert torch.equal(b["mask2d"][0][taken], batch["mask2d"][1][taken])
    assert seen[-1][0] == "val" and seen[-1][1] is batch


class _LastCheckpointAtEpochStart(pl.Callback):
    """Reads last.ckpt when the second epoch starts: a killed run must not lose the first."""

    def __init__(self, path):
        self.path, self.saved = path, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.saved = torch.load(self.path, weights_only=True)


@pytest.mark.slow
def test_ema_weights_are_validated_exported_and_checkpointed(tiny_cfg, tiny_dataset, tmp_path):
    tiny_cfg.trainer.max_epochs = 2
    tiny_cfg.trainer.ema_decay = 0.5
    tiny_cfg.trainer.min_delta = -1.0  # export after each epoch: the best is the second
    cap = _LastCheckpointAtEpochStart(tmp_path / "checkpoints" / "last.ckpt")
    result = train(tiny_dataset, tiny_cfg, tmp_path, progress=False, extra_callbacks=[cap])
    assert cap.saved is not None and cap.saved["epoch"] == 0  # written in the first epoch
    assert result.best_epoch == 2
    exported, _ = load_model(result.best_weights)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)

    def model_part(state: dict) -> dict:
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}

    averaged, raw = model_part(ckpt["state_dict"]), model_part(ckpt["current_model_state"])
    got = exported.state_dict()
    assert got.keys() == averaged.keys()
    for k in got:  # the exported weights are the average that was validated, not the raw ones
        torch.testing.assert_close(got[k], averaged[k])
    assert any(not torch.equal(averaged[k], raw[k]) for k in got if raw[k].is_floating_point())


def test_a_new_run_never_replaces_an_earlier_one(trained_run, tiny_dataset, capsys):
    run = trained_run[0].run_dir
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["train", "--data", str(tiny_dataset), "--config", str(ROOT / "configs" / "tiny.yaml")]
    assert main([*args, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"{run} already holds a training run (last.ckpt)" in err and "--resume" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_resume_takes_the_runs_own_config_and_refuses_another_model(
    trained_run, tiny_dataset, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0].run_dir, run)
    saved = (run / "config.yaml").read_bytes()
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--resume"]
    # another model: refused with what to do, and the run's config.yaml kept as it was
    other = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "model.feature_size=24"]
    assert main([*args, *other]) == 1
    err = capsys.readouterr().err
    assert "last.ckpt: the checkpoint does not fit the configured model" in err
    assert (run / "config.yaml").read_bytes() == saved
    # no --config: the run's own (its test-sized grid, 2 epochs done), one epoch more
    assert main([*args, "--set", "trainer.max_epochs=3"]) == 0
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 2
    assert "max_epochs: 3" in (run / "config.yaml").read_text()


def test_a_seed_size_model_on_the_cpu_is_warned_of(caplog):
    from uxbseg.config import load_config
    from uxbseg.training.train import _warn_if_too_big_for_the_cpu

    if torch.cuda.is_available():
        pytest.skip("the check is for training on the CPU; this machine has a GPU")
    with caplog.at_level("WARNING", logger="uxbseg.training.train"):
        assert _warn_if_too_big_for_the_cpu(load_config("seed"))
        assert "(100% of the original script's size)" in caplog.text
        assert "--config tiny" in caplog.text
        caplog.clear()
        assert not _warn_if_too_big_for_the_cpu(load_config("tiny"))
        big_tiny = load_config("tiny", ["grid.shape=[32,256,256]", "model.feature_size=24"])
        assert _warn_if_too_big_for_the_cpu(big_tiny)  # 2 x 8.4 M voxels x 24: 50 %
        assert "(50% of the original script's size)" in caplog.text


def test_a_seed_size_model_trained_eagerly_on_a_gpu_is_told_the_faster_settings():
    from uxbseg.config import load_config
    from uxbseg.training.train import gpu_speed_hint

    seed = load_config("seed")
    hint = gpu_speed_hint(seed, "cuda")
    assert hint.startswith("training eagerly at batch 1:")
    assert "--set model.compile=true --set data.batch_size=8" in hint
    compiled = load_config("seed", ["model.compile=true"])
    assert gpu_speed_hint(compiled, "cuda").startswith("training compiled at batch 1:")
    fast = load_config("seed", ["model.compile=true", "data.batch_size=8"])
    assert gpu_speed_hint(fast, "cuda") is None
    assert gpu_speed_hint(seed, "cpu") is None  # the CPU has its own warning
    assert gpu_speed_hint(load_config("tiny"), "cuda") is None  # a small model: nothing to add


def test_training_says_where_it_runs(tmp_path):
    from uxbseg.training.train import where_trainer_runs

    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    said = where_trainer_runs(trainer)
    assert said == f"cpu ({torch.get_num_threads()} threads), precision 32-true"


def test_a_split_without_plazuela_or_structure_points_is_warned_of(tiny_dataset, tmp_path, caplog):
    """Read as train reads it: each tile's LAS codes from its check; a class no tile holds is
    named, with what that means for training or for validation."""
    import laspy

    from uxbseg.data.pairs import check_pair
    from uxbseg.training.train import _warn_of_missing_classes

    reports = [check_pair(p) for p in find_pairs(tiny_dataset, "train")]
    with caplog.at_level("WARNING", logger="uxbseg.training.train"):
        assert _warn_of_missing_classes(tiny_dataset, "train", reports, validation=False) == []
    assert not caplog.records
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset / "train", root / "train")
    for las_path in (root / "train").glob("pair_*/*.las"):
        las = laspy.read(las_path)
        las.classification[las.classification == 27] = 2  # every plazuela point made ground
        las.write(las_path)
    reports = [check_pair(p) for p in find_pairs(root, "train")]
    with caplog.at_level("WARNING", logger="uxbseg.training.train"):
        assert _warn_of_missing_classes(root, "train", reports, validation=False) == ["plazuela"]
        assert _warn_of_missing_classes(root, "train", reports, validation=True) == ["plazuela"]
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith(
        f"no tile of {root / 'train'} holds a point of plazuela (LAS code 27)"
    )
    assert "the model cannot learn what it never sees" in said[0]
    assert "validation cannot score it" in said[1]
