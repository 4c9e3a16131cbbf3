"""The SDPA window attention against MONAI's own (materialised) window attention in training."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention

from uxbseg.models import attention
from uxbseg.models.attention import (
    RecomputedBiasWindowAttention,
    SDPAWindowAttention,
    attention_bias_grad,
    sdpa_window_attention,
)
from uxbseg.models.voxel_branch import VoxelBranch


def _pair(dim=24, heads=3, window=(2, 3, 4), recompute=False):
    torch.manual_seed(0)
    ref = WindowAttention(dim, heads, window, qkv_bias=True)
    with torch.no_grad():  # a table of zeros (MONAI's init is a truncated normal) tests little
        ref.relative_position_bias_table.normal_(0.0, 1.0)
    got = copy.deepcopy(ref)
    assert sdpa_window_attention(got, recompute_bias_grad=recompute) == 1
    assert type(got) is (RecomputedBiasWindowAttention if recompute else SDPAWindowAttention)
    return ref.train(), got.train()


def _inputs(batch, shifted, nw=4, n=24, c=24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch * nw, n, c, generator=g)
    mask = None
    if shifted:  # MONAI's shift mask: 0 within a region, -100 across regions
        regions = torch.randint(0, 3, (nw, n), generator=g)
        mask = torch.where(regions[:, :, None] == regions[:, None, :], 0.0, -100.0)
    return x, mask, torch.randn(batch * nw, n, c, generator=g)


def _train_once(mod, x, mask, grad_out, bf16=False):
    """The output, and the gradients of the input, the bias table and the qkv weights."""
    mod.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = mod(xi, mask)
    (out.float() * grad_out).sum().backward()
    return out.detach().float(), (
        xi.grad,
        mod.relative_position_bias_table.grad,
        mod.qkv.weight.grad,
    )


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("shifted", [False, True])
def test_matches_monai_values_and_gradients_in_training(batch, shifted, recompute):
    ref, got = _pair(recompute=recompute)
    x, mask, grad_out = _inputs(batch, shifted)
    out_ref, grads_ref = _train_once(ref, x, mask, grad_out)
    out, grads = _train_once(got, x, mask, grad_out)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, grads_ref, strict=True):
        assert theirs.abs().sum() > 0
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_bias_grad_is_recomputed_beside_sdpa_given_a_mask_without_one(monkeypatch):
    """``model.sdpa_bias_grad: recompute``: SDPA's mask needs no gradient (so a GPU may take its
    flash kernels), the bias table still gets its gradient, from attention_bias_grad; chunks of
    windows of any size sum to the same gradient."""
    _, got = _pair(recompute=True)
    x, mask, grad_out = _inputs(2, True)
    seen, chunks = [], []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    real_matmul = torch.matmul

    def spy(*args, **kwargs):
        seen.append(kwargs["attn_mask"].requires_grad)
        return real_sdpa(*args, **kwargs)

    def matmul(a, b):
        chunks.append(a.shape[0])
        return real_matmul(a, b)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    _, (_, whole, _) = _train_once(got, x, mask, grad_out)
    assert seen == [False] and got.relative_position_bias_table.grad.abs().sum() > 0
    whole = whole.clone()
    # 1 chunk of 2 samples above; now one sample's 4 x 3 heads of 24 x 24 scores a chunk
    monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", 12 * 24 * 24)
    monkeypatch.setattr(torch, "matmul", matmul)
    _, (_, chunked, _) = _train_once(got, x, mask, grad_out)
    assert chunks == [1, 1, 1, 1]  # scores and their gradient, for each of the 2 chunks
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    # traced by torch.compile: chunks 4x as large (Inductor stores only the two products)
    chunks.clear()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    _train_once(got, x, mask, grad_out)
    assert chunks == [2, 2]


def test_recomputed_bias_grad_under_bf16_autocast_is_the_kernels():
    """Under bf16 autocast (a GPU's training) the recomputed path agrees with SDPA's own
    gradients as closely as both agree with float32 MONAI (the bf16 band)."""
    ref, kernel = _pair()
    _, recompute = _pair(recompute=True)
    x, mask, grad_out = _inputs(2, True)
    out32, grads32 = _train_once(ref, x, mask, grad_out)
    out_k, grads_k = _train_once(kernel, x, mask, grad_out, bf16=True)
    out_r, grads_r = _train_once(recompute, x, mask, grad_out, bf16=True)
    # (on the CPU the mask's gradient sends SDPA to its math kernel, the mask without one to its
    # flash kernel: the outputs agree to bf16 too, not bit for bit)
    for r, k, f in zip((out_r, *grads_r), (out_k, *grads_k), (out32, *grads32), strict=True):
        band = float((k - f).norm() / f.norm())
        assert 0 < band < 2e-2
        assert float((r - f).norm() / f.norm()) < 2 * band


def test_attention_bias_grad_checks_the_masks_shape():
    q = torch.randn(2, 3, 5, 4)
    with pytest.raises(ValueError, match=r"\(1, 3, 5, 5\)"):
        attention_bias_grad(q, q, q, q, q, torch.zeros(2, 3, 5, 5), 0.5)


def test_dropout_keeps_the_kernels_bias_gradient(monkeypatch):
    """Attention dropout's draws cannot be recomputed: the mask keeps its gradient into SDPA."""
    _, got = _pair(recompute=True)
    got.attn_drop.p = 0.1
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["attn_mask"].requires_grad)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    x, mask, grad_out = _inputs(1, False)
    _train_once(got, x, mask, grad_out)
    assert seen == [True] and got.relative_position_bias_table.grad.abs().sum() > 0


