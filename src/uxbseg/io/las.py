"""Reading LAS/LAZ point clouds with errors that name the file and what to do."""

from __future__ import annotations

import functools
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np

from ..errors import BadDataError
from .files import replacing

log = logging.getLogger(__name__)

__all__ = [
    "POINT_FIELDS",
    "PointArrays",
    "crs_epsg",
    "crs_units",
    "header_box",
    "header_box_note",
    "is_compressed",
    "max_classification",
    "read_las",
    "read_point_fields",
    "read_points",
    "read_raw_vlrs",
    "units_warning",
    "write_classified",
    "xy_box",
]


def read_las(path: str | Path) -> laspy.LasData:
    """Read a whole LAS/LAZ/COPC file; raise :class:`BadDataError` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(f"{path}: file not found; check the path")
    try:
        las = laspy.read(path)
    except Exception as exc:  # laspy raises several types for corrupt or truncated files
        raise _unreadable(path, exc) from exc
    n_header = las.header.point_count
    if len(las.points) != n_header:
        raise BadDataError(
            f"{path}: header promises {n_header} points but {len(las.points)} could be read "
            "(truncated file?); re-export it"
        )
    return las


def _unreadable(path: Path, exc: Exception) -> BadDataError:
    """The error for a LAS/LAZ file laspy could not read, saying 'truncated' where it is."""
    hint = _truncation_hint(path)
    return BadDataError(
        f"{path}: not a readable LAS/LAZ file ({hint or f'{type(exc).__name__}: {exc}'}); "
        "re-export it from the source software or remove it"
    )


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
        """The fields of a LAS file; the bit-packed ones are unpacked only when first used."""
        return _LasPointArrays(las)

    def take(self, index: np.ndarray) -> PointArrays:
        """The points at ``index`` (e.g. one prediction window); other fields follow on use."""
        return _TakenPointArrays(self, index)

    @staticmethod
    def join(parts: list[PointArrays]) -> PointArrays:
        """The points of ``parts`` (same raw frame) one after the other; X/Y/Z joined now, the
        other fields when first used."""
        return _JoinedPointArrays(parts)


class _LasPointArrays(PointArrays):
    """:class:`PointArrays` over a LasData: X/Y/Z are views, other fields decoded on demand.

    Return numbers and (in formats 0-5) classification are bit fields that laspy unpacks into
    new arrays; a voxeliser that does not need them should not pay for them.
    """

    def __init__(self, las: laspy.LasData) -> None:  # no dataclass __init__: lazy fields
        self._las = las
        self.X = np.asarray(las.X)
        self.Y = np.asarray(las.Y)
        self.Z = np.asarray(las.Z)
        self.scales = tuple(float(s) for s in las.header.scales)

    @functools.cached_property
    def intensity(self) -> np.ndarray:
        return np.asarray(self._las.intensity)

    @functools.cached_property
    def return_number(self) -> np.ndarray:
        return np.asarray(self._las.return_number)

    @functools.cached_property
    def number_of_returns(self) -> np.ndarray:
        return np.asarray(self._las.number_of_returns)

    @functools.cached_property
    def classification(self) -> np.ndarray:
        return np.asarray(self._las.classification)


class _DerivedPointArrays(PointArrays):
    """:class:`PointArrays` made from others: X/Y/Z now, the other fields from ``_field`` when
    first used."""

    def _field(self, name: str) -> np.ndarray | None:
        raise NotImplementedError

    @functools.cached_property
    def intensity(self) -> np.ndarray | None:
        return self._field("intensity")

    @functools.cached_property
    def return_number(self) -> np.ndarray | None:
        return self._field("return_number")

    @functools.cached_property
    def number_of_returns(self) -> np.ndarray | None:
        return self._field("number_of_returns")

    @functools.cached_property
    def classification(self) -> np.ndarray | None:
        return self._field("classification")


class _TakenPointArrays(_DerivedPointArrays):
    """:meth:`PointArrays.take`."""

    def __init__(self, source: PointArrays, index: np.ndarray) -> None:
        self._source, self._index = source, index
        self.X, self.Y, self.Z = source.X[index], source.Y[index], source.Z[index]
        self.scales = source.scales

    def _field(self, name: str) -> np.ndarray | None:
        values = getattr(self._source, name)
        return None if values is None else values[self._index]


class _JoinedPointArrays(_DerivedPointArrays):
    """:meth:`PointArrays.join`."""

    def __init__(self, parts: list[PointArrays]) -> None:
        self._parts = parts
        self.X, self.Y, self.Z = (np.concatenate([getattr(p, k) for p in parts]) for k in "XYZ")
        self.scales = parts[0].scales

    def _field(self, name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in self._parts]
        return None if any(v is None for v in values) else np.concatenate(values)


POINT_FIELDS = ("X", "Y", "Z", "intensity", "return_number", "number_of_returns")
"""The fields of :class:`PointArrays` that the voxeliser may use (classification never is)."""


def read_point_fields(path: str | Path, chunk: int = 2_000_000) -> dict[str, np.ndarray]:
    """:data:`POINT_FIELDS` of every point of a LAS/LAZ file (raw X/Y/Z), read ``chunk`` points
    at a time so that no other field is held: 16 bytes a point."""
    path = Path(path)
    keep: dict[str, list[np.ndarray]] = {k: [] for k in POINT_FIELDS}
    try:
        with laspy.open(path) as reader:
            for pts in reader.chunk_iterator(chunk):
                for k in POINT_FIELDS:
                    keep[k].append(np.asarray(getattr(pts, k)))
    except Exception as exc:  # laspy raises several types for corrupt or truncated files
        raise _unreadable(path, exc) from exc
    empty = {"X": np.int32, "Y": np.int32, "Z": np.int32, "intensity": np.uint16}
    return {
        k: np.concatenate(v) if v else np.zeros(0, empty.get(k, np.uint8)) for k, v in keep.items()
    }


_EPSG_UNITS = {
    9001: ("metre", 1.0),
    9002: ("foot", 0.3048),
    9003: ("US survey foot", 0.3048006096012192),
    9005: ("Clarke's foot", 0.3047972654),
    9036: ("kilometre", 1000.0),
}
"""EPSG length units as GeoTIFF keys give them: name and metres per unit."""
_PROJECTED = {"PROJCS", "PROJCRS", "PROJECTEDCRS"}
_VERTICAL = {"VERT_CS", "VERTCS", "VERTCRS", "VERTICALCRS"}
_UNIT = {"UNIT", "LENGTHUNIT"}
_GEOGRAPHIC = re.compile(
    r'\s*(?:COMPD_CS\s*\[\s*"[^"]*"\s*,|COMPOUNDCRS\s*\[\s*"[^"]*"\s*,)?'
    r"\s*(?:GEOGCS|GEOGCRS|GEOGRAPHICCRS)\s*\[",
    re.IGNORECASE,
)
DEGREES = ("degree", math.nan)
"""The horizontal "unit" of a geographic CRS (latitude / longitude): no length at all."""
_WKT_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\[|\]")
_UNIT_ARGS = re.compile(r'\s*"([^"]*)"\s*,\s*([0-9.eE+-]+)')


def _metres_per(name: str, factor: float) -> float:
    """Metres per unit; a foot whose WKT gives it a factor of 1 (it happens) is a foot."""
    if "foot" in name.lower() or "feet" in name.lower():
        return 0.3048006096012192 if "us" in name.lower() else 0.3048
    return factor


def _wkt_walk(wkt: str):
    """Each keyword of a WKT string with the keywords it lies inside (outermost first; a list
    that changes as the walk goes on) and the position its arguments start at."""
    stack: list[str] = []
    for m in _WKT_TOKEN.finditer(wkt):
        if m.group(0) == "]":
            if stack:
                stack.pop()
            continue
        word = m.group(1).upper()
        yield word, stack, m.end()
        stack.append(word)


def _wkt_units(wkt: str) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    """(horizontal, vertical) length units of a WKT 1 or 2 CRS: the UNIT of the projected CRS
    itself (or of one of its axes), not of its datum, base CRS or conversion parameters."""
    found: dict[str, tuple[str, float]] = {}
    for word, stack, end in _wkt_walk(wkt):
        if word in _UNIT and stack:
            for kind, owners in (("h", _PROJECTED), ("v", _VERTICAL)):
                at = max((i for i, w in enumerate(stack) if w in owners), default=None)
                if at is not None and all(w == "AXIS" for w in stack[at + 1 :]):
                    args = _UNIT_ARGS.match(wkt, end)
                    if args and kind not in found:
                        name = args.group(1)
                        found[kind] = (name, _metres_per(name, float(args.group(2))))
    if "h" not in found and _GEOGRAPHIC.match(wkt):
        found["h"] = DEGREES
    return found.get("h"), found.get("v")


def crs_units(las: laspy.LasData) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    """(horizontal, vertical) length units of a file's CRS as (name, metres per unit), each
    None when the file does not say: from its WKT (VLR or EVLR), else its GeoTIFF keys."""
    records = [*las.header.vlrs, *(las.evlrs or [])]
    for rec in records:
        if rec.user_id == "LASF_Projection" and hasattr(rec, "string"):
            h, v = _wkt_units(rec.string)
            if h or v:
                return h, v
    for rec in records:
        if rec.user_id == "LASF_Projection" and hasattr(rec, "geo_keys"):
            keys = {k.id: k.value_offset for k in rec.geo_keys if k.tiff_tag_location == 0}
            h = DEGREES if keys.get(1024) == 2 else _EPSG_UNITS.get(keys.get(3076))
            return h, _EPSG_UNITS.get(keys.get(4099))
    return None, None


_HORIZONTAL = _PROJECTED | {"GEOGCS", "GEOGCRS", "GEOGRAPHICCRS", "BASEGEOGCRS"}
_EPSG_ARGS = re.compile(r'\s*"EPSG"\s*,\s*"?(\d+)"?', re.IGNORECASE)


def _wkt_epsg(wkt: str) -> int | None:
    """EPSG code of a WKT 1 or 2 CRS's horizontal part: the AUTHORITY (or ID) of its projected
    CRS, else of its geographic CRS; never of a datum, unit, axis or vertical CRS."""
    for word, stack, end in _wkt_walk(wkt):
        if word in ("AUTHORITY", "ID") and stack and stack[-1] in _HORIZONTAL:
            outer = [w for w in stack[:-1] if w in _HORIZONTAL]
            args = _EPSG_ARGS.match(wkt, end)
            if args and not outer:  # the outermost horizontal CRS (not a projection's base)
                return int(args.group(1))
    return None


def crs_epsg(las) -> int | None:
    """EPSG code of a file's horizontal CRS (projected, else geographic), or None when it gives
    none: from its WKT (VLR or EVLR), else its GeoTIFF keys. ``las``: a file or its header."""
    header = getattr(las, "header", las)
    records = [*header.vlrs, *(getattr(las, "evlrs", None) or header.evlrs or [])]
    for rec in records:
        if rec.user_id == "LASF_Projection" and hasattr(rec, "string"):
            code = _wkt_epsg(rec.string)
            if code is not None:
                return code
    for rec in records:
        if rec.user_id == "LASF_Projection" and hasattr(rec, "geo_keys"):
            keys = {k.id: k.value_offset for k in rec.geo_keys if k.tiff_tag_location == 0}
            for key in (3072, 2048):  # ProjectedCSTypeGeoKey, GeographicTypeGeoKey
                if keys.get(key) not in (None, 0, 32767):  # 32767: user-defined
                    return int(keys[key])
    return None


def units_warning(las: laspy.LasData) -> str | None:
    """What is wrong with a file whose CRS is not in metres, or None: uxbseg's distances (the
    100 m TPI radius, 1 m DEM cells, relief radii, the TPI colour scale) are metres, and are
    applied to the coordinates as they are."""
    h, v = crs_units(las)
    off = [(axis, u) for axis, u in (("horizontal", h), ("vertical", v)) if u]
    off = [(axis, u) for axis, u in off if not abs(u[1] - 1.0) <= 1e-3]  # NaN: degrees
    if not off:
        return None
    said = " and ".join(
        f"its CRS's {axis} unit is the {name} ({m:g} m)"
        if math.isfinite(m)
        else "its coordinates are latitude and longitude in degrees (a geographic CRS)"
        for axis, (name, m) in off
    )
    return (
        f"{said}: uxbseg's distances (the 100 m TPI radius, 1 m DEM cells, relief "
        "radii, training-tile windows) are applied to the coordinates as metres, so the model "
        "sees this file at another scale; reproject it to a metric CRS first (e.g. PDAL's "
        "filters.reprojection)"
    )


def header_box(header) -> tuple[np.ndarray, np.ndarray] | None:
    """The XY box a LAS header states, in raw integer units (lo, hi), or None when it cannot be
    a box of points (not finite, inverted, or all zero - writers that leave it unset)."""
    lo, hi = np.asarray(header.mins[:2], float), np.asarray(header.maxs[:2], float)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (lo > hi).any():
        return None
    if not lo.any() and not hi.any():
        return None
    scale, offset = np.asarray(header.scales[:2]), np.asarray(header.offsets[:2])
    return np.round((lo - offset) / scale), np.round((hi - offset) / scale)


def xy_box(reader, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The XY box (mins, maxs; CRS units) of the LAS file ``path`` open in ``reader``
    (``laspy.open``): its header's, or its points' (read a chunk at a time) where the header
    states none (:func:`header_box`), with a warning where the points' box differs."""
    h = reader.header
    if header_box(h) is not None:
        return np.asarray(h.mins[:2]), np.asarray(h.maxs[:2])
    lo, hi = _points_box(reader)
    stated = np.r_[h.mins[:2], h.maxs[:2]]
    if not np.allclose(np.r_[lo, hi], stated, rtol=0, atol=max(h.scales[:2])):
        log.warning(
            "%s: its header states no usable box (x %s..%s, y %s..%s); its points' box is "
            "taken (rewrite the header: e.g. pdal translate)",
            path, h.mins[0], h.maxs[0], h.mins[1], h.maxs[1],
        )  # fmt: skip
    return lo, hi


