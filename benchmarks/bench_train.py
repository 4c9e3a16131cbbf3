"""Training step and forward pass: uxbseg's fast path vs the seed's formulation, same run.

The reference is the seed as written: batch 1 (SEED-FACTS), fp32, broadcast + concat fusion,
default memory layout. Then, on the same model: the fast fusion alone at batch 1; + channels_last_3d
weights and activations; on a GPU + MONAI's SDPA attention (``use_flash_attention``) and cuDNN
autotuning; + a larger batch (``--fast-batch``), + gradient checkpointing (``--checkpoint``); on a
GPU bf16 autocast and ``--compile`` (the branches compiled as training does). Every fast variant
steps with the fused AdamW that training uses; the reference with torch's default AdamW. Ratios are
samples/s against the reference, measured in the same run. ``--check`` first compares the fast
path's logits with the plain fp32 path's on the same weights and input. ``--fused-attention`` (a GPU
diagnostic) turns SDPA's math kernel off for the fast variants: a window attention that cannot take
a fused kernel then stops the variant, after torch's warnings that say why.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import statistics
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from uxbseg.config import load_config, packaged_config
from uxbseg.losses import FusionLoss
from uxbseg.models import UXBFusionModel

from . import compile_cache
from .common import sync


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


class _Run:
    """One variant's model, optimiser and batch; ``step()`` / ``forward()`` time one call each."""

    def __init__(
        self,
        cfg,
        device,
        *,
        naive: bool,
        bf16: bool,
        batch: int,
        channels_last: bool = False,
        flash: bool = False,
        bias_grad: str = "kernel",
        checkpoint: bool = False,
        compile_: bool | str = False,
        fused_attention: bool = False,
        forward_batch: int | None = None,
    ) -> None:
        cfg.model.fusion_impl = "naive" if naive else "fast"
        cfg.model.channels_last = channels_last
        cfg.model.use_flash_attention = flash
        cfg.model.sdpa_bias_grad = bias_grad
        cfg.model.sdpa_inference = not naive  # the seed as written: MONAI's default attention
        cfg.model.onednn_batch1 = not naive  # ... and PyTorch's own choice of conv kernel
        cfg.model.unfold_convs = not naive
        cfg.model.use_checkpoint = checkpoint
        self.naive, self.device = naive, device
        torch.manual_seed(0)
        self.model = UXBFusionModel.from_config(cfg).to(device)
        self.crit = FusionLoss().to(device)
        # the fast path steps with the fused AdamW that training uses (optim.fused); the seed,
        # torch's default (a loop over the parameters on the CPU)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=1e-5, fused=None if naive else True
        )
        if compile_:
            # every shape compiled as it is: the evaluation graph at another batch than the
            # training graph's is then a static graph too, not one with a symbolic batch
            torch._dynamo.config.automatic_dynamic_shapes = False
            # CUDA graphs: the forward compiled as one function (compile_branches explains)
            mode = None if compile_ is True else compile_
            self.model.compile_branches(mode, whole=mode == "reduce-overhead")
        self.data = _batch(cfg, batch, device)
        # the forward at an inference batch of its own (predict --batch), if given
        self.fbatch = batch if naive or forward_batch is None else forward_batch
        self.fdata = self.data if self.fbatch == batch else _batch(cfg, self.fbatch, device)
        self.bf16 = bf16
        self.fused_only = fused_attention and not naive
        self.first = self.step()  # warm-up (compilation happens here)

    def _ctx(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        )
        if self.fused_only:  # every backend but the math kernel
            fused = [
                SDPBackend.FLASH_ATTENTION,
                SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION,
            ]
            stack.enter_context(sdpa_kernel(fused))
        return stack

    def step(self) -> float:
        # cuDNN autotuning goes with the fast path; the seed as written leaves torch's default
        torch.backends.cudnn.benchmark = not self.naive
        self.model.train()
        t0 = time.perf_counter()
        with self._ctx():
            loss, _ = self.crit(self.model(self.data["image"], self.data["voxels"]), self.data)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(self.device)
        return time.perf_counter() - t0

    def forward(self) -> float:
        torch.backends.cudnn.benchmark = not self.naive
        self.model.eval()
        self.opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.no_grad(), self._ctx():
            self.model(self.fdata["image"], self.fdata["voxels"])
        sync(self.device)
        return time.perf_counter() - t0


