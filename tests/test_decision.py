import pytest
import torch

from uxbseg.config import config_from_dict
from uxbseg.decision import decide, first_max
from uxbseg.errors import ConfigError

W = (0.05, 0.45, 0.50)


def test_plain_argmax_and_the_weights_undone():
    probs = torch.tensor([[0.1, 0.5, 0.4], [0.02, 0.9, 0.08], [0.3, 0.3, 0.4]]).T  # (K=3, N=3)
    assert decide(probs).tolist() == [1, 1, 2]
    assert decide(probs, W, 0.0).tolist() == [1, 1, 2]
    # probs / W: [2, 1.11, 0.8] -> ground; [0.4, 2, 0.16] -> plazuela; [6, 0.67, 0.8] -> ground
    assert decide(probs, W, 1.0).tolist() == [0, 1, 0]
    # halfway: [0.447, 0.745, 0.566] -> plazuela
    assert decide(probs[:, :1], W, 0.5).tolist() == [1]


def test_logits_give_the_classes_of_their_probabilities():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, 5) * 3
    for tau in (0.0, 0.5, 1.0):
        want = decide(z.softmax(1), W, tau, dim=1)
        assert torch.equal(decide(z, W, tau, dim=1, logits=True), want)
    assert not torch.equal(decide(z, W, 1.0, dim=1, logits=True), decide(z, W, 0.0, dim=1))


def test_class_dimension_is_honoured():
    probs = torch.tensor([0.1, 0.5, 0.4]).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    assert decide(probs, W, 1.0, dim=1).shape == (2, 4, 5)
    assert (decide(probs, W, 1.0, dim=1) == 0).all()


def test_weights_must_be_positive_and_one_per_class():
    with pytest.raises(ValueError, match="one positive class weight per class"):
        decide(torch.rand(3, 4), (0.0, 0.5, 0.5), 1.0)
    with pytest.raises(ValueError, match="one positive class weight per class"):
        decide(torch.rand(3, 4), (0.5, 0.5), 1.0)
    with pytest.raises(ConfigError, match=r"logit_adjustment=1\.0 divides by the class weights"):
        config_from_dict(
            {"model": {"logit_adjustment": 1.0}, "loss": {"class_weights": [0.0, 0.5, 0.5]}}
        )


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_first_max_is_torchs_argmax_with_ties_and_nans(dim):
    torch.manual_seed(1)
    x = torch.randint(0, 4, (5, 3, 6, 7)).float()  # many ties
    x[torch.rand(x.shape) < 0.05] = float("nan")
    for scores in (x, x.to(torch.bfloat16), x.movedim(1, -1).contiguous().movedim(-1, 1)):
        got = first_max(scores, dim)
        assert got.dtype == torch.int64 and torch.equal(got, scores.argmax(dim))
    assert first_max(torch.tensor([[0.2, 0.7, 0.1]]), 1).tolist() == [1]
