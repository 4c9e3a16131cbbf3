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
