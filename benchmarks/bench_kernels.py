"""SwinUNETR's instance norms and window attention at a config's sizes: each kernel uxbseg picks
against the seed's (MONAI's own modules in the default layout), same run, same inputs.

Instance norm, forward + backward (a training step's use), per level of the network: the seed's
``instance_norm`` on a contiguous tensor; the same on a channels_last tensor (what a channels_last
network pays without uxbseg's norm: layout copies, contiguous output); uxbseg's two channels_last
kernels (row sums; per-sample ``batch_norm``) and the one ``ChannelsLastInstanceNorm3d`` picks.
These are the norms alone: channels_last pays in the convolutions around them (``benchmarks
train``). Window attention of the first two stages: MONAI's materialised scores against SDPA,
without gradients (validation, evaluate, predict: ``model.sdpa_inference``) and with them
(training: ``model.use_flash_attention``). The convs on the voxel features (few input channels),
forward + weight gradient: torch's ``conv3d`` (cuDNN on a GPU) against the unfolded matrix product
(``model.unfold_convs``). The classes of a batch of windows' probabilities (predict, evaluate,
validation): torch's ``argmax`` over the class dimension (the seed's) against
``uxbseg.decision.first_max``. The decoder's 2x2x2 transposed convs without gradients (evaluate,
predict), channels_last: ``nn.ConvTranspose3d`` against ``PatchConvTranspose3d``, which on the CPU
at batch 1 is one matrix product into a channels_last output (on a GPU, or above torch's own
threshold, both are torch's; the layout of each output is printed, as the decoder's ``cat`` and
the convs after it follow it). Ratios are the seed's time over each contender's; medians of
interleaved rounds.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn
from torch.nn import functional as F

from uxbseg.config import load_config, packaged_config
from uxbseg.decision import first_max
from uxbseg.models.attention import RecomputedBiasWindowAttention, SDPAWindowAttention
from uxbseg.models.convs import PatchConvTranspose3d, unfold_small_convs
from uxbseg.models.norms import ChannelsLastInstanceNorm3d, _InstanceNormCL, _per_sample_batch_norm

from .common import sync, timeit_interleaved

CL = torch.channels_last_3d


def _fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor, device: torch.device):
    def run() -> None:
        x.grad = None
        fn(x).backward(grad)
        sync(device)

    return run


def norm_levels(grid: tuple[int, int, int], feature_size: int, batch: int) -> list[tuple]:
    """(B, C, D, H, W) of the encoder's norms: feature_size channels at full and half resolution,
    then channels doubling as the resolution halves (SwinUNETR's UnetResBlocks)."""
    d, h, w = grid
    shapes = [(batch, feature_size, d, h, w)]
    for level in range(1, 5):
        s = 2**level
        if d // s < 1:
            break
        shapes.append((batch, feature_size * 2 ** (level - 1), d // s, h // s, w // s))
    return shapes


def _norm_row(shape: tuple, device, dtype, repeats: int) -> dict[str, float]:
    c = shape[1]
    torch.manual_seed(0)  # drawn on the device: at the seed's batch 4 a tensor is 1.6 GiB
    x = torch.randn(shape, device=device, dtype=dtype)
    grad = torch.randn(shape, device=device, dtype=dtype)
    module = ChannelsLastInstanceNorm3d(c, affine=True).to(device)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    w, b = module.weight.detach(), module.bias.detach()
    # leaves of their own (a channels_last copy of a tensor that records gradients would add a
    # copy back to the default layout to every channels_last contender's backward)
    xc = x.clone().requires_grad_()
    xl = x.contiguous(memory_format=CL).requires_grad_()
    gl = grad.contiguous(memory_format=CL)
    assert xc.is_leaf and xl.is_leaf and xl.is_contiguous(memory_format=CL)
    return timeit_interleaved(
        {
            "seed": _fwd_bwd(lambda t: F.instance_norm(t, weight=w, bias=b), xc, grad, device),
            "instance_norm_cl": _fwd_bwd(
                lambda t: F.instance_norm(t, weight=w, bias=b), xl, gl, device
            ),
            "rows": _fwd_bwd(lambda t: _InstanceNormCL.apply(t, w, b, 1e-5), xl, gl, device),
            "batch_norm": _fwd_bwd(lambda t: _per_sample_batch_norm(t, w, b, 1e-5), xl, gl, device),
            "picked": _fwd_bwd(module, xl, gl, device),
        },
        repeats,
    )


def bench_norms(shapes, device, dtype, repeats: int) -> None:
    print("instance norm, forward + backward (ms; ratio = seed / contender):")
    for shape in shapes:
        t = _norm_row(shape, device, dtype, repeats)
        cells = "  ".join(
            f"{k} {v * 1e3:8.1f} ({t['seed'] / v:4.2f}x)" for k, v in t.items() if k != "seed"
        )
        print(f"  {shape!s:<24} seed {t['seed'] * 1e3:8.1f}  {cells}")


def _attention_rows(stage: tuple, batch: int, device, dtype, repeats: int):
    windows, dim, heads, window = stage
    torch.manual_seed(0)
    monai = WindowAttention(dim, heads, window, qkv_bias=True).to(device)
    sdpa = WindowAttention(dim, heads, window, qkv_bias=True).to(device)
    with torch.no_grad():
        monai.relative_position_bias_table.normal_()
    sdpa.load_state_dict(monai.state_dict())
    sdpa.__class__ = SDPAWindowAttention
    recompute = copy.deepcopy(sdpa)
    recompute.__class__ = RecomputedBiasWindowAttention
    n = math.prod(window)
    x = torch.randn(windows, n, dim, device=device)
    mask = torch.zeros(windows // batch, n, n, device=device)  # one per window of a sample
    mask[:, :, : n // 3] = -100.0
    bf16 = dtype == torch.bfloat16

    def infer(m):
        def run() -> None:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                m(x, mask)
            sync(device)

        return run

    def train(m):
        def run() -> None:
            m.zero_grad(set_to_none=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = m(x, mask)
            out.float().sum().backward()
            sync(device)

        return run

    no_grad = timeit_interleaved({"monai": infer(monai), "sdpa": infer(sdpa)}, repeats)
    training = timeit_interleaved(
        {"monai": train(monai), "sdpa": train(sdpa), "recompute": train(recompute)}, repeats
    )
    return no_grad, training


def bench_attention(stages, batch: int, device, dtype, repeats: int) -> None:
    print(
        "window attention, shifted windows (ms; ratio = MONAI / SDPA; in training also SDPA "
        "with the bias's gradient recomputed, model.sdpa_bias_grad: recompute):"
    )
    for stage in stages:
        windows, dim, heads, window = stage
        rows = _attention_rows(stage, batch, device, dtype, repeats)
        cells = "  ".join(
            f"{what} {t['monai'] * 1e3:8.1f} -> "
            + " | ".join(
                f"{v * 1e3:8.1f} ({t['monai'] / v:4.2f}x)" for k, v in t.items() if k != "monai"
            )
            for what, t in zip(("no gradients", "training"), rows, strict=True)
        )
        tokens = math.prod(window)
        print(f"  {windows} windows x {tokens} tokens, {dim} ch, {heads} heads:  {cells}")


def attention_stages(grid, feature_size: int, window: int, batch: int) -> list[tuple]:
    """(windows, channels, heads, window shape) of the first two Swin stages (patch size 2, heads
    3 and 6); a side no longer than the window is one window, as in MONAI's get_window_size."""
    out = []
    for stage, heads in ((1, 3), (2, 6)):
        tokens = [max(s // 2**stage, 1) for s in grid]
        shape = tuple(min(window, t) for t in tokens)
        windows = batch * math.prod(-(-t // w) for t, w in zip(tokens, shape, strict=True))
        out.append((windows, feature_size * 2 ** (stage - 1), heads, shape))
    return out


def input_convs(grid, feature_size: int, in_channels: int, batch: int) -> list[tuple]:
    """(name, conv, input shape) of SwinUNETR's convs that read the voxel features."""
    shape = (batch, in_channels, *grid)
    c, f = in_channels, feature_size
    return [
        ("encoder1 conv 3x3x3", nn.Conv3d(c, f, 3, padding=1, bias=False), shape),
        ("encoder1 residual 1x1x1", nn.Conv3d(c, f, 1, bias=False), shape),
        ("patch embedding 2x2x2 / 2", nn.Conv3d(c, f, 2, stride=2), shape),
    ]


def _conv_row(conv: nn.Conv3d, shape: tuple, device, bf16: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.rand(shape, device=device).contiguous(memory_format=CL)  # no gradient: an input
    plain = conv.to(device).to(memory_format=CL)
    fast = copy.deepcopy(plain)
    if not unfold_small_convs(fast):
        return {}  # too many input columns: the conv stays cuDNN's
    fast.devices = (device.type,)

    def run(m):
        def step() -> None:
            m.zero_grad(set_to_none=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = m(x)
            out.float().sum().backward()
            sync(device)

        return step

    return timeit_interleaved({"conv3d": run(plain), "unfolded": run(fast)}, repeats)


def bench_convs(convs, device, dtype, repeats: int) -> None:
    print("convs on the voxel features, forward + weight gradient (ms; ratio = conv3d / unfolded):")
    for name, conv, shape in convs:
        t = _conv_row(conv, shape, device, dtype == torch.bfloat16, repeats)
        if not t:
            print(f"  {name:<28} {shape!s:<24} not unfolded (too many input columns)")
            continue
        print(
            f"  {name:<28} {shape!s:<24} conv3d {t['conv3d'] * 1e3:8.2f}  unfolded "
            f"{t['unfolded'] * 1e3:8.2f} ({t['conv3d'] / t['unfolded']:5.2f}x)"
        )


def decoder_upsamplings(grid, feature_size: int, batch: int) -> list[tuple[str, int, tuple]]:
    """(name, output channels, input shape) of SwinUNETR's decoder transposed convs: decoder5
    takes 16 x feature_size channels at 1/32 of the grid to 8 x at 1/16, ..., decoder1
    feature_size at 1/2 to feature_size at full resolution."""
    d, h, w = grid
    f = feature_size
    levels = [("decoder5", 16 * f, 8 * f, 32), ("decoder4", 8 * f, 4 * f, 16)]
    levels += [("decoder3", 4 * f, 2 * f, 8), ("decoder2", 2 * f, f, 4), ("decoder1", f, f, 2)]
    return [(n, o, (batch, c, d // s, h // s, w // s)) for n, c, o, s in levels]


def upsample_row(out_channels: int, shape: tuple, device, repeats: int) -> dict:
    """Seconds of a channels_last transposed conv without gradients, torch's and
    PatchConvTranspose3d's (checked equal first), and whether each output is channels_last."""
    torch.manual_seed(0)
    plain = nn.ConvTranspose3d(shape[1], out_channels, 2, stride=2).to(device)
    plain = plain.to(memory_format=CL)
    patch = copy.deepcopy(plain)
    patch.__class__ = PatchConvTranspose3d
    x = torch.randn(shape, device=device).contiguous(memory_format=CL)
    with torch.inference_mode():
        outs = plain(x), patch(x)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)

    def run(m):
        def step() -> None:
            with torch.inference_mode():
                m(x)
            sync(device)

        return step

    t = timeit_interleaved({"torch": run(plain), "patch": run(patch)}, repeats)
    layouts = {k: o.is_contiguous(memory_format=CL) and not o.is_contiguous() for k, o in
               zip(("torch", "patch"), outs, strict=True)}  # fmt: skip
    return t | {f"{k} channels_last": v for k, v in layouts.items()}


def bench_upsampling(levels, device, repeats: int) -> None:
    print("decoder upsampling, 2x2x2 transposed convs, no gradients (ms; ratio = torch / patch):")
    for name, out_channels, shape in levels:
        t = upsample_row(out_channels, shape, device, repeats)
        lay = {k: "channels_last" if t[f"{k} channels_last"] else "default" for k in ("torch",
               "patch")}  # fmt: skip
        print(
            f"  {name} {shape!s:<24} torch {t['torch'] * 1e3:8.2f} ({lay['torch']})  patch "
            f"{t['patch'] * 1e3:8.2f} ({lay['patch']}, {t['torch'] / t['patch']:5.2f}x)"
        )


def decide_row(shape: tuple, device, repeats: int) -> dict[str, float]:
    """Seconds for the classes of probabilities of ``shape`` (B, K, D, H, W): torch's argmax
    over K, and :func:`~uxbseg.decision.first_max`; each checked against the other first."""
    probs = torch.rand(shape, device=device).softmax(1)
    if not torch.equal(probs.argmax(1), first_max(probs, 1)):
        raise AssertionError("first_max disagrees with argmax")

    def timed(fn):
        def run() -> None:
            fn(probs, 1)
            sync(device)

        return run

    return timeit_interleaved({"argmax": timed(torch.argmax), "first_max": timed(first_max)},
                              repeats)  # fmt: skip


def bench_decide(shape: tuple, device, repeats: int) -> None:
    t = decide_row(shape, device, repeats)
    print(
        f"classes of probabilities {shape!s}: argmax {t['argmax'] * 1e3:8.2f} ms, first_max "
        f"{t['first_max'] * 1e3:8.2f} ms ({t['argmax'] / t['first_max']:5.2f}x)"
    )


_SECTIONS = ("convs", "norms", "attention", "classes", "upsampling")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=["tiny", "seed"], default="tiny")
    p.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--only",
        nargs="+",
        choices=_SECTIONS,
        help="time only these kernels (default: all)",
    )
    a = p.parse_args(argv)
    only = set(a.only or _SECTIONS)
    cfg = load_config(packaged_config(a.config), ["model.pretrained_2d=null"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = a.batch or cfg.data.batch_size
    grid, f = tuple(cfg.grid.shape), cfg.model.feature_size
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{a.config} config, grid {grid}, feature size {f}, batch {batch}, {dev}, {dtype}")
    c = len(cfg.grid.features)
    if "convs" in only:
        bench_convs(input_convs(grid, f, c, batch), device, dtype, a.repeats)
    if "norms" in only:
        bench_norms(norm_levels(grid, f, batch), device, dtype, a.repeats)
    if "attention" in only:
        stages = attention_stages(grid, f, cfg.model.window_size, batch)
        bench_attention(stages, batch, device, dtype, a.repeats)
    if "classes" in only:
        bench_decide((batch, 3, *grid), device, a.repeats)
    if "upsampling" in only:  # at predict's batch
        bench_upsampling(decoder_upsamplings(grid, f, 1), device, a.repeats)


if __name__ == "__main__":
    main()