def _points_box(reader, chunk: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
    """The XY box (CRS units) of the points of an open LAS ``reader``, read a chunk at a time."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for pts in reader.chunk_iterator(chunk):
        for i, raw in enumerate((pts.X, pts.Y)):
            raw = np.asarray(raw)
            lo[i], hi[i] = min(lo[i], raw.min()), max(hi[i], raw.max())
    h = reader.header
    scale, offset = np.asarray(h.scales[:2]), np.asarray(h.offsets[:2])
    return lo * scale + offset, hi * scale + offset


def header_box_note(las, limits) -> str | None:
    """What to tell about a file whose header's XY box does not hold its points (raw XY
    ``limits``, ``((X min, X max), (Y min, Y max))``), or None: surveys are grouped by the
    headers' boxes (``uxbseg.survey``), so such a file may be predicted apart from its
    neighbours. None too for a header without a usable box (:func:`header_box`), whose
    points' box the survey takes instead."""
    box = header_box(las.header)
    if box is None:  # no box at all: the survey takes the points' (and says so)
        return None
    (x0, x1), (y0, y1) = limits
    (blx, bly), (bhx, bhy) = box
    if x0 >= blx - 1 and y0 >= bly - 1 and x1 <= bhx + 1 and y1 <= bhy + 1:
        return None
    h = las.header
    stated = f"x {h.mins[0]:.2f}..{h.maxs[0]:.2f}, y {h.mins[1]:.2f}..{h.maxs[1]:.2f}"
    sx, sy = h.scales[:2]
    ox, oy = h.offsets[:2]
    actual = f"x {x0 * sx + ox:.2f}..{x1 * sx + ox:.2f}, y {y0 * sy + oy:.2f}..{y1 * sy + oy:.2f}"
    return (
        f"its header states the box {stated}, its points span {actual}: surveys are found "
        "from the headers, so it may be predicted apart from its neighbours or without their "
        "points; rewrite the header (e.g. pdal translate, or lasinfo -repair_bb)"
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


_VLR_HEADER = 54  # reserved 2, user id 16, record id 2, length 2, description 32


def read_raw_vlrs(path: str | Path) -> list[tuple[str, int, bytes]]:
    """The VLRs of a LAS/LAZ file as stored: (user id, record id, header + payload bytes)."""
    with open(path, "rb") as f:
        head = f.read(375)
        header_size = int.from_bytes(head[94:96], "little")
        count = int.from_bytes(head[100:104], "little")
        f.seek(header_size)
        out = []
        for _ in range(count):
            vh = f.read(_VLR_HEADER)
            if len(vh) < _VLR_HEADER:
                break
            length = int.from_bytes(vh[20:22], "little")
            user = vh[2:18].split(b"\0", 1)[0].decode("ascii", "replace")
            out.append((user, int.from_bytes(vh[18:20], "little"), vh + f.read(length)))
    return out


def _restore_vlr_bytes(raw_vlrs: list[tuple[str, int, bytes]], dst: Path) -> None:
    """Put the input's VLRs back byte for byte where laspy re-encoded them.

    laspy rebuilds some VLRs from their parsed form: the extra-bytes descriptions lose fields it
    does not keep (min, max, no_data), a GeoKeyDirectory gets its key count recomputed. A rebuilt
    record of the same length gets the original bytes back; an extra-bytes record that grew by
    added dimensions gets the original bytes in front of laspy's new descriptions.
    """
    originals: dict[tuple[str, int], list[bytes]] = {}
    for user, rid, data in raw_vlrs:
        originals.setdefault((user, rid), []).append(data)
    seen: dict[tuple[str, int], int] = {}
    with open(dst, "r+b") as f:
        head = f.read(375)
        pos = int.from_bytes(head[94:96], "little")
        for _ in range(int.from_bytes(head[100:104], "little")):
            f.seek(pos)
            vh = f.read(_VLR_HEADER)
            length = int.from_bytes(vh[20:22], "little")
            user = vh[2:18].split(b"\0", 1)[0].decode("ascii", "replace")
            key = (user, int.from_bytes(vh[18:20], "little"))
            i = seen[key] = seen.get(key, -1) + 1
            want = originals.get(key, [])
            if i < len(want) and user != "laszip encoded":
                orig = want[i]
                payload = len(orig) - _VLR_HEADER
                if length == payload or (key == ("LASF_Spec", 4) and length > payload):
                    f.seek(pos)
                    f.write(orig[:20])  # reserved, user id, record id
                    f.seek(pos + 22)
                    f.write(orig[22:])  # description, payload (record length stays)
            pos += _VLR_HEADER + length


def _keep_vlrs_verbatim(las: laspy.LasData, raw_vlrs: list[tuple[str, int, bytes]]) -> None:
    """Swap laspy's parsed VLRs for raw ones holding the input's exact bytes.

    laspy re-encodes the VLRs it understands (a WKT string gains a terminating NUL, a
    GeoKeyDirectory its recomputed key count); raw VLRs are written as they are. The extra-bytes
    record stays parsed - laspy must describe the point format with it - and gets its original
    bytes back after writing (:func:`_restore_vlr_bytes`).
    """
    raw = [
        v
        for v in raw_vlrs
        if v[0] not in ("laszip encoded", "copc") and (v[0], v[1]) != ("LASF_Spec", 4)
    ]
    keep = [v for v in las.header.vlrs if not isinstance(v, laspy.vlrs.known.ExtraBytesVlr)]
    if len(raw) != len(keep):  # unexpected layout: leave laspy's encoding
        log.debug("%d raw VLRs vs %d parsed; not swapping", len(raw), len(keep))
        return
    swapped = iter(
        laspy.VLR(
            user, rid, data[22:54].split(b"\0", 1)[0].decode("ascii", "replace"), data[_VLR_HEADER:]
        )
        for user, rid, data in raw
    )
    vlrs = las.header.vlrs  # changed in place: a new list makes laspy rebuild extra bytes
    for i, v in enumerate(vlrs):
        if not isinstance(v, laspy.vlrs.known.ExtraBytesVlr):
            vlrs[i] = next(swapped)


def _copy_with_records(las: laspy.LasData, src: str | Path, dst: Path) -> bool:
    """Write ``dst`` as the uncompressed LAS ``src`` byte for byte, with ``las``'s point records.

    When only point values changed (same count, same record layout), the header (its counts
    and bounds stay true), every VLR, any padding, the EVLRs all stay as stored - and laspy's
    re-encoding and per-file statistics are skipped. Returns False, writing nothing, when
    ``src`` is compressed or its layout does not match ``las``.
    """
    records = las.points.array
    try:
        with laspy.open(src) as reader:
            h = reader.header
            if h.are_points_compressed:
                return False
            start, size, count = h.offset_to_point_data, h.point_format.size, h.point_count
    except Exception:  # an unreadable source: let laspy's own writer decide
        return False
    end = start + size * count
    if (
        h.point_format.id != las.header.point_format.id
        or count != len(records)
        or records.dtype.itemsize != size
        or not records.flags.c_contiguous
        or Path(src).stat().st_size < end
    ):
        return False
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(start))  # header, VLRs and anything up to the points
        fout.write(records.view(np.uint8).reshape(-1))
        fin.seek(end)
        shutil.copyfileobj(fin, fout)  # EVLRs and any trailing bytes
    return True


