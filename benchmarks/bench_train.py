"""Training step and forward pass: uxbseg's fast path vs the seed's formulation, same run.

The reference is the seed as written: batch 1 (SEED-FACTS), fp32, broadcast + concat fusion,
default memory layout. Then, on the same model: the fast fusion alone at batch 1; + channels_last_3d
weights and activations; + a larger batch (``--fast-batch``); on a GPU bf16 autocast and
``--compile``. Ratios are samples/s against the reference, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from uxbseg.config import load_config
from uxbseg.demo import packaged_config
from uxbseg.losses import FusionLoss
from uxbseg.models import UXBFusionModel


def _batch(cfg, b, device):
    d, h, w = cfg.grid.shape
    s = cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(b, 3, s, s, generator=g).to(device),
        "voxels": torch.rand(b, len(cfg.grid.features), d, h, w, generator=g).to(device),
        "labels3d": torch.randint(0, 3, (b, d, h, w), generator=g).to(device),
        "mask2d": torch.randint(0, 3, (b, h, w), generator=g).to(device),
    }


def measure(
    cfg,
    device,
    *,
    naive: bool,
    bf16: bool,
    batch: int,
    steps: int,
    channels_last: bool = False,
    compile_: bool = False,
):
    cfg.model.fusion_impl = "naive" if naive else "fast"
    cfg.model.channels_last = channels_last
    torch.manual_seed(0)
    model = UXBFusionModel.from_config(cfg).to(device)
    crit = FusionLoss().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    fwd = torch.compile(model) if compile_ else model
    data = _batch(cfg, batch, device)
    ctx = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if bf16
        else (lambda: torch.autocast(device.type, enabled=False))
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        with ctx():
            loss, _ = crit(fwd(data["image"], data["voxels"]), data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # warm-up (compilation happens here)
    sync()
    first = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    model.eval()
    ftimes = []
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            with ctx():
                fwd(data["image"], data["voxels"])
            sync()
            ftimes.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.median(ftimes), peak, first


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=["tiny", "seed"], default="tiny")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--fast-batch", type=int, nargs="+", default=[2], help="batch sizes for the fast path"
    )
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(packaged_config(a.config), ["model.pretrained_2d=null"])
    gpu = device.type == "cuda"
    fast = dict(naive=False, bf16=gpu)
    prec = "bf16" if gpu else "fp32"
    variants = [
        ("seed as written (fp32, broadcast fusion)", 1, dict(naive=True, bf16=False)),
        (f"{prec} + fast fusion", 1, fast),
        (f"{prec} + fast fusion + channels_last", 1, {**fast, "channels_last": True}),
    ]
    variants += [
        (f"{prec} + fast fusion + channels_last", b, {**fast, "channels_last": True})
        for b in a.fast_batch
        if b != 1
    ]
    if a.compile:
        compiled = {**fast, "channels_last": True, "compile_": True}
        batch = max(a.fast_batch)
        variants.append((f"{prec} + fast fusion + channels_last + compile", batch, compiled))
    name = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"{a.config} config, grid {cfg.grid.shape}, {name}, median of {a.steps} steps")
    base = None
    for label, batch, kw in variants:
        try:
            step, fwd, peak, first = measure(cfg, device, batch=batch, steps=a.steps, **kw)
        except torch.OutOfMemoryError:
            print(f"  {label:<42} batch {batch}  out of memory on this device")
            torch.cuda.empty_cache()
            continue
        rate, frate = batch / step, batch / fwd
        base = base or (rate, frate)
        print(
            f"  {label:<42} batch {batch}  step {step:7.3f} s ({rate:6.2f} samples/s, "
            f"{rate / base[0]:4.1f}x)  forward {fwd:7.3f} s ({frate / base[1]:4.1f}x)  "
            f"peak {peak:5.1f} GiB  first step {first:6.1f} s"
        )


if __name__ == "__main__":
    main()
