import pytest
import torch

from uxbseg.config import config_from_dict
from uxbseg.errors import ConfigError
from uxbseg.training.mixing import column_cutmix


def _batch(b: int = 3, h: int = 8, w: int = 12, s: int = 2) -> dict:
    """Tiles whose every tensor carries the tile's number; the image at s pixels per column."""
    ids = torch.arange(b)
    return {
        "voxels": ids.float().view(b, 1, 1, 1, 1).expand(b, 2, 4, h, w).clone(),
        "labels3d": ids.view(b, 1, 1, 1).expand(b, 4, h, w).clone(),
        "mask2d": ids.view(b, 1, 1).expand(b, h, w).clone(),
        "image": ids.float().view(b, 1, 1, 1).expand(b, 3, s * h, s * w).clone(),
        "pair_id": [f"p{i}" for i in range(b)],
    }


def test_one_rectangle_of_the_next_tile_in_every_tensor():
    batch = _batch()
    before = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    seen_area = []
    for seed in range(20):
        mixed = column_cutmix(batch, torch.Generator().manual_seed(seed))
        for i in range(3):
            donor = (i + 1) % 3
            cells = mixed["mask2d"][i] == donor
            assert bool(((mixed["mask2d"][i] == i) | cells).all())
            rows, cols = cells.nonzero(as_tuple=True)
            area = int(cells.sum())
            seen_area.append(area / cells.numel())
            if area:  # a filled rectangle
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                assert area == (r1 - r0) * (c1 - c0)
            # the voxels and labels of those columns, at every depth, and the image over them
            assert torch.equal(mixed["labels3d"][i] == donor, cells.expand(4, -1, -1))
            assert torch.equal(mixed["voxels"][i] == donor, cells.expand(2, 4, -1, -1))
            img = cells.repeat_interleave(2, 0).repeat_interleave(2, 1)
            assert torch.equal(mixed["image"][i] == donor, img.expand(3, -1, -1))
        assert mixed["pair_id"] == batch["pair_id"]
    assert max(seen_area) <= 0.5 + 1e-6 and min(seen_area) < 0.2 < max(seen_area)
    for k, v in before.items():  # the input batch is left as it was
        assert torch.equal(batch[k], v)


def test_seeded_and_a_single_tile_is_left_alone():
    a = column_cutmix(_batch(), torch.Generator().manual_seed(3))
    b = column_cutmix(_batch(), torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in ("voxels", "labels3d", "mask2d", "image"))
    one = _batch(b=1)
    assert column_cutmix(one, torch.Generator()) is one


@pytest.mark.parametrize(
    "data, msg",
    [({"cutmix": 1.5}, "probability"), ({"cutmix": 0.5, "batch_size": 1}, "batch_size")],
)
def test_config_checks_name_the_fix(data, msg):
    with pytest.raises(ConfigError, match=msg):
        config_from_dict({"data": data})
