"""Inductor's compiled artefacts carried from one lent GPU machine to the next.

A lent card comes fresh, with an empty Inductor cache, for 15 minutes, and compiling the seed
model's training step and forward there takes ~330 s of them (twentieth session, H200). torch's
"mega-cache" (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``) serialises every
graph Inductor compiled (and AOTAutograd's), so the next machine of the same kind, with the same
torch, hits the cache for the same graphs instead of compiling them again; entries of another
torch or another card are simply never hit. They travel as compressed files of at most
:data:`CHUNK` bytes each, the size the device's ``$OUT`` gives back.

The artefacts are Inductor's own cache entries, pickled as they are in its cache folder, and
torch unpickles them when they are loaded: load only files a run of yours wrote (this is a
benchmark's tool for the project's own device calls; the package never loads such files).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

__all__ = ["CHUNK", "PREFIX", "count", "hits", "load", "read_chunks", "save", "write_chunks"]

CHUNK = 15 * 2**20
"""Bytes a file at most (a device returns files of up to 16 MiB from ``$OUT``)."""

LIMIT = 48 * 2**20
"""Compressed bytes at most in all (``$OUT`` returns 64 MiB in all; the log needs some)."""

PREFIX = "compile-cache"


def write_chunks(data: bytes, folder: Path, chunk: int = CHUNK) -> list[Path]:
    """``data`` compressed into ``folder/compile-cache.<i>.z`` files of at most ``chunk`` bytes
    (earlier ones removed); none when compressed it exceeds :data:`LIMIT`."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{PREFIX}.*.z"):
        old.unlink()
    packed = zlib.compress(data, 6)
    if len(packed) > LIMIT:
        return []
    paths = []
    for i, start in enumerate(range(0, len(packed), chunk)):
        path = folder / f"{PREFIX}.{i}.z"
        path.write_bytes(packed[start : start + chunk])
        paths.append(path)
    return paths


def read_chunks(folder: Path) -> bytes | None:
    """The data :func:`write_chunks` wrote in ``folder``, or None when it holds none."""
    parts = sorted(folder.glob(f"{PREFIX}.*.z"), key=lambda p: int(p.name.split(".")[1]))
    if not parts:
        return None
    return zlib.decompress(b"".join(p.read_bytes() for p in parts))


def count(info: object) -> int:
    """How many artefacts torch's ``CacheInfo`` lists: by kind in ``artifacts`` (torch 2.13), or
    in one ``<kind>_artifacts`` list a kind (its first form; the card's torch may be older)."""
    if info is None:
        return 0
    kinds = getattr(info, "artifacts", None)
    if isinstance(kinds, dict):
        return sum(len(v) for v in kinds.values())
    lists = [getattr(info, n) for n in dir(info) if n.endswith("_artifacts")]
    return sum(len(v) for v in lists if isinstance(v, list))


def save(folder: Path) -> str:
    """Write what Inductor compiled in this process to ``folder``; says what was written."""
    got = torch.compiler.save_cache_artifacts()
    if got is None:
        return "compile cache: nothing compiled in this process, nothing saved"
    data, info = got
    paths = write_chunks(data, folder)
    n = count(info)
    if not paths:
        mib = len(data) / 2**20
        return f"compile cache: {n} artefacts, {mib:.1f} MiB: too large to return, not saved"
    size = sum(p.stat().st_size for p in paths) / 2**20
    return (
        f"compile cache: {n} artefacts saved to {folder} ({len(paths)} file(s), "
        f"{size:.1f} MiB compressed of {len(data) / 2**20:.1f})"
    )


def load(folder: Path) -> str:
    """Hot-load the artefacts :func:`save` wrote in ``folder`` (before anything compiles), so
    that the same graphs hit Inductor's cache; says what was loaded."""
    data = read_chunks(folder) if folder.is_dir() else None
    if data is None:
        return f"compile cache: none in {folder}, every graph compiles"
    info = torch.compiler.load_cache_artifacts(data)
    n = count(info)
    return f"compile cache: {n} artefacts loaded from {folder}"


def hits() -> str:
    """How many graphs Inductor compiled in this process and how many it took from its cache."""
    from torch._dynamo.utils import counters

    c = counters["inductor"]
    return (
        f"Inductor graphs: {c['fxgraph_cache_miss']} compiled, {c['fxgraph_cache_hit']} from "
        "the cache"
    )
