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


def test_augmentation_moves_every_key_together():
    from uxbseg.data.dataset import flip_rotate

    torch.manual_seed(0)
    image = torch.zeros(3, 8, 8)
    image[:, 0:2, 6:8] = 1.0  # north-east corner
    mask = torch.zeros(4, 4, dtype=torch.int64)
    mask[0, 3] = 2
    vox = torch.zeros(2, 3, 4, 4)
    vox[:, :, 0, 3] = 1.0
    lab = torch.zeros(3, 4, 4, dtype=torch.int64)
    lab[:, 0, 3] = 2
    seen = set()
    for _ in range(40):
        s = flip_rotate(
            {
                "image": image,
                "mask2d": mask,
                "voxels": vox,
                "labels3d": lab,
                "pair_id": "p",
                "las_path": "x",
            }
        )
        r, c = divmod(int(s["mask2d"].argmax()), 4)
        seen.add((r, c))
        assert s["image"][0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].min() == 1.0
        assert (s["voxels"][:, :, r, c] == 1.0).all() and (s["labels3d"][:, r, c] == 2).all()
        assert s["image"].sum() == image.sum() and s["pair_id"] == "p"
    assert seen == {(0, 0), (0, 3), (3, 0), (3, 3)}


def test_augmentation_keeps_non_square_grids_aligned():
    from uxbseg.data.dataset import flip_rotate

    torch.manual_seed(1)
    lab = torch.arange(4 * 8).reshape(1, 4, 8)
    img = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 4, 8).expand(3, 4, 8)
    for _ in range(20):
        s = flip_rotate(
            {"image": img, "mask2d": lab[0], "voxels": lab.float()[None], "labels3d": lab}
        )
        assert s["labels3d"].shape == (1, 4, 8) and s["mask2d"].shape == (4, 8)
        torch.testing.assert_close(s["image"][0], s["labels3d"][0].float())
