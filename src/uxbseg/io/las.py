"""Reading LAS/LAZ point clouds with errors that name the file and what to do."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np

from ..errors import BadDataError

__all__ = [
    "PointArrays",
    "is_compressed",
    "max_classification",
    "read_las",
    "read_points",
    "write_classified",
]


def read_las(path: str | Path) -> laspy.LasData:
    """Read a whole LAS/LAZ/COPC file; raise :class:`BadDataError` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(f"{path}: file not found; check the path")
    try:
        las = laspy.read(path)
    except Exception as exc:  # laspy raises several types for corrupt or truncated files
        hint = _truncation_hint(path)
        raise BadDataError(
            f"{path}: not a readable LAS/LAZ file ({hint or f'{type(exc).__name__}: {exc}'}); "
            "re-export it from the source software or remove it"
        ) from exc
    n_header = las.header.point_count
    if len(las.points) != n_header:
        raise BadDataError(
            f"{path}: header promises {n_header} points but {len(las.points)} could be read "
            "(truncated file?); re-export it"
        )
    return las


def _truncation_hint(path: Path) -> str | None:
    """Say 'truncated' when the header promises more bytes than the file has."""
    try:
        with laspy.open(path) as reader:
            h = reader.header
            if h.are_points_compressed:
                return None
            need = h.offset_to_point_data + h.point_count * h.point_format.size
    except Exception:
        return None
    have = path.stat().st_size
    if have < need:
        return f"truncated: {have} bytes, the header needs at least {need}"
    return None


@dataclass
class PointArrays:
    """The fields the voxeliser uses, as raw integers (scale and offset cancel in binning).

    ``classification`` is carried for making labels only; it is never turned into a feature.
    """

    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    intensity: np.ndarray | None = None
    return_number: np.ndarray | None = None
    number_of_returns: np.ndarray | None = None
    classification: np.ndarray | None = None
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __len__(self) -> int:
        return len(self.X)

    @classmethod
    def from_las(cls, las: laspy.LasData) -> PointArrays:
        """Views of the LAS record's integer fields (no float64 (N, 3) array is made)."""
        return cls(
            X=np.asarray(las.X),
            Y=np.asarray(las.Y),
            Z=np.asarray(las.Z),
            intensity=np.asarray(las.intensity),
            return_number=np.asarray(las.return_number),
            number_of_returns=np.asarray(las.number_of_returns),
            classification=np.asarray(las.classification),
            scales=tuple(float(s) for s in las.header.scales),
        )


def read_points(path: str | Path) -> PointArrays:
    """Read a LAS/LAZ file into :class:`PointArrays`; empty files are an error."""
    las = read_las(path)
    if len(las.points) == 0:
        raise BadDataError(f"{path}: the point cloud is empty; remove the pair or re-export it")
    return PointArrays.from_las(las)


def max_classification(point_format_id: int) -> int:
    """Largest classification code a point format can store (5 bits before format 6)."""
    return 31 if point_format_id < 6 else 255


def is_compressed(path: str | Path) -> bool:
    """LAZ (and COPC) in -> LAZ out."""
    name = Path(path).name.lower()
    return name.endswith(".laz")


def write_classified(
    las: laspy.LasData,
    codes: np.ndarray,
    dst: str | Path,
    compress: bool,
    keep_classification: bool = False,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``las`` with new classification codes, everything else unchanged, atomically.

    Same points in the same order; every other dimension, the header's version, point format,
    scales and offsets, all VLRs and EVLRs stay as read. With ``keep_classification`` the codes go
    to a new ``uxb_class`` dimension instead. ``extra`` adds float32 dimensions (probabilities).
    The file is written to a temporary name in the same folder and renamed; on any error no
    output file is left.
    """
    dst = Path(dst)
    codes = np.asarray(codes)
    if len(codes) != len(las.points):
        raise ValueError(f"{len(codes)} codes for {len(las.points)} points")
    fmt = las.header.point_format.id
    limit = max_classification(fmt)
    if not keep_classification and len(codes) and int(codes.max()) > limit:
        raise BadDataError(
            f"{dst.name}: class code {int(codes.max())} cannot be stored in point format {fmt} "
            f"(classification holds 0-{limit}); use --keep-classification to write the prediction "
            "to a new uxb_class dimension, or choose codes <= 31"
        )
    new_dims = (["uxb_class"] if keep_classification else []) + list(extra or {})
    clash = [n for n in new_dims if n in las.point_format.dimension_names]
    if clash:
        raise BadDataError(
            f"{dst.name}: the input already has dimension(s) {clash}; "
            "predict into a copy without them"
        )
    if keep_classification:
        las.add_extra_dim(laspy.ExtraBytesParams("uxb_class", "u1", description="uxbseg class"))
        las.uxb_class = codes.astype(np.uint8)
    else:
        las.classification = codes.astype(np.uint8)
    if extra:
        las.add_extra_dims([laspy.ExtraBytesParams(n, "f4") for n in extra])
        for name, values in extra.items():
            las[name] = values.astype(np.float32)
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        las.write(tmp, do_compress=compress)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
