"""Surveys: point clouds that tile one area (a delivery of 1 km files), predicted as one.

A mound on the line between two files is half in each. Predicted file by file, each half is
classified in a window that ends at its file's edge, with the other half out of view, and the
two halves may not even get the same class. When the files given to ``predict`` lie side by
side they form a survey: its windows (:mod:`uxbseg.windows`) are laid over the whole area, the
same plan in every file, and each window reads the points of every file inside it (and, to
render its TPI image, those within the TPI radius around it). A point is then classified
exactly as in one file holding the whole survey, while each file is still read, written and
held in memory on its own, with strips of its neighbours. A window that classifies points of
several files runs once, for the first, and is kept for the others (:class:`WindowDone`); the
neighbours' points are decoded once into a store on disk (:class:`PointStore`).

Files are neighbours when their XY boxes (from their headers) lie within a window side of each
other, they do not name different CRSs (EPSG codes), and their boxes overlap by at most
:data:`SURVEY_OVERLAP` of the smaller one's area: files covering the same ground (overlapping
flight strips, a file and its copy, tiles in local coordinates) are not merged, and are
predicted each on its own; nor are files side by side among which two share most of their
ground (the pieces of several areas cut in one local frame), which would read one area's points
on top of another's.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import laspy
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from .errors import BadDataError
from .io.las import POINT_FIELDS, PointArrays, crs_epsg, read_point_fields, xy_box
from .io.raster import TPI_RADIUS_M
from .windows import WindowPlan, crs_bounds, plan_for

__all__ = [
    "SURVEY_OVERLAP",
    "PointStore",
    "Survey",
    "SurveyContext",
    "SurveyFile",
    "WindowDone",
    "find_surveys",
    "points_in_box",
    "read_headers",
    "survey_windows",
]

log = logging.getLogger(__name__)

SURVEY_OVERLAP = 0.01
"""Largest overlap of two neighbouring files' boxes, a fraction of the smaller box's area:
tiles of one delivery touch or share a few point spacings; more is the same ground twice."""

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (CRS units)
Frame = tuple[tuple[float, float, float], tuple[float, float, float]]  # scales, offsets


@dataclass(frozen=True)
class SurveyFile:
    """One input file, as its header describes it."""

    path: Path
    image: Path | None
    bounds: Box
    scales: tuple[float, float, float]
    offsets: tuple[float, float, float]
    points: int
    epsg: int | None = None  # its CRS's EPSG code, when it names one

    @classmethod
    def from_header(cls, path: Path, image: Path | None) -> SurveyFile | None:
        """The file's header box (its points' box where the header's cannot be one: unset,
        inverted, not finite); None when the header cannot be read (predict reports it)."""
        try:
            with laspy.open(path) as reader:
                h = reader.header
                if h.point_count == 0:
                    return None
                lo, hi = xy_box(reader, path)
                return cls(
                    path,
                    image,
                    (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                    tuple(float(s) for s in h.scales),
                    tuple(float(o) for o in h.offsets),
                    int(h.point_count),
                    crs_epsg(h),
                )
        except Exception:  # unreadable: predict names it when it reads the file
            return None


@dataclass
class WindowDone:
    """A window of the survey run for one file, kept for a neighbour whose points it classifies
    too, so that the neighbour does not run it again."""

    bounds: Box
    index: np.ndarray  # positions in the neighbour's file of the points the window classifies
    classes: np.ndarray  # their classes
    probs: np.ndarray | None  # their class probabilities (K, n), when asked for
    grid: np.ndarray  # the window's voxel classes
    scores: np.ndarray  # the probability of each point's class


@dataclass(eq=False)
class Survey:
    """Files that tile one area, in the order they were given, and the windows run for some of
    them that classify points of others still to come."""

    files: tuple[SurveyFile, ...]
    reach: float  # how far (CRS units) beyond a file its windows and their TPI radius go
    store: PointStore
    done: dict[Path, dict[tuple[int, int], WindowDone]] = field(default_factory=dict)
    finished: set[Path] = field(default_factory=set)

    _near: dict[Path, list[SurveyFile]] = field(default_factory=dict, repr=False)
    _by_path: dict[Path, SurveyFile] = field(init=False, repr=False)
    _order: dict[Path, int] = field(init=False, repr=False)
    _boxes: np.ndarray = field(init=False, repr=False)  # (files, 4) their bounds

    def __post_init__(self) -> None:
        self._by_path = {f.path: f for f in self.files}
        self._order = {f.path: k for k, f in enumerate(self.files)}
        self._boxes = np.array([f.bounds for f in self.files], dtype=np.float64)

    def meeting(self, box: Box, also: Path | None = None) -> list[SurveyFile]:
        """The files whose boxes meet ``box`` (touching counts), and the file ``also``, in the
        survey's order (one comparison of arrays, not a loop over 10,000 files a file)."""
        b = self._boxes
        hit = (b[:, 0] <= box[2]) & (box[0] <= b[:, 2]) & (b[:, 1] <= box[3]) & (box[1] <= b[:, 3])
        if also is not None:
            hit[self._order[also]] = True
        return [self.files[k] for k in np.flatnonzero(hit)]

    def within_reach(self, f: SurveyFile) -> list[SurveyFile]:
        """The other files whose points the windows of ``f`` may read, and the other way."""
        if f.path not in self._near:
            x0, y0, x1, y1 = f.bounds
            r = self.reach
            box = (x0 - r, y0 - r, x1 + r, y1 + r)
            self._near[f.path] = [g for g in self.meeting(box) if g is not f]
        return self._near[f.path]

    def needed_later(self, f: SurveyFile) -> bool:
        """Whether a file still to come will read points of ``f``."""
        return any(g.path not in self.finished for g in self.within_reach(f))

    def finish(self, path: Path) -> None:
        """``path`` is predicted (or failed): its kept windows go, none are kept for it, and the
        points of files no file still to come reads leave the store."""
        self.done.pop(path, None)
        self.finished.add(path)
        for f in self.within_reach(self.file(path)):  # only they can stop being needed
            if f.path in self.store and not self.needed_later(f):
                self.store.drop(f.path)
        if path in self.store and not self.needed_later(self.file(path)):
            self.store.drop(path)

    @property
    def bounds(self) -> Box:
        """The box of all the files."""
        b = np.array([f.bounds for f in self.files])
        (x0, y0), (x1, y1) = b[:, :2].min(axis=0), b[:, 2:].max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def limits(self, las) -> tuple[tuple[int, int], tuple[int, int]]:
        """:attr:`bounds` as raw XY limits in ``las``'s frame (the same integers in every file
        that shares a scale and offset, so the same window plan)."""
        x0, y0, x1, y1 = self.bounds
        (sx, sy), (ox, oy) = las.header.scales[:2], las.header.offsets[:2]
        return (
            (round((x0 - ox) / sx), round((x1 - ox) / sx)),
            (round((y0 - oy) / sy), round((y1 - oy) / sy)),
        )

    def file(self, path: Path) -> SurveyFile:
        """The survey's entry for ``path``."""
        return self._by_path[path]