def _drop_copc_index(las: laspy.LasData, dst: Path) -> None:
    """COPC in -> plain LAZ out, without COPC's info VLR and hierarchy EVLR.

    Those records hold byte offsets of the COPC octree, which no longer match a rewritten file
    (laspy cannot write them either); every other VLR and EVLR is kept.
    """
    copc = [v for v in las.header.vlrs if v.user_id == "copc"]
    if not copc:
        return
    for v in copc:
        las.header.vlrs.remove(v)
    if las.evlrs:
        for v in [v for v in las.evlrs if v.user_id == "copc"]:
            las.evlrs.remove(v)
    log.warning(
        "%s: COPC input written as plain LAZ; its COPC index records are not copied", dst.name
    )


def write_classified(
    las: laspy.LasData,
    codes: np.ndarray,
    dst: str | Path,
    compress: bool,
    src: str | Path | None = None,
    keep_classification: bool = False,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``las`` with new classification codes, everything else unchanged, atomically.

    Same points in the same order; every other dimension, the header's version, point format,
    scales and offsets, all VLRs and EVLRs stay as read. With ``keep_classification`` the codes go
    to a new ``uxb_class`` dimension instead. ``extra`` adds float32 dimensions (probabilities).
    The file is written to a temporary name in the same folder and renamed; on any error no
    output file is left. ``src`` (the input file) lets re-encoded VLRs be restored byte for
    byte.
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
    _drop_copc_index(las, dst)
    if keep_classification:
        las.add_extra_dim(laspy.ExtraBytesParams("uxb_class", "u1", description="uxbseg class"))
        las.uxb_class = codes.astype(np.uint8)
    else:
        las.classification = codes.astype(np.uint8)
    if extra:
        las.add_extra_dims([laspy.ExtraBytesParams(n, "f4") for n in extra])
        for name, values in extra.items():
            las[name] = values.astype(np.float32)
    same_layout = src is not None and not (compress or keep_classification or extra)
    with replacing(dst) as tmp:
        if not (same_layout and _copy_with_records(las, src, tmp)):  # else laspy re-encodes
            raw_vlrs = read_raw_vlrs(src) if src is not None else None
            if raw_vlrs is not None:
                _keep_vlrs_verbatim(las, raw_vlrs)
            las.write(tmp, do_compress=compress)
            if raw_vlrs is not None:
                _restore_vlr_bytes(raw_vlrs, tmp)
    return dst
