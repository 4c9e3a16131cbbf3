"""UnfoldedConv3d: a few-channel 3D conv as one matrix product over its unfolded input (the GPU's
path for SwinUNETR's first convs), same numbers as nn.Conv3d; run here on the CPU."""

import copy

import pytest
import torch
from torch import nn

from uxbseg.config import load_config, packaged_config
from uxbseg.models.convs import UnfoldedConv3d, onednn_conv3d, unfold_small_convs
from uxbseg.models.model import UXBFusionModel


def _unfolded(conv: nn.Conv3d) -> nn.Conv3d:
    fast = copy.deepcopy(conv)
    assert unfold_small_convs(fast) == 1 and type(fast) is UnfoldedConv3d
    fast.devices = ("cpu",)  # unfold here too, as on a GPU
    return fast


@pytest.mark.parametrize(
    ("c_in", "kernel", "stride", "padding", "shape"),
    [
        (3, 3, 1, 1, (2, 3, 6, 8, 10)),  # SwinUNETR's first conv on the voxel features
        (3, 1, 1, 0, (2, 3, 6, 8, 10)),  # its 1x1x1 residual conv
        (3, 2, 2, 0, (2, 3, 6, 8, 10)),  # Swin's patch embedding
        (1, (3, 1, 5), 1, (1, 0, 2), (1, 1, 5, 6, 7)),  # odd sides, one channel
        (16, 1, 1, 0, (1, 16, 4, 4, 4)),  # already a multiple of 16: no zero columns
    ],
)
def test_matches_conv3d_values_and_gradients(c_in, kernel, stride, padding, shape):
    torch.manual_seed(0)
    conv = nn.Conv3d(c_in, 24, kernel, stride=stride, padding=padding)
    fast = _unfolded(conv)
    x = torch.randn(shape)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, got = conv(xr), fast(xf)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape)
    (ref * grad).sum().backward()
    (got * grad).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(fast.parameters(), conv.parameters(), strict=True):
        assert theirs.grad.abs().sum() > 0
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-4)


def test_under_autocast_it_unfolds_in_bfloat16():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, 3, padding=1)
    fast = _unfolded(conv)
    x = torch.randn(1, 3, 4, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast(x)
    assert got.dtype == torch.bfloat16
    ref = conv(x)
    assert (got.float() - ref).norm() / ref.norm() < 1e-2  # bfloat16 rounding


def test_only_convs_with_few_input_columns_and_elsewhere_the_old_kernel():
    """Few channels, stride 1 "same" or patches; on the CPU (by default) each keeps the kernel of
    the class it replaced."""
    net = nn.Sequential(
        nn.Conv3d(3, 8, 3, padding=1),  # 81 columns
        nn.Conv3d(5, 8, 3, padding=1),  # 135 columns: cuDNN's
        nn.Conv3d(32, 8, 1),  # 32 channels: cuDNN's
        nn.Conv3d(3, 8, 3, padding=0),  # not "same"
        nn.Conv3d(3, 8, 2, stride=2),  # patches
        nn.Conv3d(3, 8, 3, stride=2, padding=1),  # strided, overlapping
    )
    onednn_conv3d(net[0])
    keys = list(net.state_dict())
    assert unfold_small_convs(net) == 2
    assert [type(m) is UnfoldedConv3d for m in net] == [True, False, False, False, True, False]
    assert net[0].onednn and not net[4].onednn
    assert list(net.state_dict()) == keys
    x = torch.randn(1, 3, 4, 4, 4)
    calls = []
    real = torch.mkldnn_convolution

    def spy(*args):
        calls.append(1)
        return real(*args)

    torch.mkldnn_convolution = spy
    try:
        with torch.no_grad():
            out = net[0](x)
            net[4](x)
    finally:
        torch.mkldnn_convolution = real
    assert out.is_contiguous()  # not unfolded on the CPU: the conv's own layout
    if torch.backends.mkldnn.is_available():
        assert calls == [1]  # net[0] on oneDNN (batch 1 on the CPU), net[4] on nn.Conv3d's path
    x2 = torch.randn(2, 3, 4, 4, 4)  # a batch of two: PyTorch's own choice for both
    for m in (net[0], net[4]):
        ref = nn.functional.conv3d(x2, m.weight, m.bias, m.stride, m.padding)
        torch.testing.assert_close(m(x2), ref, rtol=0, atol=0)


def test_seed_model_unfolds_its_first_convs_and_the_tiny_model_keeps_its_outputs():
    cfg = load_config(packaged_config("seed"), ["model.pretrained_2d=null"])
    names = [
        n for n, m in UXBFusionModel.from_config(cfg).named_modules() if type(m) is UnfoldedConv3d
    ]
    assert names == [
        "voxel_branch.net.swinViT.patch_embed.proj",
        "voxel_branch.net.encoder1.layer.conv1.conv",
        "voxel_branch.net.encoder1.layer.conv3.conv",
    ]
    tiny = load_config(packaged_config("tiny"), ["model.pretrained_2d=null"])
    tiny.model.unfold_convs = False
    torch.manual_seed(0)
    plain = UXBFusionModel.from_config(tiny).eval()
    assert not any(type(m) is UnfoldedConv3d for m in plain.modules())
    tiny.model.unfold_convs = True
    fast = UXBFusionModel.from_config(tiny).eval()
    fast.load_state_dict(plain.state_dict())
    unfolded = [m for m in fast.modules() if type(m) is UnfoldedConv3d]
    assert unfolded
    for m in unfolded:
        m.devices = ("cpu",)
    c = len(tiny.grid.features)
    x = (torch.randn(2, 3, 64, 64), torch.randn(2, c, *tiny.grid.shape))
    with torch.no_grad():
        a, b = plain(*x), fast(*x)
    torch.testing.assert_close(b["logits3d"], a["logits3d"], rtol=1e-4, atol=1e-4)


def test_dynamo_traces_it_without_a_graph_break():
    torch.manual_seed(0)
    fast = _unfolded(nn.Conv3d(3, 8, 3, padding=1))
    x = torch.randn(2, 3, 4, 6, 8)
    compiled = torch.compile(fast, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fast(x), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as a training step runs it
            got = compiled(x)
        assert got.dtype == torch.bfloat16
