"""What uxbseg runs on: versions, the devices torch sees, the caches (``uxbseg env``), for a
user asking "is my GPU used?" and for a bug report."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["describe_environment", "format_environment", "unused_gpu", "why_no_gpu"]

PACKAGES = (
    "uxbseg",
    "torch",
    "lightning",
    "torchmetrics",
    "monai",
    "transformers",
    "safetensors",
    "laspy",
    "lazrs",
    "numpy",
    "scipy",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    """The machine's memory (Linux: /proc/meminfo), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _folder_mib(folder: Path) -> float:
    if not folder.is_dir():
        return 0.0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _nvidia_driver() -> str | None:
    """The NVIDIA driver this machine has (Linux's ``/proc/driver/nvidia/version``, or
    ``nvidia-smi`` on the PATH), in words; None where there is none."""
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        return " ".join(first.split()[:8])
    except (OSError, IndexError):
        pass
    smi = shutil.which("nvidia-smi")
    return f"nvidia-smi at {smi}" if smi else None


def unused_gpu() -> str | None:
    """Why torch sees no CUDA GPU on a machine that has an NVIDIA driver, and the fix (a torch
    built without CUDA is the usual cause); None where torch sees one, or there is no driver."""
    import torch

    if torch.cuda.is_available():
        return None
    driver = _nvidia_driver()
    if driver is None:
        return None
    if torch.version.cuda is None:
        return (
            f"this machine has an NVIDIA driver ({driver}) but this torch ({torch.__version__}) "
            "is built without CUDA, so everything runs on the CPU; install a CUDA build of "
            "torch (pytorch.org shows the command for your CUDA version)"
        )
    return (
        f"this machine has an NVIDIA driver ({driver}) but torch (CUDA {torch.version.cuda}) "
        "sees no GPU, so everything runs on the CPU: the driver may be older than torch's CUDA "
        "(nvidia-smi shows the CUDA version it supports), or CUDA_VISIBLE_DEVICES hides the GPUs"
    )


def why_no_gpu() -> str:
    """Why torch sees no CUDA GPU here, in words, with the fix where one is known."""
    import torch

    why = unused_gpu()
    if why:
        return why
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is built without CUDA; install a CUDA build of "
            "torch (pytorch.org shows the command) to run on a GPU"
        )
    return "torch sees no CUDA GPU here (check nvidia-smi and CUDA_VISIBLE_DEVICES)"


def describe_environment() -> dict:
    """Versions, cores and memory, the GPUs torch sees (name, memory, bf16), where predict and
    evaluate would run the model by default, the LAZ backends, and the caches' folders."""
    import laspy
    import torch

    from . import __version__
    from .data.cache import default_cache_dir
    from .runtime import compile_cache_dir

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "device": f"cuda:{i}",
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "bf16": bool(torch.cuda.is_bf16_supported()),
                }
            )
    mps = getattr(torch.backends, "mps", None)
    inductor = compile_cache_dir()
    voxels = default_cache_dir()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cores": cores,
        # the CPU model's kernels: torch's intra-op threads and whether oneDNN is there (the
        # channels_last convs and batch-1 paths of models/convs.py take it)
        "torch_threads": torch.get_num_threads(),
        "onednn": bool(torch.backends.mkldnn.is_available()),
        "memory_gib": None if (m := _memory_gib()) is None else round(m, 1),
        # uxbseg's own from the package (it may run from a source tree, not installed)
        "packages": {name: _version(name) for name in PACKAGES} | {"uxbseg": __version__},
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": gpus,
        "mps": bool(mps and mps.is_available()),
        "model_runs_on": gpus[0]["device"] if gpus else "cpu",
        "unused_gpu": unused_gpu(),
        "laz_backends": [str(b.name) for b in laspy.LazBackend.detect_available()],
        "caches": {
            "voxels": {"folder": str(voxels), "mib": round(_folder_mib(voxels), 1)},
            "inductor": {"folder": inductor, "mib": round(_folder_mib(Path(inductor)), 1)},
        },
    }


def format_environment(env: dict) -> str:
    """:func:`describe_environment` as lines to read."""
    pk = env["packages"]
    lines = [
        f"uxbseg {pk['uxbseg']} on Python {env['python']}, {env['platform']}",
        f"CPU: {env['cores']} cores (torch: {env['torch_threads']} threads, "
        + ("oneDNN" if env["onednn"] else "no oneDNN: slower 3D convs")
        + ")"
        + (f", {env['memory_gib']:g} GiB memory" if env["memory_gib"] else ""),
        "packages: "
        + ", ".join(f"{k} {v}" for k, v in pk.items() if k != "uxbseg" and v is not None),
    ]
    missing = [k for k, v in pk.items() if v is None]
    if missing:
        lines.append(f"not installed: {', '.join(missing)}")
    if env["gpus"]:
        lines.append(f"CUDA {env['cuda']}, cuDNN {env['cudnn']}")
        for g in env["gpus"]:
            bf16 = "bf16" if g["bf16"] else "no bf16 (runs in float32)"
            lines.append(f"  {g['device']}: {g['name']}, {g['memory_gib']:g} GiB, {bf16}")
    else:
        mps = "; Apple MPS available" if env["mps"] else ""
        lines.append(f"no CUDA GPU visible to torch{mps}")
        if env.get("unused_gpu"):
            lines.append(f"  but {env['unused_gpu']}")
    lines.append(
        f"predict and evaluate run the model on: {env['model_runs_on']} (--device to choose); "
        "train: trainer.accelerator"
    )
    lines.append(f"LAZ backends: {', '.join(env['laz_backends']) or 'none (LAZ unreadable)'}")
    for name, c in env["caches"].items():
        lines.append(f"{name} cache: {c['folder']} ({c['mib']:g} MiB)")
    return "\n".join(lines)
