"""The prepared GPU run (benchmarks/gpu_check.sh) times the variants it names: its ``--only``
texts, read from the script itself, select them among those ``benchmarks train`` builds on a
GPU. A lent card is rare; a label that no longer matches would waste it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from benchmarks.bench_train import parser, plan_variants, select

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _train_commands() -> list[list[str]]:
    """The arguments of each ``python3 -m benchmarks train`` in the script, its variables
    ($BEST, $BATCH) set as it sets them by default."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    env = {"BEST": re.search(r'^BEST="([^"]*)"', text, re.M).group(1)}
    env["BATCH"] = re.search(r"^BATCH=\$\{BATCH:-(\d+)\}", text, re.M).group(1)
    commands = []
    for line in text.splitlines():
        if "-m benchmarks train" in line and not line.lstrip().startswith("#"):
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], line)
            args = shlex.split(line)
            commands.append(args[args.index("train") + 1 :])
    return commands


def test_gpu_check_times_the_seed_and_the_compiled_candidate():
    first, second = _train_commands()
    a = parser().parse_args(first)
    variants, name, best = plan_variants(a, gpu=True)
    picked = [(label, batch) for label, batch, _ in select(variants, a.only)]
    assert picked == [
        ("seed as written (fp32, broadcast fusion)", 1),
        ("bf16 + fast fusion + channels_last + sdpa + compile", 4),
    ]
    (kw,) = [kw for label, _, kw in variants if label == picked[1][0]]
    assert kw == {**best, "compile_": True} and best["channels_last"] and best["flash"]
    assert best["bf16"] and not best["naive"]
    assert name == "bf16 + fast fusion + channels_last + sdpa"
    # then the eager fast path at batch 1, after --check, for its peak memory against the seed's
    a = parser().parse_args(second)
    assert a.check
    picked = [(label, batch) for label, batch, _ in select(plan_variants(a, gpu=True)[0], a.only)]
    assert picked == [("seed as written (fp32, broadcast fusion)", 1), (name, 1)]


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
