"""Writing a file so that no reader ever sees it half-written, and no failure leaves a piece."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing"]


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (``.<name>.partial``) for the block to write: renamed
    over ``path`` when the block ends, removed when it fails (a full disk, an interrupt)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