@dataclass
class Neighbour:
    """A neighbour's points among a file's context, and where to keep the windows run for the
    file that classify them (the neighbour is still to come and shares the file's frame)."""

    part: slice  # where its points are in the context's points
    index: np.ndarray  # their positions in its file
    keep: dict[tuple[int, int], WindowDone]


@dataclass
class SurveyContext:
    """A file among its neighbours, for :func:`~uxbseg.predict_windows.predict_windows`."""

    points: PointArrays  # the file's points and its neighbours' nearby, in the survey's order
    own: slice  # where the file's own points are in them
    limits: tuple[tuple[int, int], tuple[int, int]]  # raw XY limits of its own points
    images: list[tuple[Path, Box]] = field(default_factory=list)  # neighbours' (given images)
    neighbours: list[Neighbour] = field(default_factory=list)  # to keep windows for
    done: dict[tuple[int, int], WindowDone] = field(default_factory=dict)  # run for others

    @classmethod
    def build(
        cls,
        survey: Survey,
        path: Path,
        points: PointArrays,
        limits: tuple[tuple[int, int], tuple[int, int]],
        box: Box,
        frame: Frame,
    ) -> SurveyContext:
        """The points of ``path`` and those of its neighbours inside ``box`` (CRS units), in
        the frame ``(scales, offsets)`` of ``path``, with the windows run for its neighbours
        that classify its points."""
        parts: list[PointArrays] = []
        images, neighbours = [], []
        own, start = slice(0, 0), 0
        for f in survey.meeting(box, also=path):
            if f.path == path:
                own = slice(start, start + len(points))
                parts.append(points)
                start += len(points)
                continue
            try:
                fields = survey.store.fields(f)
            except BadDataError as exc:  # it fails on its own turn; this file goes on
                log.warning("%s is predicted without the points of %s: %s", path, f.path, exc)
                continue
            near, index = points_in_box(fields, (f.scales, f.offsets), box, frame)
            log.debug("%s: %d points of %s as context", path.name, len(near), f.path.name)
            if f.image is not None:
                images.append((f.image, f.bounds))
            if not len(near):
                continue
            # the same plan in both files (same frame): windows run here serve it later
            if (f.scales, f.offsets) == frame and f.path not in survey.finished:
                keep = survey.done.setdefault(f.path, {})
                neighbours.append(Neighbour(slice(start, start + len(near)), index, keep))
            parts.append(near)
            start += len(near)
        joined = points if len(parts) == 1 else PointArrays.join(parts)
        done = survey.done.get(path, {})
        return cls(joined, own, limits, images, neighbours, done)