def _gib_peak(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def profile(run: _Run, rows: int, what: str = "step") -> str:
    """One more training step (``what="step"``) or forward under ``torch.profiler``: the
    operators and kernels that took the most time on the device (on the CPU: in the process),
    with the totals."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    gpu = run.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with torch_profile(activities=acts) as prof:
        run.step() if what == "step" else run.forward()
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    return f"profile of one {what}:\n{table}"


def measure(cfg, device, *, steps: int, profile_rows: int = 0, **kw):
    """One variant on its own: median step and forward (each after a warm-up call), peak
    memory of each, first step, the forward's batch."""
    run = _Run(cfg, device, **kw)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [run.step() for _ in range(steps)]
    peak = _gib_peak(device)
    ftimes, fpeak = [float("nan")], float("nan")
    try:
        run.forward()  # warm-up: the evaluation graph compiles, cuDNN autotunes a new batch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ftimes = [run.forward() for _ in range(steps)]
        fpeak = _gib_peak(device)
    except torch.OutOfMemoryError:  # the step's figures stand without the forward's
        print(f"  forward at batch {run.fbatch}: out of memory on this device", flush=True)
    _free()  # outside the except block, whose traceback holds the failed forward's tensors
    for what in ("step", "forward") if profile_rows else ():
        try:  # a diagnostic: its failure must not cost the variant's measurement
            print(profile(run, profile_rows, what), flush=True)
        except Exception as e:  # e.g. the profiler under CUDA graphs
            print(f"  profile of one {what} failed: {type(e).__name__}: {e}", flush=True)
    return statistics.median(times), statistics.median(ftimes), peak, fpeak, run.first, run.fbatch


def measure_interleaved(cfg, device, variants: list[dict], steps: int) -> list[tuple]:
    """All variants built first, then timed one step each in turn, ``steps`` rounds (then the
    forwards the same way), so that a slow spell of the machine hits every variant alike."""
    runs = [_Run(cfg, device, **kw) for kw in variants]
    times: list[list[float]] = [[] for _ in runs]
    ftimes: list[list[float]] = [[] for _ in runs]
    for _ in range(steps):
        for run, t in zip(runs, times, strict=True):
            t.append(run.step())
    for run in runs:
        run.forward()  # warm-up, as in measure()
    for _ in range(steps):
        for run, t in zip(runs, ftimes, strict=True):
            t.append(run.forward())
    nan = float("nan")
    return [
        (statistics.median(t), statistics.median(f), nan, nan, run.first, run.fbatch)
        for run, t, f in zip(runs, times, ftimes, strict=True)
    ]


def _fast_model(cfg, device, fast: dict, **model_keys) -> UXBFusionModel:
    """The fast path's model as ``fast`` lays it out (fast fusion, SDPA without gradients,
    oneDNN at batch 1, unfolded first convs), with ``model_keys`` also set in ``cfg.model``."""
    cfg.model.fusion_impl, cfg.model.channels_last = "fast", fast.get("channels_last", False)
    cfg.model.sdpa_inference = cfg.model.onednn_batch1 = cfg.model.unfold_convs = True
    for key, value in model_keys.items():
        setattr(cfg.model, key, value)
    return UXBFusionModel.from_config(cfg).to(device)


def agreement(cfg, device, fast: dict) -> float:
    """Relative L2 error of the fast path's 3D logits against the plain fp32 path, same weights.

    The fast model's voxel branch runs in training mode with gradients recorded (the code path
    a training step takes: e.g. the SDPA window attention, which MONAI takes only without
    gradients); it has no dropout, so the modes compute the same function. SegFormer's drop path
    is random in training mode, so the image branch stays in eval mode.
    """
    cfg.model.fusion_impl, cfg.model.channels_last = "naive", False
    cfg.model.use_flash_attention = cfg.model.use_checkpoint = cfg.model.sdpa_inference = False
    cfg.model.onednn_batch1 = cfg.model.unfold_convs = False
    torch.manual_seed(0)
    plain = UXBFusionModel.from_config(cfg).to(device).eval()
    quick = _fast_model(cfg, device, fast, use_flash_attention=fast.get("flash", False)).eval()
    quick.load_state_dict(plain.state_dict())
    if quick.voxel_branch is not None:
        quick.voxel_branch.train()
    data = _batch(cfg, 1, device)
    with torch.no_grad():
        ref = plain(data["image"], data["voxels"])["logits3d"].double()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast.get("bf16", False)):
        out = quick(data["image"], data["voxels"])["logits3d"].detach().double()
    return float((out - ref).norm() / ref.norm())


