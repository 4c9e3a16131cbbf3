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


@pytest.mark.parametrize("mode", ["global", "column", "image_only", "voxel_only"])
@pytest.mark.parametrize("depth", [2, 3, 8])
def test_fast_fusion_gradients_match(mode, depth):
    """Gradients of the image and voxel features and of every parameter, border slices included
    (the planar terms are added in place into conv1's output with their own backward)."""
    torch.manual_seed(1)
    head = FusionHead(mode, image_channels=6, voxel_channels=4, hidden=5).double()
    img = torch.randn(2, 6, 4, 4, dtype=torch.double, requires_grad=True)
    vox = torch.randn(2, 4, depth, 5, 5, dtype=torch.double, requires_grad=True)
    grads = []
    for materialise in (False, True):
        head.materialise = materialise
        img.grad = vox.grad = None
        head.zero_grad()
        out = head(img, vox, (depth, 5, 5))
        (out.square() * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([t.grad for t in (img, vox, *head.parameters())])
    for fast, naive in zip(*grads, strict=True):
        assert (fast is None) == (naive is None)
        if fast is not None:
            torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["global", "column"])
def test_fast_fusion_compiles_with_its_gradients(mode):
    """Dynamo traces the fast fusion in training (the planar terms' in-place Function, then the
    ReLU: in place on that Function's output it is refused under compile) and the compiled head
    gives the eager head's output and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(2)
    head = FusionHead(mode, image_channels=6, voxel_channels=4, hidden=5)
    img = torch.randn(2, 6, 4, 4, requires_grad=True)
    vox = torch.randn(2, 4, 8, 5, 5, requires_grad=True)
    results = []
    for fn in (head, torch.compile(head, backend="aot_eager", fullgraph=True)):
        img.grad = vox.grad = None
        head.zero_grad()
        out = fn(img, vox, (8, 5, 5))
        (out.square() * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), img.grad, vox.grad, *(p.grad for p in head.parameters())])
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
