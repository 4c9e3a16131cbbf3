import itertools

import pytest

from uxbseg.config import OptimConfig
from uxbseg.training.schedule import encoder_lr, encoders_frozen, head_lr

W, M = 2e-7, 2e-5


@pytest.mark.parametrize(
    ("epoch", "head", "enc", "frozen"),
    [
        (1, W + (M - W) / 20, 0.0, True),
        (20, M, 0.0, True),
        (21, M, W + (M - W) / 20, False),
        (40, M, M, False),
        (41, M, M, False),
    ],
)
def test_seed_schedule(epoch, head, enc, frozen):
    cfg = OptimConfig()
    assert head_lr(epoch, cfg) == pytest.approx(head, rel=1e-12)
    assert encoder_lr(epoch, cfg) == pytest.approx(enc, rel=1e-12, abs=0)
    assert encoders_frozen(epoch, cfg) is frozen


def test_cosine_decay_after_warm_up():
    from uxbseg.training.schedule import decay_factor

    assert decay_factor(0.7, OptimConfig()) == 1.0  # the seed keeps LR_MAIN
    cfg = OptimConfig(decay="cosine", min_lr_ratio=0.1)
    assert decay_factor(0.0, cfg) == pytest.approx(1.0)
    assert decay_factor(0.5, cfg) == pytest.approx(0.55)
    assert decay_factor(1.0, cfg) == pytest.approx(0.1)
    assert decay_factor(3.0, cfg) == pytest.approx(0.1)  # clamped past the end
    values = [decay_factor(p / 10, cfg) for p in range(11)]
    assert all(a > b for a, b in itertools.pairwise(values))