class PointStore:
    """The neighbours' points, decoded once and kept on disk (:data:`POINT_FIELDS` as ``.npy``,
    16 bytes a point, read back memory-mapped) while files still to come read them: a LAZ file
    is then decompressed at most twice (for a neighbour before its own turn, then for itself),
    not once for each of up to eight neighbours."""

    def __init__(self, parent: Path) -> None:
        self.parent = Path(parent)  # a temporary folder is made in it when first needed
        self.folder: Path | None = None
        self.kept: dict[Path, Path] = {}
        self.failed: dict[Path, BadDataError] = {}  # unreadable: said once, not decoded again
        self.count = 0

    def __contains__(self, path: Path) -> bool:
        return path in self.kept

    def keep(self, path: Path, fields: dict[str, np.ndarray]) -> None:
        """Keep the fields of ``path``'s points (its own frame)."""
        if self.folder is None:
            self.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=".uxbseg-survey-", dir=self.parent))
        self.count += 1
        where = self.folder / str(self.count)
        where.mkdir(parents=True)
        for k in POINT_FIELDS:
            np.save(where / f"{k}.npy", np.asarray(fields[k]))
        self.kept[path] = where

    def fields(self, f: SurveyFile) -> dict[str, np.ndarray]:
        """The fields of ``f``'s points, decoded and kept when they are not kept yet."""
        if f.path in self.failed:
            raise self.failed[f.path]
        if f.path not in self.kept:
            try:
                self.keep(f.path, read_point_fields(f.path))
            except BadDataError as exc:
                self.failed[f.path] = exc
                raise
        where = self.kept[f.path]
        return {k: np.load(where / f"{k}.npy", mmap_mode="r") for k in POINT_FIELDS}

    def drop(self, path: Path) -> None:
        """Forget ``path``'s points."""
        shutil.rmtree(self.kept.pop(path), ignore_errors=True)

    def close(self) -> None:
        """Remove everything kept, and the folder."""
        self.kept.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def points_in_box(
    fields: dict[str, np.ndarray], source: Frame, box: Box, frame: Frame
) -> tuple[PointArrays, np.ndarray]:
    """The points of ``fields`` (raw X/Y/Z in the frame ``source``) inside ``box`` (CRS
    units, give or take a step of ``source``), with X/Y/Z in ``frame`` (the same integers when
    the frames agree, else the nearest of its steps), and their positions in ``fields``."""
    (scales, offsets), (to_scales, to_offsets) = source, frame
    # in raw integers (no float copy of the file's coordinates), to the step outside the box
    lo = [math.floor((box[i] - offsets[i]) / scales[i]) for i in (0, 1)]
    hi = [math.ceil((box[i + 2] - offsets[i]) / scales[i]) for i in (0, 1)]
    xr, yr = np.asarray(fields["X"]), np.asarray(fields["Y"])
    index = np.flatnonzero((xr >= lo[0]) & (xr <= hi[0]) & (yr >= lo[1]) & (yr <= hi[1]))
    same = source == frame
    out = {}
    for i, k in enumerate("XYZ"):
        raw = np.asarray(fields[k][index])
        if not same:
            crs = raw * scales[i] + offsets[i]
            raw = np.round((crs - to_offsets[i]) / to_scales[i]).astype(np.int32)
        out[k] = raw
    for k in POINT_FIELDS[3:]:
        out[k] = np.asarray(fields[k][index])
    return PointArrays(**out, scales=tuple(float(v) for v in to_scales)), index