@pytest.mark.slow
def test_recomputed_bias_grad_compiles_as_one_graph():
    """Dynamo traces the recomputed path, its backward included, without a graph break (the
    compiled training step on a GPU); Inductor's gradients equal eager's."""
    ref, got = _pair(recompute=True)
    x, mask, grad_out = _inputs(2, True)
    eager, grads_eager = _train_once(ref, x, mask, grad_out)
    compiled = torch.compile(got, fullgraph=True)
    out, grads = _train_once(compiled, x, mask, grad_out)
    grads = (grads[0], got.relative_position_bias_table.grad, got.qkv.weight.grad)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_swinunetr_swap_keeps_keys_and_outputs():
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3, window_size=4)
    keys = list(net.state_dict())
    x = torch.rand(2, 1, 32, 32, 64)
    before = net(x)
    swapped = sdpa_window_attention(net)
    after = net(x)
    assert swapped == sum(isinstance(m, WindowAttention) for m in net.modules()) == 8
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_voxel_branch_swaps_only_when_asked():
    def count(branch):
        return sum(type(m) is SDPAWindowAttention for m in branch.modules())

    kw = dict(in_channels=1, out_channels=4, feature_size=12, grid_shape=(32, 32, 64))
    assert count(VoxelBranch(**kw)) == 0
    assert count(VoxelBranch(**kw, use_flash_attention=True)) == 8


