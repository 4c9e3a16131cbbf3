"""The channels_last instance norm against torch's ``instance_norm``: values, gradients, layout,
through both of its kernels (the row sums for few channels, per-sample ``batch_norm`` for many) and
the formulation ``torch.compile`` traces (run eagerly here)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn
from torch.nn import functional as F

from uxbseg.models.norms import ChannelsLastInstanceNorm3d, channels_last_instance_norms

CL = torch.channels_last_3d
PATHS = {"rows": 10**9, "batch_norm": 0, "traced": 0}  # native_min_channels forcing each kernel


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch) -> str:
    """Each way the norm computes; ``traced``: what Dynamo traces (as if compiling)."""
    if request.param == "traced":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


def _norm(channels: int, path: str, affine: bool = False) -> ChannelsLastInstanceNorm3d:
    norm = ChannelsLastInstanceNorm3d(channels, affine=affine)
    norm.native_min_channels = PATHS[path]
    return norm


def _input(shape=(2, 12, 4, 6, 8), offset=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + offset
    return x.contiguous(memory_format=CL)


@pytest.mark.parametrize("affine", [False, True])
def test_matches_instance_norm_values_and_gradients(affine, path):
    x = _input()
    norm = _norm(12, path, affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    ref_x = x.clone().requires_grad_()
    got_x = x.clone().requires_grad_()
    ref = F.instance_norm(ref_x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * grad).sum().backward()
    ref_params = [p.grad.clone() for p in norm.parameters()]
    for p in norm.parameters():
        p.grad = None
    got = norm(got_x)
    (got * grad).sum().backward()

    assert got.is_contiguous(memory_format=CL) and not got.is_contiguous()
    assert got_x.grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_x.grad, ref_x.grad, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip([p.grad for p in norm.parameters()], ref_params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_gradcheck_in_double(path):
    x = _input((2, 3, 2, 3, 4), dtype=torch.float64).requires_grad_()
    norm = _norm(3, path, affine=True).double()
    assert torch.autograd.gradcheck(norm, (x,))


def test_large_offset_keeps_precision(path):
    """Variance about the mean (two passes): an offset 1000x the spread costs no accuracy."""
    x = _input(offset=3000.0)
    got = _norm(12, path)(x)
    ref = F.instance_norm(x.contiguous())
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize(("channels", "kernel"), [(12, "InstanceNormCL"), (48, "BatchNorm")])
def test_channel_count_picks_the_kernel_on_the_cpu(channels, kernel):
    x = _input((2, channels, 2, 3, 4)).requires_grad_()
    out = ChannelsLastInstanceNorm3d(channels)(x)
    node = out.grad_fn if kernel == "InstanceNormCL" else out.grad_fn.next_functions[0][0]
    assert kernel in type(node).__name__
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, F.instance_norm(x.detach().contiguous()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("grad_layout", [torch.contiguous_format, CL])
def test_other_layouts_are_normalised_with_the_right_gradient(batch, grad_layout):
    """A default-layout input (what a 1x1x1 conv in torch's unfolded kernel returns inside a
    channels_last network) keeps its layout, and its gradient is right whatever the layout of
    the gradient that reaches it: at batch 1 with a channels_last one, torch's instance_norm
    itself is wrong (torch 2.13 CPU), and this case is what such a network runs."""
    x = _input((batch, 12, 4, 6, 8)).contiguous().requires_grad_()
    norm = _norm(12, "rows", affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out = norm(x)
    out.backward(grad.contiguous(memory_format=grad_layout))
    assert out.is_contiguous()

    ref_x = x.detach().double().requires_grad_()
    w, b = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    ref = F.instance_norm(ref_x, weight=w, bias=b, eps=norm.eps)
    ref.backward(grad.double())
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, ref_x.grad.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad, w.grad.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.bias.grad, b.grad.float(), rtol=1e-4, atol=1e-4)


def test_swap_keeps_parameters_and_keys_and_outputs():
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=2, out_channels=3, feature_size=12, spatial_dims=3, window_size=4)
    net = net.to(memory_format=CL).eval()
    keys = list(net.state_dict())
    x = torch.rand(1, 2, 32, 32, 64).contiguous(memory_format=CL)
    with torch.no_grad():
        before = net(x)
        swapped = channels_last_instance_norms(net)
        after = net(x)
    assert swapped == sum(isinstance(m, nn.InstanceNorm3d) for m in net.modules()) > 10
    assert all(type(m) is not nn.InstanceNorm3d for m in net.modules())
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_bfloat16_input_is_normalised_in_float32(path):
    """Under autocast a conv hands the norm bfloat16: statistics in float32, output in bfloat16,
    as close to the float32 norm as bfloat16 rounding allows even with a large offset."""
    x = _input(offset=200.0)
    norm = _norm(12, path, affine=True)
    xb = x.bfloat16().contiguous(memory_format=CL).requires_grad_()
    got = norm(xb)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
    ref_x = xb.detach().float().requires_grad_()
    ref = F.instance_norm(ref_x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    torch.testing.assert_close(got.float(), ref, rtol=0, atol=2e-2)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (got.float() * grad).sum().backward()
    (ref * grad).sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    rel = (xb.grad.float() - ref_x.grad).norm() / ref_x.grad.norm()
    assert rel < 2e-2


def test_under_compile_the_norm_is_elementwise_ops(monkeypatch):
    """What Dynamo traces is ``var_mean`` and arithmetic, no custom kernel, no split and cat."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = _input().requires_grad_()
    out = _norm(12, "batch_norm", affine=True)(x)
    names = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None:
            names.add(type(node).__name__)
            stack += [n for n, _ in node.next_functions]
    assert "VarMeanBackward0" in names
    assert not any("Norm" in n or "Cat" in n for n in names)