def survey_windows(
    survey: Survey,
    path: Path,
    image: Path | None,
    las,
    points: PointArrays,
    limits: tuple[tuple[int, int], tuple[int, int]],
    plan: WindowPlan | None,
    side: float,
    overlap: float,
) -> tuple[WindowPlan | None, SurveyContext | None]:
    """The survey's window plan for the file ``path`` (its ``las``, its ``points`` with raw XY
    ``limits``, its ``image`` or None to render one) and the file among its neighbours' points;
    or (``plan``, None) to predict it on its own: when the survey is no larger than a tile of
    ``side``, or the file's points reach beyond the box its header gives (the plan comes from
    the headers)."""
    area = survey.limits(las)
    (x0, x1), (y0, y1) = limits
    if not (area[0][0] <= x0 and x1 <= area[0][1] and area[1][0] <= y0 and y1 <= area[1][1]):
        log.info(  # the domain check has warned of the header, with the fix
            "%s: its points reach beyond the bounds in its header, so it is predicted on its "
            "own, without its neighbours' points",
            path,
        )
        return plan, None
    survey_plan = plan_for(las, area, side, overlap)
    if survey_plan is None:
        return plan, None
    # the windows this file's points take, and (to render their TPI) the radius around them
    rows, cols = survey_plan.over(limits)
    nw, se = survey_plan.window(rows[0], cols[0]), survey_plan.window(rows[-1], cols[-1])
    scales, offsets = las.header.scales, las.header.offsets
    pad = [1 + (math.ceil(TPI_RADIUS_M / s) if image is None else 0) for s in scales[:2]]
    raw = ((nw.x[0] - pad[0], se.x[1] + pad[0]), (se.y[0] - pad[1], nw.y[1] + pad[1]))
    frame = tuple(float(s) for s in scales), tuple(float(o) for o in offsets)
    me = survey.file(path)
    if me.path not in survey.store and survey.needed_later(me):  # read now, so kept now
        survey.store.keep(me.path, {k: getattr(points, k) for k in POINT_FIELDS})
    context = SurveyContext.build(survey, me.path, points, limits, crs_bounds(las, raw), frame)
    return survey_plan, context


def read_headers(files: Sequence[tuple[Path, Path | None]]) -> list[SurveyFile]:
    """:class:`SurveyFile` of each of ``files`` ((point cloud, image or None)) whose header can
    be read and counts points, in their order."""
    return [f for f in (SurveyFile.from_header(p, i) for p, i in files) if f is not None]


