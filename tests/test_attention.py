"""The SDPA window attention against MONAI's own (materialised) window attention in training."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention

from uxbseg.models.attention import SDPAWindowAttention, sdpa_window_attention
from uxbseg.models.voxel_branch import VoxelBranch


def _pair(dim=24, heads=3, window=(2, 3, 4)):
    torch.manual_seed(0)
    ref = WindowAttention(dim, heads, window, qkv_bias=True)
    with torch.no_grad():  # a table of zeros (MONAI's init is a truncated normal) tests little
        ref.relative_position_bias_table.normal_(0.0, 1.0)
    got = copy.deepcopy(ref)
    assert sdpa_window_attention(got) == 1 and type(got) is SDPAWindowAttention
    return ref.train(), got.train()


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("shifted", [False, True])
def test_matches_monai_values_and_gradients_in_training(batch, shifted):
    ref, got = _pair()
    nw, n, c = 4, 2 * 3 * 4, 24
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch * nw, n, c, generator=g)
    mask = None
    if shifted:  # MONAI's shift mask: 0 within a region, -100 across regions
        regions = torch.randint(0, 3, (nw, n), generator=g)
        mask = torch.where(regions[:, :, None] == regions[:, None, :], 0.0, -100.0)
    grad_out = torch.randn(batch * nw, n, c, generator=g)
    outs, grads = [], []
    for mod in (ref, got):
        xi = x.clone().requires_grad_()
        out = mod(xi, mask)
        (out * grad_out).sum().backward()
        outs.append(out)
        grads.append((xi.grad, mod.relative_position_bias_table.grad, mod.qkv.weight.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads[1], grads[0], strict=True):
        assert theirs.abs().sum() > 0
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


@pytest.mark.parametrize(("setting", "cpu", "gpu"), [("auto", 0, 8), (False, 0, 0), (True, 8, 8)])
def test_training_attention_follows_the_device_when_auto(tiny_cfg, setting, cpu, gpu):
    """``model.use_flash_attention: auto`` (default): MONAI's attention for training on the CPU
    (faster there), SDPA once training starts on a GPU; the same weights either way."""
    from uxbseg.models import UXBFusionModel

    tiny_cfg.model.use_flash_attention = setting
    model = UXBFusionModel.from_config(tiny_cfg)
    keys = list(model.state_dict())

    def count() -> int:
        return sum(type(m) is SDPAWindowAttention for m in model.modules())

    model.fit_device(torch.device("cpu"))
    assert count() == cpu
    model.fit_device(torch.device("cuda"))  # a device object: the swap needs no GPU
    assert count() == gpu
    assert list(model.state_dict()) == keys
