"""The allocator settings: freed activation memory is reused instead of faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, torch
from uxbseg.runtime import tune_cpu_allocator
applied = tune_cpu_allocator()
def step():  # a training step's pattern: many 4-30 MB activations alive at once, then freed
    keep = [torch.empty(int(mb * 2**18)).fill_(1.0) for mb in (4, 30, 12, 25, 8, 16, 6, 20) * 3]
    return sum(t.numel() for t in keep)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str) -> dict:
    env = {**os.environ, "UXBSEG_MALLOC": mode}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_tuned_allocator_reuses_freed_memory():
    default, tuned = _probe("default"), _probe("tuned")
    assert not default["applied"] and tuned["applied"]
    # ~340 MB allocated and freed 5 times: glibc's defaults hand it back and fault it in again
    # (98 k faults here; > 800 even if every fault mapped a 2 MB huge page)
    assert default["faults"] > 500
    assert tuned["faults"] < default["faults"] / 4  # here: 5 k against 98 k


def test_progress_bars_into_a_file_redraw_rarely(tmp_path):
    """On a terminal tqdm and Lightning redraw as they like; into a file (a cluster job's log)
    a bar is redrawn every 30 s at most (tqdm) or every 20 batches (Lightning)."""
    import time

    from tqdm import tqdm

    from uxbseg.runtime import LOG_REFRESH_BATCHES, progress_options, training_refresh_rate

    master, replica = os.openpty()
    with os.fdopen(replica, "w") as terminal:
        assert progress_options(terminal) == {} and training_refresh_rate(terminal) == 1
    os.close(master)
    redraws = {}
    for name, options in (("default", {}), ("log", None)):
        with open(tmp_path / f"{name}.log", "w") as log:
            if options is None:
                options = progress_options(log)
                assert options == {"mininterval": 30.0}
                assert training_refresh_rate(log) == LOG_REFRESH_BATCHES
            for _ in tqdm(range(30), file=log, **options):
                time.sleep(0.02)
        redraws[name] = (tmp_path / f"{name}.log").read_text().count("/30 [")  # each drawing
    assert redraws["log"] <= 2 < 4 <= redraws["default"]  # the start and the end only
