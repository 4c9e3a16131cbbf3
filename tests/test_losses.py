import torch
from torch.nn import functional as F

from uxbseg.classes import IGNORE
from uxbseg.losses import FusionLoss


def test_weighted_sum_and_ignore():
    torch.manual_seed(0)
    out = {"logits3d": torch.randn(1, 3, 2, 3, 4), "logits2d": torch.randn(1, 3, 3, 4)}
    labels = torch.randint(0, 3, (1, 2, 3, 4))
    labels[0, 0] = IGNORE
    mask = torch.randint(0, 3, (1, 3, 4))
    loss, parts = FusionLoss()({**out}, {"labels3d": labels, "mask2d": mask})
    w = torch.tensor([0.05, 0.45, 0.50])
    l3 = F.cross_entropy(out["logits3d"][:, :, 1:], labels[:, 1:], weight=w)
    l2 = F.cross_entropy(out["logits2d"], mask, weight=w)
    torch.testing.assert_close(parts["loss3d"], l3)
    torch.testing.assert_close(loss, l2 + l3)


def test_surface_term_is_added_with_its_weight():
    torch.manual_seed(0)
    out = {
        "logits3d": torch.randn(1, 3, 2, 3, 4),
        "logits2d": torch.randn(1, 3, 3, 4),
        "logits_surface": torch.randn(1, 3, 3, 4),
    }
    batch = {
        "labels3d": torch.randint(0, 3, (1, 2, 3, 4)),
        "mask2d": torch.randint(0, 3, (1, 3, 4)),
    }
    w = torch.tensor([0.05, 0.45, 0.50])
    loss, parts = FusionLoss(weight_surface=0.5)(out, batch)
    ls = F.cross_entropy(out["logits_surface"], batch["mask2d"], weight=w)
    torch.testing.assert_close(parts["loss_surface"], ls)
    torch.testing.assert_close(loss, parts["loss3d"] + parts["loss2d"] + 0.5 * ls)


def test_all_ignored_is_zero_not_nan():
    out = {"logits3d": torch.randn(1, 3, 2, 2, 2, requires_grad=True), "logits2d": None}
    loss, _ = FusionLoss()(out, {"labels3d": torch.full((1, 2, 2, 2), IGNORE)})
    assert loss.item() == 0.0
    loss.backward()


def test_surface_extra_tiles_join_the_surface_term_as_one_batch():
    torch.manual_seed(0)
    out = {"logits3d": torch.randn(2, 3, 2, 3, 4), "logits_surface": torch.randn(2, 3, 3, 4)}
    batch = {
        "labels3d": torch.randint(0, 3, (2, 2, 3, 4)),
        "mask2d": torch.randint(0, 3, (2, 3, 4)),
    }
    extra = (torch.randn(3, 3, 3, 4), torch.randint(0, 3, (3, 3, 4)))
    w = torch.tensor([0.05, 0.45, 0.50])
    loss, parts = FusionLoss()(out, batch, extra)
    logits = torch.cat([out["logits_surface"], extra[0]])
    both = F.cross_entropy(logits, torch.cat([batch["mask2d"], extra[1]]), weight=w)
    torch.testing.assert_close(parts["loss_surface"], both)
    torch.testing.assert_close(loss, parts["loss3d"] + both)
    alone = FusionLoss()(out, batch)[1]["loss_surface"]
    assert not torch.allclose(alone, both)
