"""Training step and forward pass: uxbseg's fast path vs the seed's formulation, same run.

The reference is the seed as written: batch 1 (SEED-FACTS), fp32, broadcast + concat fusion,
default memory layout. Then, on the same model: the fast fusion alone at batch 1; + channels_last_3d
weights and activations; on a GPU + MONAI's SDPA attention (``use_flash_attention``) and cuDNN
autotuning; + a larger batch (``--fast-batch``), + gradient checkpointing (``--checkpoint``); on a
GPU bf16 autocast and ``--compile`` (the branches compiled as training does). Every fast variant
steps with the fused AdamW that training uses; the reference with torch's default AdamW. Ratios are
samples/s against the reference, measured in the same run. ``--check`` first compares the fast
path's logits with the plain fp32 path's on the same weights and input.
"""

from __future__ import annotations

import argparse
import gc
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
    flash: bool = False,
    checkpoint: bool = False,
    compile_: bool = False,
):
    cfg.model.fusion_impl = "naive" if naive else "fast"
    cfg.model.channels_last = channels_last
    cfg.model.use_flash_attention = flash
    cfg.model.use_checkpoint = checkpoint
    # cuDNN autotuning goes with the fast path; the seed as written leaves torch's default (off)
    torch.backends.cudnn.benchmark = not naive
    torch.manual_seed(0)
    model = UXBFusionModel.from_config(cfg).to(device)
    crit = FusionLoss().to(device)
    # the fast path steps with the fused AdamW that training uses (optim.fused); the seed, torch's
    # default (a loop over the parameters on the CPU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=None if naive else True)
    if compile_:
        model.compile_branches()
    fwd = model
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
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            with ctx():
                fwd(data["image"], data["voxels"])
            sync()
            ftimes.append(time.perf_counter() - t0)
    fpeak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), statistics.median(ftimes), peak, fpeak, first


def agreement(cfg, device, fast: dict) -> float:
    """Relative L2 error of the fast path's 3D logits against the plain fp32 path, same weights."""
    cfg.model.fusion_impl, cfg.model.channels_last = "naive", False
    cfg.model.use_flash_attention = cfg.model.use_checkpoint = False
    torch.manual_seed(0)
    plain = UXBFusionModel.from_config(cfg).to(device).eval()
    cfg.model.fusion_impl, cfg.model.channels_last = "fast", fast.get("channels_last", False)
    cfg.model.use_flash_attention = fast.get("flash", False)
    quick = UXBFusionModel.from_config(cfg).to(device).eval()
    quick.load_state_dict(plain.state_dict())
    data = _batch(cfg, 1, device)
    with torch.no_grad():
        ref = plain(data["image"], data["voxels"])["logits3d"].double()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast.get("bf16", False)):
            out = quick(data["image"], data["voxels"])["logits3d"].double()
    return float((out - ref).norm() / ref.norm())


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=["tiny", "seed"], default="tiny")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--fast-batch", type=int, nargs="+", default=[2], help="batch sizes for the fast path"
    )
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="also time gradient checkpointing at the largest batch",
    )
    p.add_argument("--check", action="store_true", help="first compare fast and plain logits")
    p.add_argument("--only", help="time only the variants whose label contains this text")
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(packaged_config(a.config), ["model.pretrained_2d=null"])
    gpu = device.type == "cuda"
    prec = "bf16" if gpu else "fp32"
    fast = dict(naive=False, bf16=gpu)
    variants = [
        ("seed as written (fp32, broadcast fusion)", 1, dict(naive=True, bf16=False)),
        (f"{prec} + fast fusion", 1, fast),
        (f"{prec} + fast fusion + channels_last", 1, {**fast, "channels_last": True}),
    ]
    if gpu:
        # channels_last_3d pays on the CPU (oneDNN) but slowed the H100's bf16 step by 40 %;
        # MONAI's SDPA window attention pays on the GPU only (the CPU runs its math kernel)
        best, name = {**fast, "flash": True}, f"{prec} + fast fusion + sdpa"
        variants.append((name, 1, best))
    else:
        best, name = variants[-1][2], variants[-1][0]
    variants += [(name, b, best) for b in a.fast_batch if b != 1]
    batch = max(a.fast_batch)
    if a.checkpoint:
        variants.append((name + " + checkpoint", batch, {**best, "checkpoint": True}))
    if a.compile:
        variants.append((name + " + compile", batch, {**best, "compile_": True}))
    dev = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"{a.config} config, grid {cfg.grid.shape}, {dev}, torch {torch.__version__}")
    if a.check:
        err = agreement(cfg, device, best)
        print(f"  fast path ({name}) vs fp32 plain path, same weights: rel. L2 error {err:.2e}")
        _free()
    print(f"  median of {a.steps} steps; peak = GPU memory allocated (train step / forward)")
    base = None
    for label, batch, kw in variants:
        if a.only and a.only not in label:
            continue
        try:
            res = measure(cfg, device, batch=batch, steps=a.steps, **kw)
        except torch.OutOfMemoryError:
            res = None
        _free()  # outside the except block, whose traceback holds the failed step's tensors
        if res is None:
            print(f"  {label:<48} batch {batch}  out of memory on this device")
            continue
        step, fwd, peak, fpeak, first = res
        rate, frate = batch / step, batch / fwd
        base = base or (rate, frate)
        print(
            f"  {label:<48} batch {batch}  step {step:7.3f} s ({rate:6.2f} samples/s, "
            f"{rate / base[0]:4.1f}x)  forward {fwd:7.3f} s ({frate / base[1]:4.1f}x)  "
            f"peak {peak:5.1f} / {fpeak:5.1f} GiB  first step {first:6.1f} s"
        )


if __name__ == "__main__":
    main()
