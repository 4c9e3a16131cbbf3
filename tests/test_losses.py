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


def _dice_by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - 2|P.T| / (|P| + |T|) per tile and foreground class, over non-IGNORE positions."""
    p = logits.float().softmax(1)
    valid = (target != IGNORE).unsqueeze(1).float()
    t = F.one_hot(target.clamp(min=0), p.shape[1]).movedim(-1, 1).float()
    p, t = (p * valid)[:, 1:], (t * valid)[:, 1:]
    dims = tuple(range(2, p.ndim))
    inter, sizes = (p * t).sum(dims), p.sum(dims) + t.sum(dims)
    return (1 - (2 * inter + 1e-5) / (sizes + 1e-5)).mean()


def test_dice_weight_adds_the_foreground_dice_to_each_term():
    torch.manual_seed(0)
    out = {
        "logits3d": torch.randn(2, 3, 2, 3, 4),
        "logits2d": torch.randn(2, 3, 3, 4),
        "logits_surface": torch.randn(2, 3, 3, 4),
    }
    labels = torch.randint(0, 3, (2, 2, 3, 4))
    labels[:, 0] = IGNORE
    batch = {"labels3d": labels, "mask2d": torch.randint(0, 3, (2, 3, 4))}
    plain = FusionLoss()(out, batch)[1]
    loss, parts = FusionLoss(dice_weight=0.5)(out, batch)
    for key, logits, target in (
        ("loss3d", out["logits3d"], labels),
        ("loss2d", out["logits2d"], batch["mask2d"]),
        ("loss_surface", out["logits_surface"], batch["mask2d"]),
    ):
        torch.testing.assert_close(parts[key], plain[key] + 0.5 * _dice_by_hand(logits, target))
    torch.testing.assert_close(loss, parts["loss3d"] + parts["loss2d"] + parts["loss_surface"])


def test_dice_ignores_ignored_positions_and_falls_for_right_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (1, 2, 3, 4))
    labels[0, 0] = IGNORE
    logits = torch.randn(1, 3, 2, 3, 4)
    crit = FusionLoss(dice_weight=1.0)
    base = crit({"logits3d": logits}, {"labels3d": labels})[0]
    changed = logits.clone()
    changed[:, :, 0] = 50.0 * torch.randn(1, 3, 3, 4)  # only IGNORE positions differ
    torch.testing.assert_close(crit({"logits3d": changed}, {"labels3d": labels})[0], base)
    right = 20.0 * F.one_hot(labels.clamp(min=0), 3).movedim(-1, 1).float()
    assert crit({"logits3d": right}, {"labels3d": labels})[0] < 1e-3 < base
    all_ignored = {"labels3d": torch.full((1, 2, 3, 4), IGNORE)}
    assert crit({"logits3d": logits}, all_ignored)[0].item() == 0.0
