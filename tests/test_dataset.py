import numpy as np
import torch

from uxbseg.classes import IGNORE
from uxbseg.data.dataset import UXBDataset
from uxbseg.data.pairs import find_pairs
from uxbseg.data.voxelize import GridSpec


def test_sample_dict(tiny_dataset):
    grid = GridSpec((32, 32, 64))
    ds = UXBDataset(find_pairs(tiny_dataset, "train"), grid, image_size=64)
    s = ds[0]
    assert set(s) == {"image", "voxels", "labels3d", "mask2d", "pair_id", "las_path"}
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["voxels"].shape == (3, 32, 32, 64) and s["voxels"].dtype == torch.float32
    assert s["labels3d"].shape == (32, 32, 64) and s["labels3d"].dtype == torch.int64
    assert s["mask2d"].shape == (32, 64) and s["mask2d"].dtype == torch.int64
    assert s["pair_id"] == "pair_0000" and s["las_path"].endswith(".las")
    occupied = s["voxels"][0] > 0
    assert (s["labels3d"][~occupied] == IGNORE).all()
    np.testing.assert_array_equal(ds.labels3d(0).reshape(32, 32, 64), s["labels3d"].numpy())


def test_predict_pair_without_mask(tiny_dataset, tmp_path):
    import shutil

    shutil.copytree(tiny_dataset / "predict", tmp_path / "predict")
    for m in (tmp_path / "predict").glob("*/uxb_msk*.png"):
        m.unlink()
    pairs = find_pairs(tmp_path, "predict")
    assert all(p.mask is None and not p.problems for p in pairs)
    s = UXBDataset(pairs, GridSpec((32, 32, 64)), 64)[0]
    assert (s["mask2d"] == IGNORE).all()
