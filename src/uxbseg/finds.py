"""Finds: the plazuelas and structures of a classified point cloud as objects, and how many of
the real ones a prediction found.

An archaeologist counts mounds and platforms, not points. The points' classes are drawn on a
raster (:func:`~uxbseg.report.class_raster`: each cell the most frequent class of its points,
small gaps filled), cells of one class that touch (8-connected) form an object, and objects
smaller than :data:`FIND_MIN_AREA` are dropped as specks (in a survey, after the pieces a seam
between two files cut are joined). ``predict`` lists each file's finds in
``pred_<id>.finds.csv``, and those of the whole run in ``finds.csv`` and ``finds.geojson`` (each
find's outline, for a GIS); ``evaluate`` counts the true objects found and the predicted objects
that are real (:func:`object_counts`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .classes import CLASSES
from .io.files import replacing
from .report import cell_of, class_raster

__all__ = [
    "FIND_MIN_AREA",
    "FOUND_COVER",
    "SEAM_TOLERANCE",
    "Find",
    "count_finds",
    "find_objects",
    "merge_finds",
    "object_counts",
    "outline",
    "score_auc",
    "write_finds",
    "write_finds_geojson",
]

FIND_MIN_AREA = {"plazuela": 25.0, "structure": 4.0}
"""Smallest object kept of each class, in square CRS units (m²): a structure of 2 m x 2 m (the
smallest Maya house mounds are some 5 m across), a plazuela of 5 m x 5 m (a plaza with buildings
round it is larger; smaller patches are a platform's fringe). On 8 synthetic 300 m tiles, 25
instead of 4 m² raised the plazuelas' object precision from 0.43 to 0.54 at the same recall."""

FOUND_COVER = 0.5
"""A true object is found when at least this share of its cells are predicted its class, and
a predicted object is real when at least this share of its cells are truly its class."""

_POINTS_PER_CELL = 4.0  # the raster's cell holds about this many points on average
_MIN_CELL = 0.5  # CRS units: no finer, however dense the points
_CHUNK = 1 << 21  # points read at a time


Polygon = tuple[tuple[tuple[float, float], ...], ...]
"""Rings of (x, y) vertices, each closed (its first vertex repeated last): the exterior
anticlockwise, then its holes clockwise (GeoJSON's order, RFC 7946)."""


@dataclass(frozen=True)
class Find:
    """One object: its class, the centre of its cells, its area, the points of its class in
    it, and its bounding box (CRS units).

    ``outline``: the outline of its cells, one polygon a part (the parts of an object that
    touch only at a corner, or that a seam cut), empty when not traced. ``edge_part``: smaller
    than :data:`FIND_MIN_AREA`, kept only because it lies at its file's edge, where a seam may
    have cut a larger object (:func:`merge_finds` joins it to the other parts, or drops it).
    ``score``: the mean, over its points, of the probability the model gave their class (the
    softmax, before any logit adjustment; None where not known): for ranking finds to check,
    not a calibrated chance."""

    kind: str
    x: float
    y: float
    area: float
    points: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    outline: tuple[Polygon, ...] = field(default=(), repr=False, compare=False)
    edge_part: bool = field(default=False, compare=False)
    score: float | None = None


_COLUMNS = [f.name for f in fields(Find) if f.name not in ("outline", "edge_part")]  # finds.csv


@dataclass(frozen=True)
class _Grid:
    bounds: tuple[float, float, float, float]
    hw: tuple[int, int]
    cell: tuple[float, float]  # (x, y) size of a cell; the asked size along an axis of no span


def _grid(x, y, cell: float | None) -> _Grid:
    """A raster over the points' box with cells of ``cell`` (default: about
    :data:`_POINTS_PER_CELL` points a cell, at least :data:`_MIN_CELL`)."""
    bounds = (float(x.min()), float(y.min()), float(x.max()), float(y.max()))
    span_x, span_y = bounds[2] - bounds[0], bounds[3] - bounds[1]
    if cell is None:
        area = max(span_x, _MIN_CELL) * max(span_y, _MIN_CELL)
        cell = max(_MIN_CELL, math.sqrt(_POINTS_PER_CELL * area / max(len(x), 1)))
    h, w = max(1, math.ceil(span_y / cell)), max(1, math.ceil(span_x / cell))
    size = (span_x / w if span_x > 0 else cell, span_y / h if span_y > 0 else cell)
    return _Grid(bounds, (h, w), size)


def _objects(
    raster: np.ndarray, index: int, cell_area: float, edge: int | None = None
) -> tuple[np.ndarray, int]:
    """Labels (1..n, 0 elsewhere) of the 8-connected objects of class ``index`` at least
    :data:`FIND_MIN_AREA` of their class large, and, with ``edge``, the smaller ones that come
    within ``edge`` cells of the raster's border."""
    labels, n = ndimage.label(raster == index, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels, 0
    size = np.bincount(labels.ravel(), minlength=n + 1)
    keep = size * cell_area >= FIND_MIN_AREA[CLASSES[index].name]
    if edge is not None:
        e = max(edge, 1)
        rim = np.ones(raster.shape, bool)
        rim[e:-e, e:-e] = False
        keep[np.unique(labels[rim])] = True
    keep[0] = False
    renumber = np.zeros(n + 1, np.int64)
    renumber[keep] = np.arange(1, keep.sum() + 1)
    return renumber[labels], int(keep.sum())


def find_objects(
    x,
    y,
    classes: np.ndarray,
    cell: float | None = None,
    seam: float | None = None,
    scores: np.ndarray | None = None,
) -> list[Find]:
    """The plazuelas and structures among points at ``x``, ``y`` (CRS units; arrays or laspy's
    scaled views, read in chunks) with class indices ``classes``, on a raster of ``cell``
    (default: about four points a cell, at least 0.5). With ``seam`` (CRS units, e.g.
    :data:`SEAM_TOLERANCE`), objects smaller than :data:`FIND_MIN_AREA` within ``seam`` of the
    points' box are kept too, marked ``edge_part``: a seam between two files may have cut a
    larger object into them (:func:`merge_finds`). ``scores``: each point's probability of its
    class, averaged over a find's points into its ``score``."""
    if len(classes) == 0:
        return []
    g = _grid(x, y, cell)
    raster = class_raster(x, y, classes, g.bounds, g.hw, _CHUNK)
    (cx, cy), (x0, _, _, y1) = g.cell, g.bounds
    edge = None if seam is None else math.ceil(seam / min(cx, cy))
    finds = []
    for c in CLASSES[1:]:
        labels, n = _objects(raster, c.index, cx * cy, edge)
        if n == 0:
            continue
        rr, cc = np.nonzero(labels)
        lab = labels[rr, cc]
        ids = np.arange(1, n + 1)
        cells = np.bincount(lab, minlength=n + 1)[1:]
        mean_r = np.bincount(lab, rr, n + 1)[1:] / cells
        mean_c = np.bincount(lab, cc, n + 1)[1:] / cells
        lo_r, hi_r = ndimage.minimum(rr, lab, ids), ndimage.maximum(rr, lab, ids)
        lo_c, hi_c = ndimage.minimum(cc, lab, ids), ndimage.maximum(cc, lab, ids)
        pts, total = _point_sums(x, y, classes, c.index, labels, n, g, scores)
        for k in range(n):
            box = labels[lo_r[k] : hi_r[k] + 1, lo_c[k] : hi_c[k] + 1] == k + 1
            corner = (x0 + lo_c[k] * cx, y1 - lo_r[k] * cy)
            finds.append(
                Find(
                    c.name,
                    float(x0 + (mean_c[k] + 0.5) * cx),
                    float(y1 - (mean_r[k] + 0.5) * cy),
                    float(cells[k] * cx * cy),
                    int(pts[k]),
                    float(x0 + lo_c[k] * cx),
                    float(y1 - (hi_r[k] + 1) * cy),
                    float(x0 + (hi_c[k] + 1) * cx),
                    float(y1 - lo_r[k] * cy),
                    outline(box, corner, (cx, cy)),
                    edge_part=bool(cells[k] * (cx * cy) < FIND_MIN_AREA[c.name]),
                    score=None if total is None else float(total[k] / max(pts[k], 1)),
                )
            )
    return finds


def object_counts(
    x,
    y,
    truth: np.ndarray,
    pred: np.ndarray,
    cell: float | None = None,
    scores: np.ndarray | None = None,
    scored: dict[str, list[tuple[float, bool]]] | None = None,
) -> dict[str, dict[str, int]]:
    """For plazuela and structure: ``true`` objects in ``truth`` and how many were ``found``
    (at least :data:`FOUND_COVER` of their cells predicted their class); ``predicted`` objects
    and how many are ``real`` (at least that share of their cells truly their class). Points
    whose truth is IGNORE are left out of the truth.

    With ``scores`` (each point's probability of its predicted class) and ``scored`` (a list
    per class name), each predicted object's (score, real) is appended to its class's list:
    its score as :func:`find_objects` gives it, for :func:`score_auc`."""
    g = _grid(x, y, cell)
    t, p = (class_raster(x, y, v, g.bounds, g.hw, _CHUNK) for v in (truth, pred))
    area = g.cell[0] * g.cell[1]
    out = {}
    for c in CLASSES[1:]:
        counts = {}
        for name, hit, (objects, other) in (
            ("found", "true", (t, p)),
            ("real", "predicted", (p, t)),
        ):
            labels, n = _objects(objects, c.index, area)
            cells = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            agree = np.bincount(labels.ravel(), (other == c.index).ravel(), n + 1)[1:]
            ok = agree >= FOUND_COVER * cells
            counts[hit] = n
            counts[name] = int(ok.sum()) if n else 0
            if name == "real" and n and scores is not None and scored is not None:
                pts, total = _point_sums(x, y, pred, c.index, labels, n, g, scores)
                mean = total / np.maximum(pts, 1)
                scored.setdefault(c.name, []).extend(zip(mean.tolist(), ok.tolist(), strict=True))
        out[c.name] = {k: counts[k] for k in ("true", "found", "predicted", "real")}
    return out


def _point_sums(
    x, y, classes, index: int, labels: np.ndarray, n: int, g: _Grid, scores=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """For each of the ``n`` objects ``labels`` marks on ``g``: its points of class ``index``
    (those in its cells), and with ``scores`` the sum of theirs (read in chunks)."""
    pts = np.zeros(n + 1, np.int64)
    total = None if scores is None else np.zeros(n + 1)
    for a in range(0, len(classes), _CHUNK):
        mine = np.asarray(classes[a : a + _CHUNK]) == index
        part = slice(a, a + _CHUNK)
        row, col = cell_of(np.asarray(x[part])[mine], np.asarray(y[part])[mine], g.bounds, g.hw)
        pts += np.bincount(labels[row, col], minlength=n + 1)
        if total is not None:
            weights = np.asarray(scores[part], dtype=np.float64)[mine]
            total += np.bincount(labels[row, col], weights, minlength=n + 1)
    return pts[1:], None if total is None else total[1:]


def score_auc(pairs: list[tuple[float, bool]]) -> float | None:
    """How well the finds' scores rank the real above the false: the area under the ROC curve
    of (score, real) pairs (0.5: no better than chance, 1: every real find first); None
    without both a real and a false find."""
    real = [r for _, r in pairs]
    if all(real) or not any(real):
        return None
    import torch
    from torchmetrics.functional.classification import binary_auroc

    s = torch.tensor([v for v, _ in pairs], dtype=torch.float64)
    return float(binary_auroc(s, torch.tensor(real, dtype=torch.long)))


SEAM_TOLERANCE = 3.0
"""CRS units (m): two finds of one kind in neighbouring files are one object cut by the files'
seam when each lies within this of its file's edge and their boxes touch within it."""


def merge_finds(
    files: list[tuple[str, tuple[float, float, float, float], list[Find]]],
    tolerance: float = SEAM_TOLERANCE,
) -> list[tuple[Find, list[str]]]:
    """The finds of several files ((name, the file's XY bounds, its finds)) as one list, each
    with the names of the files it lies in: a plazuela or structure cut by the seam between
    two files (both parts at their file's edge, boxes touching) is one find, its area and
    points summed, its centre their area-weighted mean, its box their union. Parts marked
    ``edge_part`` (:func:`find_objects` with ``seam``) count where, joined, they reach
    :data:`FIND_MIN_AREA`: an object the seam cut into pieces each below it is not lost."""
    rows = [(name, b, f) for name, b, finds in files for f in finds]
    if not rows:
        return []
    box = np.array([[f.xmin, f.ymin, f.xmax, f.ymax] for _, _, f in rows])
    edge = np.array([b for _, b, _ in rows])
    t = tolerance
    at_edge = (
        (box[:, 0] - edge[:, 0] <= t)
        | (box[:, 1] - edge[:, 1] <= t)
        | (edge[:, 2] - box[:, 2] <= t)
        | (edge[:, 3] - box[:, 3] <= t)
    )
    pairs = []
    # parts at an edge against the parts at an edge of other files, swept along x: each meets
    # only those starting before it ends (a survey of 10,000 files has ~10^5 such parts)
    cut = np.flatnonzero(at_edge)
    cut = cut[np.argsort(box[cut, 0], kind="stable")]
    stop = np.searchsorted(box[cut, 0], box[cut, 2] + t, side="right")
    for a, i in enumerate(cut):
        j = cut[a + 1 : stop[a]]  # those with xmin <= its xmax + t
        touch = (
            (box[i, 0] <= box[j, 2] + t)
            & (box[j, 1] <= box[i, 3] + t)
            & (box[i, 1] <= box[j, 3] + t)
        )
        pairs += [
            (i, k)
            for k in j[touch]
            if rows[k][0] != rows[i][0] and rows[k][2].kind == rows[i][2].kind
        ]
    n = len(rows)
    i, k = (np.array([p[m] for p in pairs], dtype=np.int64) for m in (0, 1))
    graph = coo_matrix((np.ones(len(pairs)), (i, k)), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    parts: dict[int, list[int]] = {}
    for idx, g in enumerate(group):
        parts.setdefault(int(g), []).append(idx)
    out = []
    for ks in parts.values():
        fs = [rows[k][2] for k in ks]
        area = sum(f.area for f in fs)
        if all(f.edge_part for f in fs) and area < FIND_MIN_AREA[fs[0].kind] * (1 - 1e-9):
            continue  # a speck at an edge, or pieces too small even together
        merged = Find(
            fs[0].kind,
            sum(f.x * f.area for f in fs) / area,
            sum(f.y * f.area for f in fs) / area,
            area,
            sum(f.points for f in fs),
            min(f.xmin for f in fs),
            min(f.ymin for f in fs),
            max(f.xmax for f in fs),
            max(f.ymax for f in fs),
            tuple(p for f in fs for p in f.outline),
            score=_mean_score(fs),
        )
        out.append((merged, sorted({rows[k][0] for k in ks})))
    return out


def _mean_score(parts: list[Find]) -> float | None:
    """The score of finds joined into one: their scores weighted by their points."""
    if any(f.score is None for f in parts):
        return None
    points = sum(f.points for f in parts)
    if points == 0:
        return sum(f.score for f in parts) / len(parts)
    return sum(f.score * f.points for f in parts) / points


def _value(v) -> str | int:
    """A CSV cell: text and counts as they are, numbers to the hundredth, None empty."""
    if v is None:
        return ""
    return v if isinstance(v, (str, int)) else f"{v:.2f}"


def write_finds(path: str | Path, finds: list[Find], files: list[list[str]] | None = None) -> Path:
    """``finds`` as CSV (one row each, a header row of :class:`Find`'s columns (no outline),
    and with ``files`` a last column naming the files each lies in, ``;`` between them), written
    under a temporary name and renamed."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(_COLUMNS + (["files"] if files is not None else []))
        for i, find in enumerate(finds):
            row = [_value(getattr(find, name)) for name in _COLUMNS]
            out.writerow(row + ([";".join(files[i])] if files is not None else []))
    return path


def count_finds(path: str | Path) -> dict[str, int]:
    """How many plazuelas and structures a CSV of :func:`write_finds` lists."""
    with open(path, newline="", encoding="utf-8") as f:
        kinds = [row["kind"] for row in csv.DictReader(f)]
    return {c.name: kinds.count(c.name) for c in CLASSES[1:]}


def write_finds_geojson(
    path: str | Path,
    finds: list[Find],
    files: list[list[str]] | None = None,
    epsg: int | None = None,
) -> Path:
    """``finds`` as a GeoJSON FeatureCollection for a GIS: each a MultiPolygon of its outline
    (its box where it has none), with the CSV's columns as properties; coordinates in the
    files' CRS, named by ``epsg`` (the ``crs`` member QGIS and GDAL read; RFC 7946 itself knows
    only longitude and latitude), to the centimetre. Written under a temporary name and
    renamed."""
    path = Path(path)
    features = []
    for i, find in enumerate(finds):
        polygons = find.outline or (
            (
                (
                    (find.xmin, find.ymin),
                    (find.xmax, find.ymin),
                    (find.xmax, find.ymax),
                    (find.xmin, find.ymax),
                    (find.xmin, find.ymin),
                ),
            ),
        )
        coords = [[[[round(x, 2), round(y, 2)] for x, y in ring] for ring in p] for p in polygons]
        props = {
            name: round(v, 2) if isinstance(v, float) else v
            for name in _COLUMNS
            for v in [getattr(find, name)]
        }
        if files is not None:
            props["files"] = ";".join(files[i])
        geometry = {"type": "MultiPolygon", "coordinates": coords}
        features.append({"type": "Feature", "properties": props, "geometry": geometry})
    doc: dict = {"type": "FeatureCollection", "name": path.stem}
    if epsg is not None:
        doc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
    doc["features"] = features
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    return path


_RIGHT = {(0, 1): (1, 0), (1, 0): (0, -1), (0, -1): (-1, 0), (-1, 0): (0, 1)}
"""A (row, col) heading turned right (rows growing downwards)."""
_SIDES = (  # (neighbour, start corner, end corner) of a cell's side, clockwise from the top
    ((-1, 0), (0, 0), (0, 1)),
    ((0, 1), (0, 1), (1, 1)),
    ((1, 0), (1, 1), (1, 0)),
    ((0, -1), (1, 0), (0, 0)),
)


def _cycles(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The boundary of the cells of ``mask`` (H, W) as cycles of cell-corner (row, col)
    vertices. Each side between a cell and a non-cell runs with the cell on its right
    (clockwise round an object, rows growing downwards); at a corner where two cells touch only
    diagonally a cycle turns right, so that each 4-connected part gets an outline of its own."""
    m = np.pad(mask.astype(bool), 1)
    h, w = mask.shape
    sides: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for (dr, dc), (sr, sc), (er, ec) in _SIDES:
        r, c = np.nonzero(m[1:-1, 1:-1] & ~m[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w])
        starts = zip((r + sr).tolist(), (c + sc).tolist())
        sides += zip(starts, zip((r + er).tolist(), (c + ec).tolist()))
    leaving: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in sides:
        leaving.setdefault(a, []).append(b)
    todo, cycles = set(sides), []
    while todo:
        first = todo.pop()
        cycle, (a, b) = [first[0]], first
        while True:
            ends = leaving[b]
            nxt = ends[0]
            if len(ends) > 1:  # two cells meet at this corner only: turn right
                turn = _RIGHT[(b[0] - a[0], b[1] - a[1])]
                nxt = next(e for e in ends if (e[0] - b[0], e[1] - b[1]) == turn)
            if (b, nxt) == first:
                break
            todo.discard((b, nxt))
            cycle.append(b)
            a, b = b, nxt
        cycles.append(cycle)
    return cycles


def _simple_rings(cycle: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """A cycle cut at each vertex it passes twice into simple rings (a cycle round a hole that
    touches the outside at a corner becomes the outside's ring and the hole's)."""
    rings, stack, seen = [], [], {}
    for v in cycle:
        if v in seen:
            at = seen[v]
            rings.append(stack[at:])
            for u in stack[at + 1 :]:
                del seen[u]
            del stack[at + 1 :]
        else:
            seen[v] = len(stack)
            stack.append(v)
    rings.append(stack)
    return rings


def _turns(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The vertices of a closed ring where its direction changes."""
    out = []
    for i, (r, c) in enumerate(ring):
        (pr, pc), (nr, nc) = ring[i - 1], ring[(i + 1) % len(ring)]
        if (r - pr, c - pc) != (nr - r, nc - c):
            out.append((r, c))
    return out


def _area(ring: list[tuple[int, int]]) -> float:
    """Signed area in cells (shoelace over (col, row)): positive for a ring with the cells on
    its right (an outside outline of :func:`_cycles`), negative round a hole."""
    rc = np.asarray(ring, dtype=np.float64)
    r, c = rc[:, 0], rc[:, 1]
    return 0.5 * float(np.sum(c * np.roll(r, -1) - np.roll(c, -1) * r))


def outline(
    mask: np.ndarray, corner: tuple[float, float], cell: tuple[float, float]
) -> tuple[Polygon, ...]:
    """The outline of the cells of ``mask`` (H, W; row 0 at the top) on a map whose cell
    (0, 0)'s top-left corner is at ``corner`` (x, y) and whose cells are ``cell`` (x, y) in
    size: one polygon for each 4-connected part, its exterior and then its holes; vertices
    only where the outline turns."""
    x0, y0 = corner
    cx, cy = cell
    parts, _ = ndimage.label(mask)  # 4-connected
    polygons = []
    for k, (rows, cols) in enumerate(ndimage.find_objects(parts), start=1):
        rings = [
            _turns(ring)
            for cycle in _cycles(parts[rows, cols] == k)
            for ring in _simple_rings(cycle)
        ]
        rings.sort(key=_area, reverse=True)  # a part's one outside outline, then its holes

        def xy(ring, r0=rows.start, c0=cols.start) -> tuple[tuple[float, float], ...]:
            # reversed: the cells on the left, anticlockwise round the part on the map
            pts = [(x0 + (c0 + c) * cx, y0 - (r0 + r) * cy) for r, c in reversed(ring)]
            return tuple(pts + pts[:1])

        polygons.append(tuple(xy(ring) for ring in rings))
    return tuple(polygons)
