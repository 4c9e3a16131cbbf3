"""The kernel benchmark measures the sizes SwinUNETR really runs (MONAI's modules, hooked)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

from benchmarks.bench_kernels import (
    _attention_rows,
    _conv_row,
    _norm_row,
    attention_stages,
    decide_row,
    decoder_upsamplings,
    input_convs,
    main,
    norm_levels,
    upsample_row,
)


@pytest.mark.parametrize(
    ("grid", "window", "batch"), [((32, 64, 64), 4, 2), ((32, 64, 96), 10, 1), ((32, 32, 64), 7, 1)]
)
def test_shapes_are_swin_unetrs_own(grid, window, batch):
    net = SwinUNETR(in_channels=3, out_channels=2, feature_size=12, window_size=window)
    norms: set[tuple] = set()
    attention: list[tuple] = []
    upsampling: list[tuple] = []
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose3d):
            m.register_forward_hook(
                lambda mod, i, o: upsampling.append((mod.out_channels, tuple(i[0].shape)))
            )
        if isinstance(m, nn.InstanceNorm3d):
            m.register_forward_hook(lambda mod, i, o: norms.add(tuple(i[0].shape)))
        if isinstance(m, WindowAttention):
            m.register_forward_hook(
                lambda mod, i, o: attention.append(
                    (i[0].shape[0], i[0].shape[2], mod.num_heads, i[0].shape[1])
                )
            )
    with torch.no_grad():
        net(torch.rand(batch, 3, *grid))
    assert set(norm_levels(grid, 12, batch)) <= norms
    want = [(w, c, h, math.prod(s)) for w, c, h, s in attention_stages(grid, 12, window, batch)]
    assert attention[::2][:2] == want  # (windows, channels, heads, tokens); two blocks a stage
    assert [(o, shape) for _, o, shape in decoder_upsamplings(grid, 12, batch)] == upsampling


def test_rows_time_every_contender():
    norm = _norm_row((2, 12, 2, 4, 4), torch.device("cpu"), torch.float32, repeats=1)
    assert set(norm) == {"seed", "instance_norm_cl", "rows", "batch_norm", "picked"}
    assert all(t > 0 for t in norm.values())
    no_grad, training = _attention_rows(
        (4, 12, 3, (2, 2, 2)), 2, torch.device("cpu"), torch.float32, repeats=1
    )
    assert set(no_grad) == {"monai", "sdpa"} and set(training) == {"monai", "sdpa", "recompute"}
    convs = input_convs((4, 4, 8), 12, 3, 2)
    rows = [
        _conv_row(conv, shape, torch.device("cpu"), False, repeats=1) for _, conv, shape in convs
    ]
    assert all(set(r) == {"conv3d", "unfolded"} and min(r.values()) > 0 for r in rows)
    _, wide, shape = input_convs((4, 4, 8), 12, 5, 2)[0]  # 135 columns: not unfolded
    assert _conv_row(wide, shape, torch.device("cpu"), False, repeats=1) == {}
    up = upsample_row(6, (1, 12, 2, 4, 4), torch.device("cpu"), repeats=1)
    assert up["torch"] > 0 and up["patch"] > 0 and up["patch channels_last"]
    decide = decide_row((2, 3, 4, 8, 8), torch.device("cpu"), repeats=1)
    assert set(decide) == {"argmax", "first_max"} and min(decide.values()) > 0


def test_only_times_the_kernels_named(capsys):
    main(["--config", "tiny", "--batch", "1", "--repeats", "1", "--only", "classes"])
    printed = capsys.readouterr().out
    assert "argmax" in printed and "first_max" in printed
    for other in ("window attention", "instance norm", "convs on", "decoder upsampling"):
        assert other not in printed
