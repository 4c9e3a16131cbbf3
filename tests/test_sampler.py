import numpy as np
import pytest

from uxbseg.data.sampler import BalancedSampler


def test_seventy_percent_minority_with_replacement():
    flags = [True] * 10 + [False] * 90
    s = BalancedSampler(flags, 0.7, num_samples=20_000, seed=1)
    draw = np.array(list(s))
    assert len(draw) == 20_000 and draw.max() < 100
    assert np.mean(draw < 10) == pytest.approx(0.7, abs=0.015)
    assert len(BalancedSampler(flags)) == 100  # len(dataset) per epoch


def test_uniform_when_a_group_is_empty():
    s = BalancedSampler([False] * 4, 0.7, num_samples=8000)
    counts = np.bincount(list(s), minlength=4)
    assert counts.min() > 1800


def test_deterministic_and_new_per_epoch():
    flags = [True, False, False, True, False]
    a, b = BalancedSampler(flags, seed=3), BalancedSampler(flags, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first or len(first) < 3


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shares_are_disjoint_and_cover_one_draw(world):
    flags = [i % 3 == 0 for i in range(11)]
    shares = [BalancedSampler(flags, seed=7, num_replicas=world, rank=r) for r in range(world)]
    for s in shares:
        s.set_epoch(4)
    draw = shares[0].global_draw()
    got = [list(s) for s in shares]
    assert len({len(g) for g in got}) == 1
    positions = [list(range(r, len(got[0]) * world, world)) for r in range(world)]
    padded = np.concatenate([draw, draw[: len(got[0]) * world - len(draw)]])
    for r in range(world):
        assert got[r] == padded[positions[r]].tolist()
    covered = sorted(p for pos in positions for p in pos)
    assert covered == list(range(len(got[0]) * world))  # disjoint positions, whole draw
