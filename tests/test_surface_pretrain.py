"""Surface-branch pre-training: the in-memory maps, the stage itself, and its place in train."""

from __future__ import annotations

import re

import pytest
import torch

from uxbseg.classes import IGNORE
from uxbseg.config import load_config
from uxbseg.data.column_maps import ColumnMaps
from uxbseg.data.datamodule import UXBDataModule, checked_pairs
from uxbseg.errors import ConfigError
from uxbseg.losses import weighted_ce
from uxbseg.models import UXBFusionModel
from uxbseg.training.surface_pretrain import SurfacePretrainTask, column_maps, pretrain_surface
from uxbseg.training.train import train

from .conftest import ROOT, TINY_TEST_OVERRIDES


def test_column_maps_views_keep_maps_and_masks_together():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (3, 8, 8))
    maps = torch.stack([masks.float(), -masks.float()], dim=1)  # (3, 2, 8, 8), tied to the mask
    ds = ColumnMaps(maps, masks)
    seen = set()
    for _ in range(40):
        item = ds[1]
        assert item["maps"].shape == (2, 8, 8) and item["mask2d"].shape == (8, 8)
        torch.testing.assert_close(item["maps"][0], item["mask2d"].float())
        torch.testing.assert_close(item["maps"][1], -item["mask2d"].float())
        seen.add(item["mask2d"].numpy().tobytes())
    assert len(seen) > 2  # several of the 8 views were drawn
    plain = ColumnMaps(maps, masks, augment=False)
    assert torch.equal(plain[2]["mask2d"], masks[2]) and len(plain) == 3


@pytest.mark.parametrize(
    ("maps", "masks"),
    [
        (torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long)),
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)),
        (torch.zeros(0, 1, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)),
    ],
)
def test_column_maps_rejects_mismatched_input(maps, masks):
    with pytest.raises(ValueError):
        ColumnMaps(maps, masks)


def test_config_needs_the_surface_branch():
    with pytest.raises(ConfigError, match=r"trainer\.surface_pretrain_steps=5 .* surface branch"):
        load_config(
            ROOT / "configs" / "tiny.yaml",
            [
                *TINY_TEST_OVERRIDES,
                "model.surface_branch=0",
                "loss.surface_replay=0",
                "trainer.surface_pretrain_steps=5",
            ],
        )
    with pytest.raises(ConfigError, match="surface_pretrain_batch must be >= 1"):
        load_config(
            ROOT / "configs" / "tiny.yaml",
            [*TINY_TEST_OVERRIDES, "trainer.surface_pretrain_batch=0"],
        )


def _train_loss(model: UXBFusionModel, data: ColumnMaps, weights) -> float:
    with torch.no_grad():
        logits = model.surface_branch(data.maps)[1]
    return float(weighted_ce(logits, data.masks, torch.tensor(weights)))


def test_pretraining_lowers_the_branch_loss_and_touches_nothing_else(tiny_cfg, tiny_dataset):
    tiny_cfg.trainer.surface_pretrain_steps = 40
    tiny_cfg.trainer.surface_pretrain_batch = 4
    torch.manual_seed(0)
    model = UXBFusionModel.from_config(tiny_cfg)
    pairs = checked_pairs(tiny_dataset, "train", tiny_cfg, skip_bad=False)
    dm = UXBDataModule(tiny_dataset, tiny_cfg, pairs, [])
    data = column_maps(model, dm.train_ds)
    assert data.maps.shape == (4, 4, 32, 64) and data.masks.shape == (4, 32, 64)
    assert bool((data.masks != IGNORE).any())
    others = {k: v.clone() for k, v in model.state_dict().items() if "surface_branch" not in k}
    before = _train_loss(model, data, tiny_cfg.loss.class_weights)
    seconds = pretrain_surface(model, dm.train_ds, tiny_cfg, progress=False)
    after = _train_loss(model, data, tiny_cfg.loss.class_weights)
    assert seconds > 0
    assert after < 0.8 * before, (before, after)
    for k, v in model.state_dict().items():
        if k in others:
            assert torch.equal(v, others[k]), k


