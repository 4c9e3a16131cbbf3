"""Process settings: glibc's allocator keeps the memory a training step frees; caches live under
the user's cache folder.

PyTorch has no caching allocator on the CPU, so every activation of a step is a fresh
``malloc``. glibc serves large blocks with ``mmap`` and gives freed heap back to the kernel above
a small threshold; the next step's blocks then fault in page by page, zero-filled by the kernel
(the 5-minute demo: 19.5 M page faults, 10 % of its CPU time in the kernel). Raising glibc's mmap
threshold to its maximum (32 MiB) and its trim threshold to 1 GiB lets the heap keep that memory
for reuse; one arena (instead of one per thread) keeps the voxeliser's two threads from each
growing and trimming a heap of their own, which alone made it 2x slower. Measured
(BENCHMARKS.md): tiny training step 6-9 % faster, voxelisation 10-20 % faster. Set
``UXBSEG_MALLOC=default`` to leave glibc's defaults; nothing happens off glibc.

``torch.compile`` keeps what it compiled (Inductor's graphs and kernels) in
``TORCHINDUCTOR_CACHE_DIR``, by default a folder under /tmp, which many machines clear at a
reboot or after each job: the next run then compiles for minutes again (the seed model on an
H200: 250-276 s + ~80 s). :func:`persistent_compile_cache` points it at the user's cache
folder unless the user set one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from pathlib import Path

__all__ = [
    "LOG_REFRESH_BATCHES",
    "compile_cache_dir",
    "persistent_compile_cache",
    "progress_options",
    "training_refresh_rate",
    "tune_cpu_allocator",
    "user_cache_dir",
]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_TRIM_THRESHOLD = 2**30


def tune_cpu_allocator() -> bool:
    """Apply the allocator settings above to this process (and processes it forks); returns
    whether they were applied."""
    if os.environ.get("UXBSEG_MALLOC", "tuned") == "default" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only (musl has none)
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_ARENA_MAX, 1) == 1
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and ok
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    log.debug("glibc malloc thresholds %s", "raised" if ok else "left (mallopt refused)")
    return ok


def user_cache_dir(kind: str) -> Path:
    """``$XDG_CACHE_HOME/uxbseg/<kind>`` (``~/.cache/uxbseg/<kind>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "uxbseg" / kind


def persistent_compile_cache() -> str:
    """Set ``TORCHINDUCTOR_CACHE_DIR`` to :func:`user_cache_dir` ``("inductor")`` unless the
    user chose a folder; returns the folder Inductor caches in.

    Torch writes its own default (``<tmp>/torchinductor_<user>``, often cleared) into the
    environment the first time anything asks Inductor for its cache folder, and importing
    Lightning does: that value is taken as not chosen, and replaced."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder = compile_cache_dir()
    return folder


def compile_cache_dir() -> str:
    """The folder :func:`persistent_compile_cache` has Inductor cache in (nothing is set)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current == _torch_default_cache():
        return str(user_cache_dir("inductor"))
    return current


def _torch_default_cache() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch: nothing to recognise
        return None
    return os.path.abspath(default_cache_dir())


LOG_REFRESH_BATCHES = 20
"""Training's progress bar into a file (not a terminal): redrawn every this many batches."""


def _terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no such method, or closed
        return False


def progress_options(stream=None) -> dict[str, float]:
    """tqdm options for a progress bar written to ``stream`` (default stderr, tqdm's): none on
    a terminal (tqdm redraws up to ten times a second); into a file (a cluster job's log,
    ``nohup``) a redraw every 30 s at most, so a run of hours leaves a log to read, not
    megabytes of redrawn bars."""
    return {} if _terminal(sys.stderr if stream is None else stream) else {"mininterval": 30.0}


def training_refresh_rate(stream=None) -> int:
    """Lightning's progress bar refresh rate (batches) for ``stream`` (default stdout, where
    Lightning draws): every batch on a terminal, :data:`LOG_REFRESH_BATCHES` into a file."""
    return 1 if _terminal(sys.stdout if stream is None else stream) else LOG_REFRESH_BATCHES
