"""OneDNNConv3d: oneDNN's kernel for a float32 CPU batch of one (and single-threaded 1x1x1
convs in channels_last), same numbers as nn.Conv3d; PatchConvTranspose3d: a batch-1 transposed
conv with kernel = stride as one matrix product, same numbers as nn.ConvTranspose3d."""

import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from uxbseg.models.convs import (
    OneDNNConv3d,
    PatchConvTranspose3d,
    onednn_conv3d,
    patch_conv_transposes,
)
from uxbseg.models.model import UXBFusionModel
from uxbseg.models.swap import swap_class

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"
)


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op threads set to ``n`` inside (None: left as they are)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _kernels(fn) -> set[str]:
    """The names of the aten operators ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding=1, bias=False),
        dict(kernel_size=2, stride=2, bias=True),
        dict(kernel_size=3, padding=2, dilation=2, bias=True),
    ],
)
def test_same_output_and_gradients_as_conv3d(channels_last, kw):
    torch.manual_seed(0)
    plain = nn.Conv3d(10, 12, **kw)
    fast = copy.deepcopy(plain)
    assert onednn_conv3d(fast) == 1 and type(fast) is OneDNNConv3d
    x = torch.randn(1, 10, 16, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        for m in (plain, fast):
            m.to(memory_format=torch.channels_last_3d)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((plain, fast), xs, strict=True)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for out in outs:
        out.square().mean().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-6)
    assert list(fast.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("shape", [(1, 12, 16, 32, 32), (1, 768, 1, 4, 4)])
def test_batch_one_takes_onednn_where_torch_would_not(shape):
    """N*C*D*H <= 20480, so torch itself runs slow_conv3d; ours oneDNN (768 channels: in
    channels_last only)."""
    torch.manual_seed(0)
    plain = nn.Conv3d(shape[1], 12, 3, padding=1)
    fast = copy.deepcopy(plain)
    onednn_conv3d(fast)
    x = torch.randn(*shape)
    if shape[1] > 12:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        for m in (plain, fast):
            m.to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        assert "aten::slow_conv3d_forward" in _kernels(lambda: plain(x))
        ran = _kernels(lambda: fast(x))
    assert "aten::mkldnn_convolution" in ran and "aten::slow_conv3d_forward" not in ran


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_single_threaded_pointwise_conv_takes_onednn_in_channels_last(batch, channels_last):
    """Single-threaded, torch runs a 1x1x1 conv unfolded at any size (N*C*D*H = 24*32*32 is
    above its batch-1 threshold); in channels_last ours takes oneDNN and keeps the layout, in
    the default layout (where the unfolded kernel was faster) torch's choice stands."""
    torch.manual_seed(0)
    plain = nn.Conv3d(24, 12, 1)
    fast = copy.deepcopy(plain)
    onednn_conv3d(fast)
    x = torch.randn(batch, 24, 32, 32, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        for m in (plain, fast):
            m.to(memory_format=torch.channels_last_3d)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    with _threads(1):
        assert "aten::slow_conv3d_forward" in _kernels(lambda: plain(x))
        ran = _kernels(lambda: fast(x))
        outs = [m(xi) for m, xi in zip((plain, fast), xs, strict=True)]
        for out in outs:
            out.square().mean().backward()
    assert ("aten::mkldnn_convolution" in ran) is channels_last
    assert ("aten::slow_conv3d_forward" in ran) is not channels_last
    assert outs[1].is_contiguous(memory_format=torch.channels_last_3d) is channels_last
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["batch 2", "float64", "autocast", "768 channels", "above torch's threshold", "unbatched"],
)
def test_other_inputs_go_through_conv3d_unchanged(case):
    """Another batch, dtype or autocast, a default-layout input with many channels (where
    torch's unfolded kernel was faster), one that torch sends to oneDNN itself
    (N*C*D*H = 12*32*64 > 20480), or an unbatched input takes nn.Conv3d's own path."""
    torch.manual_seed(0)
    c = {"768 channels": 768, "unbatched": 1}.get(case, 12)
    plain = nn.Conv3d(c, 12, 3, padding=1)
    fast = copy.deepcopy(plain)
    onednn_conv3d(fast)
    size = {"768 channels": (1, 4, 4), "above torch's threshold": (32, 64, 8)}
    x = torch.randn(2 if case == "batch 2" else 1, c, *size.get(case, (8, 16, 16)))
    if case == "unbatched":  # (C, D, H, W) with C = 1, which nn.Conv3d also takes
        x = x[0]
    if case == "float64":
        plain, fast, x = plain.double(), fast.double(), x.double()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=case == "autocast"):
        ref = plain(x)
        calls = []
        real = torch.mkldnn_convolution

        def spy(*args):
            calls.append(args[0].shape)
            return real(*args)

        torch.mkldnn_convolution = spy
        try:
            out = fast(x)
        finally:
            torch.mkldnn_convolution = real
    assert calls == []  # not called directly; conv3d chose (and autocast cast) as always
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("threads", [None, 1])
def test_model_batch_one_runs_no_unfolded_conv3d_and_same_logits(tiny_cfg, threads):
    """The tiny model at batch 1 (predict, evaluate): every 3D conv in oneDNN and every
    transposed one a matrix product, same logits; single-threaded too."""
    tiny_cfg.model.onednn_batch1 = False
    torch.manual_seed(0)
    plain = UXBFusionModel.from_config(tiny_cfg).eval()
    assert not any(type(m) is OneDNNConv3d for m in plain.modules())
    tiny_cfg.model.onednn_batch1 = True
    fast = UXBFusionModel.from_config(tiny_cfg).eval()
    fast.load_state_dict(plain.state_dict())
    assert sum(type(m) is OneDNNConv3d for m in fast.modules()) > 10
    c = len(tiny_cfg.grid.features)
    x = (torch.randn(1, 3, 64, 64), torch.randn(1, c, 32, 32, 64))
    slow = {"aten::slow_conv3d_forward", "aten::slow_conv_transpose3d"}
    with torch.inference_mode(), _threads(threads):
        assert slow <= _kernels(lambda: plain(*x))
        assert not slow & _kernels(lambda: fast(*x))
        a, b = plain(*x), fast(*x)
    torch.testing.assert_close(b["logits3d"], a["logits3d"], rtol=1e-4, atol=1e-5)