def bias_grad_agreement(cfg, device, fast: dict) -> tuple[float, float, bool]:
    """How far the window attention's bias-table gradients (all blocks together) after one
    training step of the fast path are from the same step in float32 with SDPA's kernel
    gradient, same weights and batch: with SDPA's kernel gradient, and recomputed
    (``sdpa_bias_grad: recompute``), each in the fast path's precision; and whether every
    gradient of the recomputed step is finite (a kernel returning NaN for some shapes shows here).

    Each path has its own rounding (in bf16 ~0.25 on the tiny model on the CPU, where the two
    paths also run different SDPA kernels): the recomputed gradient is as good as the kernel's
    when its error is of the kernel's size, and a wrong one is off by ~1."""

    def step(bias_grad: str, bf16: bool, state: dict | None):
        torch.manual_seed(0)
        model = _fast_model(cfg, device, fast, use_flash_attention=True, sdpa_bias_grad=bias_grad)
        state = state or {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        if model.image_branch is not None:  # SegFormer's drop path draws at random in training
            model.image_branch.eval()
        data = _batch(cfg, 1, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = FusionLoss().to(device)(model(data["image"], data["voxels"]), data)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = all(bool(g.isfinite().all()) for g in grads)
        tables = [
            p.grad.double().flatten() for n, p in model.named_parameters() if "bias_table" in n
        ]
        del model, grads
        _free()
        return torch.cat(tables), finite, state

    ref, _, state = step("kernel", False, None)
    bf16 = fast.get("bf16", False)
    kernel, _, _ = step("kernel", bf16, state)
    recomputed, finite, _ = step("recompute", bf16, state)

    def error(g: torch.Tensor) -> float:
        return float((g - ref).norm() / ref.norm())

    return error(kernel), error(recomputed), finite


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks train``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=["tiny", "seed"], default="tiny")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--fast-batch", type=int, nargs="+", default=[2], help="batch sizes for the fast path"
    )
    p.add_argument(
        "--forward-batch",
        type=int,
        metavar="N",
        help="time the fast variants' forward at N samples at a time (an inference batch, "
        "predict --batch N; default: the variant's training batch); the ratio is per sample",
    )
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
        default="default",
        help="torch.compile's mode for --compile (reduce-overhead: CUDA graphs, which spare "
        "the launches a step's wall time holds beyond its device time; the model's forward is "
        "then compiled as one function, not branch by branch)",
    )
    p.add_argument(
        "--compile-cache",
        type=Path,
        metavar="DIR",
        help="first load the compiled graphs a run saved with --save-compile-cache (on a lent "
        "card: the previous card's, carried), so that the same graphs are not compiled again",
    )
    p.add_argument(
        "--save-compile-cache",
        type=Path,
        metavar="DIR",
        help="at the end, save every graph compiled or loaded here to DIR (compressed files of "
        "at most 15 MiB: a device's $OUT gives them back)",
    )
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="also time gradient checkpointing at the largest batch",
    )
    p.add_argument("--check", action="store_true", help="first compare fast and plain logits")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="TEXT",
        help="time only the variants whose label contains one of these texts",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="after timing each variant, profile one more step and print its ROWS costliest "
        "operators (sequential timing only)",
    )
    p.add_argument(
        "--bias-grad",
        choices=("kernel", "recompute"),
        default="kernel",
        help="GPU: where the fast variants' SDPA window attention gets the relative position "
        "bias's gradient in training (model.sdpa_bias_grad): from SDPA's memory-efficient kernel, "
        "or recomputed from the scores beside a kernel that returns none (an H100/H200 may then "
        "take cuDNN's); recompute adds ' + recomputed bias grad' to their labels",
    )
    p.add_argument(
        "--fused-attention",
        action="store_true",
        help="GPU diagnostic: the fast variants run without SDPA's math kernel, so a window "
        "attention that cannot take a fused kernel fails and torch warns why",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="on the CPU, time each variant's steps together (default: interleaved; on a GPU "
        "always sequential, for the per-variant peak memory)",
    )
    return p


Variant = tuple[str, int, dict]  # label, batch, options of _Run


def plan_variants(a: argparse.Namespace, gpu: bool) -> tuple[list[Variant], str, dict]:
    """The variants the command line ``a`` times on a GPU or the CPU, as (label, batch, options
    of :class:`_Run`), the reference first, and the best fast path's (label, options)."""
    prec = "bf16" if gpu else "fp32"
    fast = dict(naive=False, bf16=gpu, fused_attention=a.fused_attention)
    variants = [("seed as written (fp32, broadcast fusion)", 1, dict(naive=True, bf16=False))]
    if gpu:
        # both layouts on a GPU: channels_last_3d spares the transposes around cuDNN's NDHWC
        # kernels; with the row-sum norm it paid at batch 1 and lost at batch 4 on an H200
        # (BENCHMARKS), and the norm now takes torch's batch_norm there (not yet measured).
        # SDPA window attention in training too (models/attention.py); on the CPU its math
        # kernel is slower than MONAI's own
        sdpa = {**fast, "flash": True, "bias_grad": a.bias_grad}
        cl = {**sdpa, "channels_last": True}
        own = " + recomputed bias grad" if a.bias_grad == "recompute" else ""
        bests = [
            (f"{prec} + fast fusion + sdpa{own}", sdpa),
            (f"{prec} + fast fusion + channels_last + sdpa{own}", cl),
        ]
    else:
        variants.append((f"{prec} + fast fusion", 1, fast))
        bests = [(f"{prec} + fast fusion + channels_last", {**fast, "channels_last": True})]
    batch = max(a.fast_batch)
    for name, best in bests:
        variants += [(name, b, best) for b in sorted({1, *a.fast_batch})]
        if a.checkpoint:
            variants.append((name + " + checkpoint", batch, {**best, "checkpoint": True}))
        if a.compile:
            mode = a.compile_mode
            how, opt = (" + compile", True) if mode == "default" else (f" + compile ({mode})", mode)
            variants.append((name + how, batch, {**best, "compile_": opt}))
    name, best = bests[-1]
    return variants, name, best