def _train_with_stage(cfg, root, run_dir, caplog, steps: int, minutes: float):
    """``train`` with a surface stage of ``steps`` steps of 2 tiles under ``minutes``."""
    cfg.trainer.surface_pretrain_steps = steps
    cfg.trainer.surface_pretrain_batch = 2
    cfg.trainer.max_time_minutes = minutes
    caplog.set_level("INFO", logger="uxbseg")
    return train(root, cfg, run_dir, progress=False)


@pytest.mark.slow
def test_train_counts_the_stage_in_its_time_and_resume_skips_it(
    tiny_cfg, tiny_dataset, tmp_path, caplog
):
    tiny_cfg.trainer.max_epochs = 1
    _train_with_stage(tiny_cfg, tiny_dataset, tmp_path, caplog, steps=10, minutes=30.0)
    found = re.search(
        r"surface branch pre-trained on 4 tiles: 10 steps of 2 in ([\d.]+) s", caplog.text
    )
    assert found, caplog.text
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    timer = next(v for k, v in saved["callbacks"].items() if "Timer" in k)
    assert timer["time_elapsed"]["train"] >= float(found.group(1))
    caplog.clear()
    tiny_cfg.trainer.max_epochs = 2
    train(tiny_dataset, tiny_cfg, tmp_path, resume=True, progress=False)
    assert "pre-trained" not in caplog.text  # the checkpoint holds the trained branch
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 1


@pytest.mark.slow
def test_a_short_time_budget_caps_the_stage_and_still_leaves_weights(
    tiny_cfg, tiny_dataset, tmp_path, caplog
):
    # 0.06 s: the stage's half is spent before its first step, and the main run's budget is
    # already over when it starts; it must still run a step and a validation
    result = _train_with_stage(tiny_cfg, tiny_dataset, tmp_path, caplog, steps=5000, minutes=1e-3)
    found = re.search(r"stopped after (\d+) of trainer\.surface_pretrain_steps=5000", caplog.text)
    assert found and int(found.group(1)) < 5000, caplog.text
    assert result.best_weights is not None and result.best_weights.is_file()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # one step of the 4 in the epoch, then the validation


def test_a_time_capped_stage_decays_its_rate_over_its_time(tiny_cfg, monkeypatch):
    """With a time limit the schedule runs over the steps or the time, whichever ends first:
    a stage cut short by the clock still ends at the low rate."""
    from uxbseg.training import surface_pretrain

    clock = [100.0]
    monkeypatch.setattr(surface_pretrain.time, "monotonic", lambda: clock[0])
    branch = UXBFusionModel.from_config(tiny_cfg).surface_branch
    oc = tiny_cfg.optim
    assert oc.decay == "cosine"
    task = SurfacePretrainTask(branch, tiny_cfg.loss.class_weights, oc, steps=100, seconds=10.0)
    sched = task.configure_optimizers()["lr_scheduler"]["scheduler"]  # the clock starts here
    lr = sched.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(oc.lr_main)
    clock[0] = 105.0  # half the time, a tenth of the steps
    assert task.progress(10) == pytest.approx(0.5)
    assert task.progress(80) == pytest.approx(0.8)  # the steps are further along
    clock[0] = 111.0
    sched.step()
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(oc.lr_main * oc.min_lr_ratio)
    untimed = SurfacePretrainTask(branch, tiny_cfg.loss.class_weights, oc, steps=100)
    assert untimed.progress(50) == pytest.approx(0.5)  # steps alone, whatever the clock
    with pytest.raises(ValueError, match="seconds"):
        SurfacePretrainTask(branch, tiny_cfg.loss.class_weights, oc, steps=100, seconds=0)
