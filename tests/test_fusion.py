import pytest
import torch

from uxbseg.models.fusion import FusionHead


@pytest.mark.parametrize("mode", ["global", "column", "image_only", "voxel_only"])
@pytest.mark.parametrize("depth", [1, 2, 3, 8])
def test_fast_fusion_equals_broadcast_concat(mode, depth):
    torch.manual_seed(0)
    head = FusionHead(mode, image_channels=12, voxel_channels=5, hidden=7).double()
    img = torch.randn(2, 12, 3, 5, dtype=torch.double)
    vox = torch.randn(2, 5, depth, 6, 7, dtype=torch.double)
    fast = head(img, vox, (depth, 6, 7))
    head.materialise = True
    naive = head(img, vox, (depth, 6, 7))
    assert fast.shape == (2, 3, depth, 6, 7)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-10)  # borders included


def test_fast_fusion_gradients_match():
    torch.manual_seed(1)
    head = FusionHead("global", image_channels=6, voxel_channels=4, hidden=5).double()
    img = torch.randn(1, 6, 4, 4, dtype=torch.double, requires_grad=True)
    vox = torch.randn(1, 4, 4, 5, 5, dtype=torch.double)
    head(img, vox, (4, 5, 5)).square().sum().backward()
    g_fast = [img.grad.clone()] + [p.grad.clone() for p in head.parameters()]
    img.grad = None
    head.zero_grad()
    head.materialise = True
    head(img, vox, (4, 5, 5)).square().sum().backward()
    g_naive = [img.grad] + [p.grad for p in head.parameters()]
    for a, b in zip(g_fast, g_naive):
        torch.testing.assert_close(a, b)