def select(variants: list[Variant], only: list[str] | None) -> list[Variant]:
    """The variants whose label contains one of ``only`` (all without it)."""
    return [v for v in variants if not only or any(t in v[0] for t in only)]


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    if a.compile_cache is not None:
        print(compile_cache.load(a.compile_cache), flush=True)
    if a.save_compile_cache is not None:  # a time limit's SIGTERM (timeout) unwinds to finally
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _run(a)
    finally:  # what compiled before a failure or a time limit (minutes of it) still goes back
        lines = []
        if a.compile or a.save_compile_cache is not None:
            lines.append(compile_cache.hits())
        if a.save_compile_cache is not None:
            lines.append(compile_cache.save(a.save_compile_cache))
        for line in lines:
            with contextlib.suppress(OSError):  # the log's pipe, closed by the same time limit
                print(line, flush=True)


def _run(a: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(packaged_config(a.config), ["model.pretrained_2d=null"])
    gpu = device.type == "cuda"
    variants, name, best = plan_variants(a, gpu)
    dev = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"{a.config} config, grid {cfg.grid.shape}, {dev}, torch {torch.__version__}")
    if a.check:
        err = agreement(cfg, device, best)
        print(f"  fast path ({name}) vs fp32 plain path, same weights: rel. L2 error {err:.2e}")
        if best.get("bias_grad") == "recompute":
            kernel, recomputed, finite = bias_grad_agreement(cfg, device, best)
            print(
                "  bias-table gradients of one step vs the fp32 kernel-gradient path, same "
                f"weights: rel. L2 error with SDPA's kernel gradient {kernel:.2e}, recomputed "
                f"{recomputed:.2e}; every gradient finite: {'yes' if finite else 'NO'}"
            )
        _free()
    chosen = select(variants, a.only)
    interleave = not gpu and not a.sequential and not a.profile
    how = "one step of each variant in turn, " if interleave else ""
    print(f"  median of {a.steps} steps ({how}after one warm-up step each); peak = GPU memory")
    base: list[tuple[float, float]] = []

    def report(label: str, batch: int, res) -> None:
        if isinstance(res, str):  # why the variant could not be measured
            print(f"  {label:<54} batch {batch}  {res}", flush=True)
            return
        step, fwd, peak, fpeak, first, fbatch = res
        rate, frate = batch / step, fbatch / fwd
        at = f" at batch {fbatch}" if fbatch != batch else ""
        base.append((rate, frate))  # the first reported variant is the reference
        print(
            f"  {label:<54} batch {batch}  step {step:7.3f} s ({rate:6.2f} samples/s, "
            f"{rate / base[0][0]:5.2f}x)  forward {fwd:7.3f} s{at} ({frate / base[0][1]:5.2f}x)  "
            f"peak {peak:5.1f} / {fpeak:5.1f} GiB  first step {first:6.1f} s",
            flush=True,
        )

    if a.forward_batch is not None:
        if a.forward_batch < 1:
            raise SystemExit(f"--forward-batch {a.forward_batch}: give a batch >= 1")
        chosen = [(label, b, {**kw, "forward_batch": a.forward_batch}) for label, b, kw in chosen]
    if interleave:
        kws = [{**kw, "batch": batch} for _, batch, kw in chosen]
        for (label, batch, _), res in zip(
            chosen, measure_interleaved(cfg, device, kws, a.steps), strict=True
        ):
            report(label, batch, res)
        return
    # one variant at a time, each reported as soon as it is measured (a run cut short by a
    # device's time limit keeps what it measured)
    for label, batch, kw in chosen:
        t0 = time.perf_counter()
        try:
            res = measure(cfg, device, batch=batch, steps=a.steps, profile_rows=a.profile, **kw)
        except torch.OutOfMemoryError:
            res = "out of memory on this device"
        except RuntimeError as e:  # --fused-attention: no fused kernel for some attention
            if not kw.get("fused_attention"):
                raise
            res = f"stopped: {e}"
        _free()  # outside the except block, whose traceback holds the failed step's tensors
        report(label, batch, res)
        print(f"    ({time.perf_counter() - t0:.0f} s for this variant in all)", flush=True)


if __name__ == "__main__":
    main()