def find_surveys(
    entries: Sequence[SurveyFile], side: float, store: PointStore
) -> dict[Path, Survey]:
    """The survey of each file of ``entries`` (:func:`read_headers`) that has neighbours within
    ``side`` (CRS units, the windows' side); files alone are not in it. The surveys keep the
    points their files read of each other in ``store``."""
    n = len(entries)
    if n < 2:
        return {}
    pairs = _file_pairs(entries, side)
    if len(pairs["crs"][0]):
        i, j = (int(v[0]) for v in pairs["crs"])
        log.warning(
            "%s (EPSG:%d) and %s (EPSG:%d) lie side by side in their coordinates but name "
            "different CRSs: they are not each other's context (reproject them to one CRS to "
            "predict them as one survey)",
            entries[i].path.name,
            entries[i].epsg,
            entries[j].path.name,
            entries[j].epsg,
        )
    if len(pairs["same"][0]):
        i, j = pairs["same"]
        log.info(
            "%d pair(s) of input files cover the same ground (e.g. %s and %s overlap by more "
            "than %.0f%% of the smaller): they are not each other's context",
            len(i),
            entries[i[0]].path.name,
            entries[j[0]].path.name,
            100 * SURVEY_OVERLAP,
        )
    i, j = pairs["near"]
    graph = csr_matrix((np.ones(len(i), bool), (i, j)), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    twice: dict[int, tuple[int, int]] = {}  # a component's first two files of one area
    for i, j in zip(*pairs["most"], strict=True):
        if group[i] == group[j]:
            twice.setdefault(int(group[i]), (int(i), int(j)))
    members: dict[int, list[SurveyFile]] = {}
    for k, f in zip(group, entries):
        members.setdefault(int(k), []).append(f)
    surveys = {}
    for k, fs in members.items():
        if len(fs) < 2:
            continue
        if k in twice:  # the area twice over: a window would read both on top
            i, j = twice[k]
            log.warning(
                "%d files lie side by side, but %s and %s among them cover the same ground "
                "(tiles of several areas in one local frame?): they are predicted each on its "
                "own, not as a survey; give each area's files in a run of their own",
                len(fs),
                entries[i].path.name,
                entries[j].path.name,
            )
            continue
        survey = Survey(tuple(fs), side + TPI_RADIUS_M + 1.0, store)
        surveys.update({f.path: survey for f in fs})
    return surveys


def _file_pairs(
    entries: Sequence[SurveyFile], side: float, block: int = 256
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pairs (i < j, row by row) of files: ``near`` (boxes within ``side``, not the same
    ground, not naming different CRSs), ``same`` (the same ground: boxes overlapping by more
    than :data:`SURVEY_OVERLAP` of the smaller), ``most`` (more than half of it: one area
    twice, not tiles' margins), ``crs`` (within ``side`` but naming different EPSG codes).
    Computed ``block`` files at a time against all: memory grows with the files, not their
    square (10,000 files of a national delivery)."""
    b = np.array([f.bounds for f in entries])
    x0, y0, x1, y1 = (b[:, k] for k in range(4))
    area = (x1 - x0) * (y1 - y0)
    epsg = np.array([-1 if f.epsg is None else f.epsg for f in entries])
    found: dict[str, tuple[list, list]] = {k: ([], []) for k in ("near", "same", "most", "crs")}
    n = len(entries)
    for start in range(0, n, block):
        r = slice(start, min(start + block, n))
        gap_x = np.maximum(x0[r, None] - x1[None, :], x0[None, :] - x1[r, None])
        gap_y = np.maximum(y0[r, None] - y1[None, :], y0[None, :] - y1[r, None])
        shared = np.maximum(-gap_x, 0) * np.maximum(-gap_y, 0)
        smaller = np.minimum(area[r, None], area[None, :])
        later = np.arange(n)[None, :] > np.arange(r.start, r.stop)[:, None]  # j > i
        same = (shared > SURVEY_OVERLAP * smaller) & later
        within = (np.maximum(gap_x, gap_y) <= side) & later & ~same
        other_crs = (epsg[r, None] != epsg[None, :]) & (epsg[r, None] >= 0) & (epsg[None, :] >= 0)
        for key, hit in (
            ("near", within & ~other_crs),
            ("same", same),
            ("most", (shared > 0.5 * smaller) & later),
            ("crs", within & other_crs),
        ):
            i, j = np.nonzero(hit)
            found[key][0].append(i + start)
            found[key][1].append(j)
    return {k: (np.concatenate(i), np.concatenate(j)) for k, (i, j) in found.items()}
