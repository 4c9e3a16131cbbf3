"""On-disk cache of voxelised tiles, so epochs after the first do not re-read and re-voxelise LAS.

An entry is keyed by the LAS file's content (BLAKE2 digest) and the grid settings; changing either
gives a new key, so stale entries are never read. Entries are written to a temporary file and
renamed, so concurrent DataLoader workers and DDP ranks can share one cache folder safely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..runtime import user_cache_dir
from .voxelize import GridSpec

__all__ = ["VoxelCache", "default_cache_dir", "file_digest"]

log = logging.getLogger(__name__)
_DIGESTS: dict[tuple[str, int, int], str] = {}
FORMAT_VERSION = 3  # bump when the voxeliser's output changes for the same settings


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/uxbseg/voxels`` (``~/.cache/uxbseg/voxels``)."""
    return user_cache_dir("voxels")


def file_digest(path: str | Path) -> str:
    """BLAKE2b digest of a file's bytes, memoised per (path, size, mtime) in this process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=20)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


class VoxelCache:
    """Voxel features and labels of tiles, stored as ``.npz`` under ``folder``.

    Args:
        folder: cache folder (created when needed).
        grid: the grid settings; part of every key.
    """

    def __init__(self, folder: str | Path, grid: GridSpec) -> None:
        self.folder = Path(folder)
        spec = json.dumps({**dataclasses.asdict(grid), "v": FORMAT_VERSION}, sort_keys=True)
        self._grid_key = hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()

    def path_for(self, las_path: str | Path) -> Path:
        """Where the entry of ``las_path`` (at its current content) lives."""
        return self.folder / f"{file_digest(las_path)}-{self._grid_key}.npz"

    def load(self, las_path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
        """(features, labels) or None when absent or unreadable."""
        path = self.path_for(las_path)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return z["features"], z["labels"].astype(np.int64)
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry is recomputed
            log.warning("ignoring damaged cache entry %s (%s)", path, exc)
            return None

    def store(self, las_path: str | Path, features: np.ndarray, labels: np.ndarray) -> None:
        """Write an entry atomically (temporary file, then rename)."""
        path = self.path_for(las_path)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, features=features, labels=labels.astype(np.int16))
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk must not stop training
            log.warning("could not write voxel cache entry %s (%s)", path, exc)
            tmp.unlink(missing_ok=True)
