"""The compiled graphs a lent card saves for the next one (benchmarks/compile_cache.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compile_cache

ROOT = Path(__file__).resolve().parents[1]


def test_chunks_round_trip_and_replace_the_earlier_ones(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 100_000, dtype=np.uint8).tobytes()
    paths = compile_cache.write_chunks(data, tmp_path / "out", chunk=30_000)
    assert len(paths) == 4 and all(p.stat().st_size <= 30_000 for p in paths)
    assert compile_cache.read_chunks(tmp_path / "out") == data
    small = b"graphs" * 10
    assert len(compile_cache.write_chunks(small, tmp_path / "out", chunk=30_000)) == 1
    assert compile_cache.read_chunks(tmp_path / "out") == small  # no stale chunk joined
    assert compile_cache.read_chunks(tmp_path) is None


def test_a_cache_too_large_to_come_back_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "LIMIT", 1000)
    data = np.random.default_rng(1).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    assert compile_cache.write_chunks(data, tmp_path) == []
    assert compile_cache.read_chunks(tmp_path) is None


def test_artefacts_are_counted_in_either_form_of_torchs_cache_info():
    from collections import defaultdict
    from types import SimpleNamespace

    now = SimpleNamespace(artifacts=defaultdict(list, {"inductor": ["a", "b"], "pgo": ["c"]}))
    first = SimpleNamespace(inductor_artifacts=["a", "b"], aot_autograd_artifacts=["c", "d"])
    assert compile_cache.count(now) == 3 and compile_cache.count(first) == 4
    assert compile_cache.count(None) == 0


_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from benchmarks import compile_cache
    folder, action = Path(sys.argv[1]), sys.argv[2]
    if action == "load":
        print(compile_cache.load(folder))
    f = torch.compile(lambda x: torch.nn.functional.gelu(x @ x.T).sum(1) * 2)
    f(torch.randn(16, 16))
    print(compile_cache.hits())
    if action == "save":
        print(compile_cache.save(folder))
    """
)


@pytest.mark.slow
def test_a_fresh_process_takes_the_saved_graphs_instead_of_compiling(tmp_path):
    """Two processes, each with an empty Inductor cache of its own (two fresh machines): the
    second loads what the first saved and compiles nothing."""

    def run(action: str, cache: str) -> str:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / cache)}
        env["PYTHONPATH"] = str(ROOT)
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path / "carried"), action],
            capture_output=True, text=True, env=env, check=True, timeout=600,
        )  # fmt: skip
        return out.stdout

    first = run("save", "first")
    assert "Inductor graphs: 1 compiled, 0 from the cache" in first
    assert "artefacts saved to" in first and list((tmp_path / "carried").glob("*.z"))
    second = run("load", "second")
    assert "artefacts loaded from" in second
    assert "Inductor graphs: 0 compiled, 1 from the cache" in second
