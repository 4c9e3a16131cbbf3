import pytest
import torch

from uxbseg.config import config_from_dict
from uxbseg.errors import ConfigError
from uxbseg.training.replay import SurfaceReplay


def _tiles(first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n tiles whose maps and masks both carry their number."""
    ids = torch.arange(first, first + n)
    maps = ids.float().view(n, 1, 1, 1).expand(n, 2, 4, 4).clone()
    return maps, ids.view(n, 1, 1).expand(n, 4, 4).clone()


def test_draw_returns_kept_tiles_with_their_own_masks():
    bank = SurfaceReplay(capacity=8, seed=0)
    assert bank.draw(3) is None  # nothing kept yet
    bank.push(*_tiles(0, 2))
    bank.push(*_tiles(2, 2))
    maps, masks = bank.draw(3)
    assert maps.shape == (3, 2, 4, 4) and masks.shape == (3, 4, 4)
    ids = maps[:, 0, 0, 0].long()
    assert len(set(ids.tolist())) == 3 and set(ids.tolist()) <= {0, 1, 2, 3}  # distinct
    assert torch.equal(masks[:, 0, 0], ids)
    assert bank.draw(10)[0].shape[0] == 4  # never more than it holds


def test_oldest_tiles_leave_first_and_copies_are_detached():
    bank = SurfaceReplay(capacity=3, seed=0)
    maps, masks = _tiles(0, 2)
    maps.requires_grad_(True)
    bank.push(maps, masks)
    bank.push(*_tiles(2, 2))  # 0 leaves
    assert len(bank) == 3
    kept, _ = bank.draw(3)
    assert sorted(kept[:, 0, 0, 0].long().tolist()) == [1, 2, 3]
    assert not kept.requires_grad
    maps.data.fill_(-1)  # the bank holds copies
    assert (bank.draw(3)[0] >= 1).all()


def test_draws_follow_the_seed():
    a, b, c = SurfaceReplay(16, seed=1), SurfaceReplay(16, seed=1), SurfaceReplay(16, seed=2)
    for bank in (a, b, c):
        bank.push(*_tiles(0, 16))
    da, db, dc = (bank.draw(6)[1][:, 0, 0] for bank in (a, b, c))
    assert torch.equal(da, db) and not torch.equal(da, dc)


def test_mismatched_push_and_bad_config_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        SurfaceReplay(4).push(torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"set model\.surface_branch"):
        config_from_dict({"loss": {"surface_replay": 4}})
