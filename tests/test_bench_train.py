"""The prepared GPU run (benchmarks/gpu_check.sh) times the variants it names: its ``--only``
texts, read from the script itself, select them among those ``benchmarks train`` builds on a
GPU. A lent card is rare; a label that no longer matches would waste it."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.bench_train import _Run, measure, parser, plan_variants, select
from uxbseg.config import load_config, packaged_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _defaults(mib: int) -> dict[str, str]:
    """$BATCH, $FBATCH and $MODE as the script sets them by default on a card of ``mib`` MiB
    (its own lines, run by bash)."""
    text = SCRIPT.read_text()
    lines = [ln for ln in text.splitlines() if re.match(r"(F?BATCH|MODE)=", ln)]
    out = subprocess.run(
        ["bash", "-c", f"MIB={mib}\n" + "\n".join(lines) + '\necho "$BATCH $FBATCH $MODE"'],
        capture_output=True,
        text=True,
        check=True,
        env={},
    ).stdout.split()
    return {"BATCH": out[0], "FBATCH": out[1], "MODE": out[2]}


def _train_commands(mib: int = 143771) -> list[list[str]]:
    """The arguments of each ``python3 -m benchmarks train`` in the script, its variables
    ($BEST, $BATCH, $FBATCH) set as it sets them by default on a card of ``mib`` MiB."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    env = {"BEST": re.search(r'^BEST="([^"]*)"', text, re.M).group(1), **_defaults(mib)}
    commands = []
    for line in text.splitlines():
        if "-m benchmarks train" in line and not line.lstrip().startswith("#"):
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
            args = shlex.split(line)
            commands.append(args[args.index("train") + 1 :])
    return commands


def test_gpu_check_batch_follows_the_cards_memory():
    # ~4.6 GiB + 9.6 GiB a sample (H200, batches 4 and 8): 12 (~120 GiB) on an H200's 140 GiB,
    # 6 (~62 GiB) on an 80 GB H100; CUDA graphs unless MODE says otherwise
    graphs = {"FBATCH": "16", "MODE": "reduce-overhead"}
    assert _defaults(143771) == {"BATCH": "12", **graphs}
    assert _defaults(81559) == {"BATCH": "6", **graphs}
    assert _defaults(49152)["BATCH"] == "4"
    assert parser().parse_args(_train_commands(81559)[0]).fast_batch == [6]


def test_gpu_check_times_the_seed_and_the_compiled_candidate():
    first, second = _train_commands()
    a = parser().parse_args(first)
    assert a.forward_batch == 16 and a.profile
    # the compiled graphs come from the previous card and go back for the next
    assert str(a.compile_cache) == ".gpu-cache" and str(a.save_compile_cache) == "$OUT"
    variants, name, best = plan_variants(a, gpu=True)
    picked = [(label, batch) for label, batch, _ in select(variants, a.only)]
    assert picked == [
        ("seed as written (fp32, broadcast fusion)", 1),
        ("bf16 + fast fusion + channels_last + sdpa + compile (reduce-overhead)", 12),
    ]
    (kw,) = [kw for label, _, kw in variants if label == picked[1][0]]
    assert kw == {**best, "compile_": "reduce-overhead"}
    assert best["channels_last"] and best["flash"]
    assert best["bf16"] and not best["naive"]
    assert name == "bf16 + fast fusion + channels_last + sdpa"
    # then the eager fast path at batch 1, after --check, for its peak memory against the seed's
    a = parser().parse_args(second)
    from uxbseg.predict import window_batch

    seed = load_config("seed")  # predict's default window batch on a GPU, eager
    assert a.check and a.forward_batch == window_batch(None, 0.25, seed, torch.device("cuda"))
    picked = [(label, batch) for label, batch, _ in select(plan_variants(a, gpu=True)[0], a.only)]
    assert picked == [("seed as written (fp32, broadcast fusion)", 1), (name, 1)]


def test_the_second_call_can_time_the_recomputed_bias_gradient():
    """The header's second call with ``--bias-grad recompute``: the seed and the compiled fast
    path whose window attention recomputes the bias's gradient (its model has that attention)."""
    line = (
        "--config seed --steps 5 --fast-batch 8 --forward-batch 16 --compile --compile-mode "
        "reduce-overhead --bias-grad recompute --check --only 'seed as written' "
        "'channels_last + sdpa + recomputed bias grad + compile'"
    )
    a = parser().parse_args(shlex.split(line))
    variants, name, best = plan_variants(a, gpu=True)
    picked = [(label, batch) for label, batch, _ in select(variants, a.only)]
    assert picked == [
        ("seed as written (fp32, broadcast fusion)", 1),
        (f"{name} + compile (reduce-overhead)", 8),
    ]
    assert name == "bf16 + fast fusion + channels_last + sdpa + recomputed bias grad"
    assert best["bias_grad"] == "recompute" and best["flash"]
    cfg = load_config(packaged_config("tiny"), ["model.pretrained_2d=null"])
    kw = dict(naive=False, bf16=False, batch=1, flash=True, bias_grad="recompute")
    run = _Run(cfg, torch.device("cpu"), **kw)
    kinds = {type(m).__name__ for m in run.model.modules() if "Attention" in type(m).__name__}
    assert "RecomputedBiasWindowAttention" in kinds and "SDPAWindowAttention" not in kinds


def test_gpu_check_times_the_attention_kernels_as_the_eighteenth_session_did():
    from benchmarks.bench_kernels import main as kernels_main

    text = SCRIPT.read_text()
    (line,) = [ln for ln in text.splitlines() if "-m benchmarks kernels" in ln and "#" not in ln]
    args = shlex.split(line)
    args = args[args.index("kernels") + 1 :]
    assert args == ["--config", "seed", "--batch", "4", "--repeats", "3", "--only", "attention"]
    with pytest.raises(SystemExit) as done:  # its own parser takes them (a bad one: exit 2
        kernels_main([*args, "--help"])  # before --help is reached), then --help exits 0
    assert done.value.code == 0


def test_a_compile_mode_is_named_and_passed_to_torch_compile():
    a = parser().parse_args(["--fast-batch", "8", "--compile", "--compile-mode", "reduce-overhead"])
    variants, name, best = plan_variants(a, gpu=True)
    (kw,) = [kw for label, _, kw in variants if label == f"{name} + compile (reduce-overhead)"]
    assert kw == {**best, "compile_": "reduce-overhead"}


def test_the_cpu_variants_are_the_plain_and_channels_last_paths():
    a = parser().parse_args(["--fast-batch", "2"])
    variants, _, best = plan_variants(a, gpu=False)
    assert [(label, b) for label, b, _ in variants] == [
        ("seed as written (fp32, broadcast fusion)", 1),
        ("fp32 + fast fusion", 1),
        ("fp32 + fast fusion + channels_last", 1),
        ("fp32 + fast fusion + channels_last", 2),
    ]
    assert not best["bf16"] and best["channels_last"] and select(variants, None) == variants


@pytest.mark.parametrize("naive", [False, True])
def test_forward_is_timed_at_its_own_batch_for_the_fast_path_only(naive):
    # --forward-batch: the fast path's forward runs that many samples (the ratio is per
    # sample); the seed as written keeps its batch of 1
    cfg = load_config(packaged_config("tiny"), ["model.pretrained_2d=null"])
    kw = dict(naive=naive, bf16=False, batch=1, forward_batch=3)
    run = _Run(cfg, torch.device("cpu"), **kw)
    assert run.fbatch == (1 if naive else 3)
    assert run.fdata["voxels"].shape[0] == run.fdata["image"].shape[0] == run.fbatch
    assert run.data["voxels"].shape[0] == 1  # training at its own batch
    assert run.forward() > 0
    *_, fbatch = measure(cfg, torch.device("cpu"), steps=1, **kw)
    assert fbatch == run.fbatch


def test_a_forward_out_of_memory_keeps_the_steps_figures(monkeypatch, capsys):
    """A forward batch that does not fit beside what the training step left on the card (CUDA
    graphs keep their memory pool) costs the forward's figures only, not the step's."""
    cfg = load_config(packaged_config("tiny"), ["model.pretrained_2d=null"])

    def no_room(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(_Run, "forward", no_room)
    step, fwd, *_, fbatch = measure(
        cfg, torch.device("cpu"), steps=1, naive=False, bf16=False, batch=1, forward_batch=2
    )
    assert step > 0 and math.isnan(fwd) and fbatch == 2
    assert "forward at batch 2: out of memory on this device" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["error", "time limit"])
def test_what_compiled_is_saved_when_the_run_stops_early(monkeypatch, tmp_path, capsys, how):
    """A variant that fails, or the device call's time limit (timeout's SIGTERM), still saves
    the graphs compiled before it, so that the next call does not compile them again."""
    import os
    import signal
    import time

    from benchmarks import bench_train

    saved = []
    monkeypatch.setattr(bench_train.compile_cache, "save", lambda d: saved.append(d) or "saved")

    def stop(a):
        if how == "error":
            raise RuntimeError("the forward failed to compile")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler ends this at once

    monkeypatch.setattr(bench_train, "_run", stop)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises((RuntimeError, SystemExit)) as stopped:
            bench_train.main(["--save-compile-cache", str(tmp_path)])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert saved == [tmp_path]
    assert "saved" in capsys.readouterr().out
    if how == "time limit":
        assert stopped.value.code == 128 + signal.SIGTERM


def test_the_recomputed_bias_gradient_is_checked_against_the_kernels(monkeypatch):
    """``--check`` with ``--bias-grad recompute``: one training step with each gradient against
    the float32 kernel-gradient step, same weights. In float32 on the CPU (bf16 convs are slow
    here; on a card the step is bf16) the kernel's is that step itself and the recomputed one is
    off by the other SDPA kernel's rounding only; a wrong recomputed gradient (zeros) is off by
    ~1."""
    from benchmarks.bench_train import bias_grad_agreement
    from uxbseg.models import attention

    cfg = load_config(packaged_config("tiny"), ["model.pretrained_2d=null"])
    fast = dict(naive=False, bf16=False, channels_last=True, flash=True, bias_grad="recompute")
    kernel, recomputed, finite = bias_grad_agreement(cfg, torch.device("cpu"), fast)
    assert finite and kernel == 0 and 0 < recomputed < 0.05
    monkeypatch.setattr(attention, "attention_bias_grad", lambda g, *a: torch.zeros_like(a[4]))
    _, wrong, finite = bias_grad_agreement(cfg, torch.device("cpu"), fast)
    assert finite and wrong > 0.9