def test_voxel_branch_with_the_recomputed_bias_grad_learns_the_same():
    """SwinUNETR's every block (shifted and not, two stages of windows and heads) with the bias's
    gradient recomputed: every parameter's gradient equals the kernel path's. In float64: in
    float32 the two paths round differently (on the CPU SDPA's math kernel against its flash
    kernel), and against float64 a norm weight's gradient was off by up to 7e-3 of its norm in
    either path alike (measured), too loose a tolerance to test with."""
    kw = dict(in_channels=1, out_channels=4, feature_size=12, grid_shape=(32, 32, 64))
    torch.manual_seed(0)
    kernel = VoxelBranch(**kw, use_flash_attention=True).double()
    with torch.no_grad():
        for m in kernel.modules():
            if isinstance(m, WindowAttention):
                m.relative_position_bias_table.normal_(0.0, 1.0)
    recompute = VoxelBranch(**kw, use_flash_attention=True, recompute_bias_grad=True).double()
    recompute.load_state_dict(kernel.state_dict())
    assert sum(type(m) is RecomputedBiasWindowAttention for m in recompute.modules()) == 8
    x = torch.rand(2, 1, 32, 32, 64, dtype=torch.float64)
    weights = torch.linspace(-1, 1, 4, dtype=torch.float64).view(1, 4, 1, 1, 1)
    for branch in (kernel, recompute):
        (branch(x) * weights).sum().backward()
    for (name, mine), theirs in zip(recompute.named_parameters(), kernel.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_sdpa_inference_same_output_and_only_without_gradients(monkeypatch):
    """``sdpa_inference`` (on by default): SDPA when no gradient is recorded, MONAI's materialised
    scores in training (the CPU's fused kernel cannot return the bias's gradient); same output."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    kw = dict(in_channels=1, out_channels=4, feature_size=12, grid_shape=(32, 32, 64))
    torch.manual_seed(0)
    plain = VoxelBranch(**kw, sdpa_inference=False).eval()
    quick = VoxelBranch(**kw).eval()
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, WindowAttention):
                m.relative_position_bias_table.normal_(0.0, 1.0)
    quick.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 32, 32, 64)
    with torch.no_grad():
        ref = plain(x)
        assert not calls
        got = quick(x)
    assert len(calls) == 8  # every window attention block
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    quick(x).sum().backward()  # gradients recorded: MONAI's path, which returns them all
    assert len(calls) == 8
    assert all(p.grad is not None for p in quick.parameters() if p.requires_grad)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shifted", [False, True])
def test_mask_is_aligned_and_broadcast_over_the_batch(monkeypatch, shifted, batch):
    """CUDA's fused SDPA kernels take a mask with unit last stride and rows aligned to 16
    elements (else torch pads a copy, or falls back to the math kernel); the mask is a view
    broadcast over the batch, never one copy per window of the batch. The real SDPA runs, its
    arguments are recorded."""
    _, got = _pair()
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((args[0].shape, kwargs["attn_mask"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    mask = torch.where(torch.rand(4, 24, 24) > 0.5, 0.0, -100.0) if shifted else None
    got(torch.randn(4 * batch, 24, 24), mask)
    ((q_shape, attn_mask),) = seen
    assert attn_mask.stride(-1) == 1 and attn_mask.stride(-2) == 32  # 24 padded to 32
    assert batch == 1 or attn_mask.stride(0) == 0  # broadcast over the batch
    # shifted: the 4 windows of a sample as 4 x 3 heads; unshifted: windows as the batch
    assert q_shape == ((batch, 12, 24, 8) if shifted else (4 * batch, 3, 24, 8))
    assert attn_mask.shape == (q_shape[0], q_shape[1], 24, 24)


@pytest.mark.parametrize("bias_grad", ["kernel", "recompute"])
@pytest.mark.parametrize(("setting", "cpu", "gpu"), [("auto", 0, 8), (False, 0, 0), (True, 8, 8)])
def test_training_attention_follows_the_device_when_auto(tiny_cfg, setting, cpu, gpu, bias_grad):
    """``model.use_flash_attention: auto`` (default): MONAI's attention for training on the CPU
    (faster there), SDPA once training starts on a GPU; the same weights either way.
    ``model.sdpa_bias_grad`` picks which SDPA attention."""
    from uxbseg.models import UXBFusionModel

    tiny_cfg.model.use_flash_attention = setting
    tiny_cfg.model.sdpa_bias_grad = bias_grad
    model = UXBFusionModel.from_config(tiny_cfg)
    keys = list(model.state_dict())
    kind = RecomputedBiasWindowAttention if bias_grad == "recompute" else SDPAWindowAttention

    def count() -> int:
        return sum(type(m) is kind for m in model.modules())

    model.fit_device(torch.device("cpu"))
    assert count() == cpu
    model.fit_device(torch.device("cuda"))  # a device object: the swap needs no GPU
    assert count() == gpu
    assert list(model.state_dict()) == keys