def test_dynamo_traces_it_without_a_graph_break():
    """Under torch.compile the conv is left to Inductor (nn.Conv3d's own forward)."""
    torch.manual_seed(0)
    fast = nn.Conv3d(12, 12, 3, padding=1)
    onednn_conv3d(fast)
    x = torch.randn(1, 12, 8, 16, 16)
    compiled = torch.compile(fast, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fast(x), rtol=1e-4, atol=1e-5)


def test_swap_class_counts_exact_matches_and_refuses_a_foreign_class():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.Sequential(nn.Conv3d(2, 2, 1)), nn.Conv2d(2, 2, 1))
    keys = list(net.state_dict())
    assert swap_class(net, nn.Conv3d, OneDNNConv3d) == 2
    assert [type(m).__name__ for m in net.modules()][1:] == [
        "OneDNNConv3d",
        "Sequential",
        "OneDNNConv3d",
        "Conv2d",
    ]
    assert swap_class(net, nn.Conv3d, OneDNNConv3d) == 0  # subclasses are not swapped again
    assert list(net.state_dict()) == keys
    with pytest.raises(TypeError, match="must subclass"):
        swap_class(net, nn.Conv2d, OneDNNConv3d)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", [(2, 2, 2), (2, 1, 3)])
def test_patch_conv_transpose_same_output_and_gradients(bias, kernel):
    """Kernel = stride at batch 1 in channels_last: one matrix product, channels_last out,
    the same values and gradients as nn.ConvTranspose3d."""
    torch.manual_seed(0)
    plain = nn.ConvTranspose3d(12, 10, kernel, stride=kernel, bias=bias)
    fast = copy.deepcopy(plain)
    assert patch_conv_transposes(fast) == 1 and type(fast) is PatchConvTranspose3d
    x = torch.randn(1, 12, 8, 16, 12).contiguous(memory_format=torch.channels_last_3d)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ran = _kernels(lambda: fast(x))
    assert "aten::slow_conv_transpose3d" not in ran and "aten::mm" in ran
    outs = [m(xi) for m, xi in zip((plain, fast), xs, strict=True)]
    assert outs[1].is_contiguous(memory_format=torch.channels_last_3d)
    assert not outs[1].is_contiguous()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for out in outs:
        out.square().mean().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4, atol=1e-7)
    for name, p in fast.named_parameters():
        ref = dict(plain.named_parameters())[name].grad
        torch.testing.assert_close(p.grad, ref, rtol=1e-4, atol=1e-7)
    assert list(fast.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize(
    "case",
    ["batch 2", "default layout", "float64", "autocast", "output_size", "overlapping kernel"],
)
def test_other_transposed_convs_go_through_torch_unchanged(case):
    """Another batch, layout or dtype, autocast, an output_size, or a kernel larger than its
    stride: nn.ConvTranspose3d's own forward, bit for bit."""
    torch.manual_seed(0)
    kw = (
        dict(kernel_size=3, stride=2)
        if case == "overlapping kernel"
        else dict(kernel_size=2, stride=2)
    )
    plain = nn.ConvTranspose3d(12, 10, **kw)
    fast = copy.deepcopy(plain)
    patch_conv_transposes(fast)
    x = torch.randn(2 if case == "batch 2" else 1, 12, 4, 8, 8)
    if case != "default layout":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if case == "float64":
        plain, fast, x = plain.double(), fast.double(), x.double()
    size = [8, 16, 16] if case == "output_size" else None
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=case == "autocast"):
        ref = plain(x, size)
        ran = _kernels(lambda: fast(x, size))
        out = fast(x, size)
    assert "aten::mm" not in ran and "aten::bmm" not in ran
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
