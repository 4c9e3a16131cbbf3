"""Output folders: a new one for each training run, the latest one to resume, and the check
that an ``--out`` is a folder."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import BadDataError

__all__ = ["latest_run_dir", "new_run_dir", "require_folder"]

_RUN = re.compile(r"run(?:_(\d+))?")


def require_folder(path: str | Path) -> Path:
    """``path`` as a Path; BadDataError when it exists as a file (an ``--out`` must be a
    folder)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadDataError(f"{path}: a file, not a folder; choose a folder for --out")
    return path


def _numbered(parent: Path) -> list[tuple[int, Path]]:
    """(number, folder) of ``parent/run`` (1), ``parent/run_2``, ... that exist."""
    if not parent.is_dir():
        return []
    found = []
    for p in parent.iterdir():
        m = _RUN.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1) or 1), p))
    return sorted(found)


def new_run_dir(parent: str | Path) -> Path:
    """``parent/run``, or ``parent/run_N`` one past the highest number there (a run folder is
    never trained into twice)."""
    parent = Path(parent)
    runs = _numbered(parent)
    return parent / "run" if not runs else parent / f"run_{runs[-1][0] + 1}"


def latest_run_dir(parent: str | Path) -> Path:
    """The highest-numbered run under ``parent`` that has a checkpoint to resume from."""
    parent = Path(parent)
    for _, run in reversed(_numbered(parent)):
        if (run / "checkpoints" / "last.ckpt").is_file():
            return run
    raise BadDataError(
        f"{parent}: no run with checkpoints/last.ckpt to resume; pass --out RUN, or train "
        "without --resume first"
    )
