"""Shared fixtures: a tiny synthetic dataset in the real UXB layout and a tiny trained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from uxbseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT.parent / "shared" / "data" / "real"
REAL_LAS = sorted((REAL_DIR / "las").glob("*.la[sz]")) if (REAL_DIR / "las").is_dir() else []

# grid and image sizes small enough for 2 CPU cores, large enough for SwinUNETR (32, 32, 64)
TINY_TEST_OVERRIDES = [
    "grid.shape=[32,32,64]",
    "data.image_size=64",
    "data.batch_size=1",
    "data.cutmix=0",  # mixes the tiles of a batch: needs batch_size >= 2
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "data.voxel_cache=null",
    "trainer.surface_pretrain_steps=0",  # its own tests (test_surface_pretrain.py)
]


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker process takes its share of the cores for torch's
    threads (torch would give every worker all of them)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def real_las_files() -> list[Path]:
    """The real lidar files, or a skip with the reason when the folder is missing."""
    if not REAL_LAS:
        pytest.skip(
            f"real lidar files not found in {REAL_DIR / 'las'} (needs ../shared beside the project)"
        )
    return REAL_LAS


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 train, 2 test, 2 predict synthetic pairs (written once per session)."""
    from uxbseg.data.synthetic import synth_dataset

    root = tmp_path_factory.mktemp("uxb")
    synth_dataset(root, {"train": 4, "test": 2, "predict": 2}, seed=3)
    return root


@pytest.fixture
def tiny_cfg():
    """configs/tiny.yaml shrunk further for tests."""
    return load_config(ROOT / "configs" / "tiny.yaml", TINY_TEST_OVERRIDES)


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory):
    """One tiny training run (2 epochs), reused by every test that needs weights."""
    from uxbseg.training.train import train

    cfg = load_config(ROOT / "configs" / "tiny.yaml", TINY_TEST_OVERRIDES)
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_dataset, cfg, out, progress=False)
    return result, cfg
