"""Prediction: voxel grid from the model, classes back onto every point, classified LAS/LAZ out."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .classes import CLASSES, class_to_las_code
from .config import Config
from .data.voxelize import GridSpec, raw_xy_limits, voxelize
from .decision import decide
from .domain import DomainCheck
from .errors import BadDataError, UXBError
from .finds import (
    SEAM_TOLERANCE,
    Find,
    find_objects,
    merge_finds,
    write_finds,
    write_finds_geojson,
)
from .inference import default_device, infer_tile, model_for_inference, render_tpi_image
from .io.files import replacing
from .io.las import (
    PointArrays,
    crs_epsg,
    is_compressed,
    read_las,
    write_classified,
)
from .io.raster import TPI_RADIUS_M, load_image
from .predict_report import PredictReport
from .predict_resume import RunRecord, run_settings, survey_digest
from .predict_windows import WindowGrids, predict_windows
from .run_dirs import require_folder
from .runtime import progress_options
from .survey import (
    PointStore,
    Survey,
    SurveyFile,
    find_surveys,
    read_headers,
    survey_windows,
)
from .windows import WINDOW_OVERLAP, crs_bounds, plan_for

__all__ = [
    "GPU_WINDOW_BATCH",
    "SURVEY_FINDS",
    "PredictJob",
    "PredictResult",
    "check_jobs",
    "finds_path",
    "output_paths",
    "predict_files",
    "resolve_window",
    "window_batch",
]

log = logging.getLogger(__name__)


@dataclass
class PredictJob:
    """One input: its point cloud, optional image, and the id used in output names."""

    las: Path
    image: Path | None
    out_id: str


@dataclass
class PredictResult:
    """What happened to one input."""

    job: PredictJob
    npy: Path | None = None
    las: Path | None = None
    points: int = 0
    counts: dict[str, int] | None = None
    error: str | None = None
    windows: int = 0  # 0: predicted as one tile; else the windows over it (npy: their folder)
    side: float | None = None  # their side (CRS units)
    overlap: float | None = None  # their least overlap (a fraction of the side)
    survey: int = 0  # files of the survey whose windows it was predicted in (0: on its own)
    found: list[Find] | None = None  # plazuelas and structures found (pred_<id>.finds.csv)
    edge_parts: list[Find] = field(default_factory=list)  # smaller ones at its edge (merge_finds)
    bounds: tuple[float, float, float, float] | None = None  # the points' XY box (CRS units)
    epsg: int | None = None  # EPSG code of the file's horizontal CRS, where it names one
    kept: bool = False  # its outputs were an earlier run's, kept (predict --resume)

    @property
    def finds(self) -> dict[str, int] | None:
        """How many plazuelas and structures were found."""
        if self.found is None:
            return None
        return {c.name: sum(f.kind == c.name for f in self.found) for c in CLASSES[1:]}


def output_paths(job: PredictJob, out_dir: Path) -> tuple[Path, Path]:
    """(classified LAS/LAZ, voxel grid .npy) that ``job`` writes into ``out_dir``. A file cut
    into windows writes ``pred_<id>.windows/`` (a grid per window) instead of the .npy."""
    ext = "laz" if is_compressed(job.las) else "las"
    return out_dir / f"pred_{job.out_id}.{ext}", out_dir / f"pred_{job.out_id}.npy"


SURVEY_FINDS = "finds.csv"
"""The finds of every file a predict run wrote, in one list (``files`` names where each is)."""
SURVEY_OUTLINES = "finds.geojson"
"""The same finds with their outlines, for a GIS."""


def finds_path(job: PredictJob, out_dir: Path) -> Path:
    """``pred_<id>.finds.csv``: the plazuelas and structures ``job`` writes
    (:mod:`uxbseg.finds`)."""
    return out_dir / f"pred_{job.out_id}.finds.csv"


def resolve_window(window: float | str | None, cfg: Config) -> float | None:
    """The window side for ``window``: a number of CRS units, "auto" (the training tiles' side,
    ``grid.tile_extent``, when the weights record it), or None / "off" (every file one tile)."""
    if window is None or window == "off":
        return None
    if window == "auto":
        if cfg.grid.tile_extent is None:
            log.info(
                "the weights do not record their training tiles' size (grid.tile_extent); every "
                "file is predicted as one tile. Pass --window SIDE to cut large files"
            )
        return cfg.grid.tile_extent
    side = float(window)
    if not side > 0:
        raise BadDataError(f"--window {window}: give a side > 0 in CRS units, auto or off")
    return side


GPU_WINDOW_BATCH = 4
"""On a GPU, windows go through the model this many times the training batch at a time by
default: a forward without gradients at 4x the batch takes less memory than a training step at
1x (the seed model in bf16 on an H200: 15.5 GiB at batch 4 against a step's 20.2 GiB at 1, ninth
session), and a sample's forward is 1.9x faster at batch 4 than at 1 (BENCHMARKS)."""


def window_batch(
    batch: int | None, overlap: float, cfg: Config, device: torch.device | None = None
) -> int:
    """How many windows go through the model at a time: ``batch``, or by default the training
    batch (``data.batch_size``, which fits the memory), on a GPU :data:`GPU_WINDOW_BATCH` times
    that; a bad ``batch`` or ``overlap`` is an error."""
    if batch is None:
        gpu = device is not None and device.type == "cuda"
        batch = cfg.data.batch_size * (GPU_WINDOW_BATCH if gpu else 1)
    if batch < 1:
        raise BadDataError(f"--batch {batch}: give a number of windows >= 1")
    if not 0.0 <= overlap < 1.0:
        raise BadDataError(
            f"--overlap {overlap}: give a fraction of the window side, >= 0 and < 1 (e.g. 0.25)"
        )
    return batch


def check_jobs(jobs: Sequence[PredictJob], out_dir: str | Path) -> None:
    """Refuse, before any work, jobs that would write the same output names (one would replace
    the other) or write over one of the inputs (``--out`` being the inputs' folder)."""
    out_dir = require_folder(out_dir)
    inputs = {job.las.resolve(): job.las for job in jobs}
    first: dict[str, Path] = {}
    for job in jobs:
        other = first.setdefault(job.out_id, job.las)
        if other != job.las:
            raise BadDataError(
                f"{other} and {job.las} would both be written as pred_{job.out_id}.* (one output "
                "would replace the other); predict them into different --out folders, or rename "
                "one"
            )
        for out in output_paths(job, out_dir):
            hit = inputs.get(out.resolve())
            if hit is not None:
                raise BadDataError(
                    f"{hit}: the prediction of {job.las} would be written over this input file; "
                    "choose another --out folder"
                )


def _save_npy(path: Path, grid: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, grid)


def predict_one(
    model,
    cfg: Config,
    job: PredictJob,
    out_dir: Path,
    device: torch.device,
    probabilities: bool = False,
    keep_classification: bool = False,
    codes: Sequence[int] | None = None,
    tta: bool = False,
    window: float | None = None,
    progress: bool = False,
    batch: int = 1,
    grids: bool = True,
    overlap: float = WINDOW_OVERLAP,
    domain: DomainCheck | None = None,
    survey: Survey | None = None,
    report: PredictReport | None = None,
) -> PredictResult:
    """Predict one point cloud; raises :class:`UXBError` for bad inputs (nothing written).

    A file more than :data:`~uxbseg.windows.WINDOW_TRIGGER` times ``window`` (CRS units) on a
    side is cut into windows of that side overlapping by at least ``overlap``
    (:mod:`uxbseg.windows`), ``batch`` at a time through the model; None predicts it as one
    tile. A file of a ``survey`` (:mod:`uxbseg.survey`) larger than that is predicted in the
    survey's windows, which read its neighbours' points too. ``grids=False`` writes the LAS/LAZ
    alone. ``domain`` logs how unlike the training tiles the file is (default: a
    :class:`~uxbseg.domain.DomainCheck` of its own). ``report`` pictures the classified file.
    """
    las = read_las(job.las)
    epsg = crs_epsg(las)  # before the write: laspy rebuilds the VLRs as it adds extra bytes
    n = len(las.points)
    if n == 0:
        raise BadDataError(f"{job.las}: the point cloud is empty; nothing to classify")
    points = PointArrays.from_las(las)
    limits = raw_xy_limits(points)
    (domain or DomainCheck(cfg))(job.las, las, n, limits, job.image)
    plan = plan_for(las, limits, window, overlap)
    context = None
    if survey is not None and window is not None:
        plan, context = survey_windows(
            survey, job.las, job.image, las, points, limits, plan, window, overlap
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    las_out, npy_out = output_paths(job, out_dir)
    windows_out = npy_out.with_suffix(".windows")
    folder = None
    if plan is not None and grids:
        names = None if context is None else [f.path.name for f in survey.files]
        folder = WindowGrids(windows_out, plan, window, overlap, names)
    written = None
    try:
        if plan is None:
            point_class, point_probs, point_score, grid = _predict_tile(
                model, cfg, job, las, points, device, tta, probabilities
            )
        else:
            point_class, point_probs, point_score = predict_windows(
                model, cfg, job.image, las, points, plan, device, tta, probabilities, folder,
                progress, batch, context=context,
            )  # fmt: skip
        if codes is None:
            point_codes = class_to_las_code(point_class)
        else:  # user-chosen codes (--codes); checked against the point format when writing
            point_codes = np.asarray(codes, dtype=np.int64)[point_class]
        extra = None
        if probabilities:
            p = point_probs
            extra = {f"prob_{c.name}": p[c.index] for c in CLASSES}
            extra["entropy"] = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=0)
        compress = is_compressed(job.las)
        write_classified(las, point_codes, las_out, compress, job.las, keep_classification, extra)
        # read in chunks: no copy of x, y; with the small parts at the edges, for the run's list
        found = find_objects(las.x, las.y, point_class, seam=SEAM_TOLERANCE, scores=point_score)
        finds = [f for f in found if not f.edge_part]
        write_finds(finds_path(job, out_dir), finds)
        if folder is not None:
            folder.close()
            written = windows_out
        elif plan is None and grids:
            _save_npy(npy_out, grid)
            written = npy_out
    finally:
        if folder is not None:
            folder.discard()  # what is left of the partial folder after a failure
    # grids of an earlier run (the other kind, or any with grids=False) are stale now
    for stale in {npy_out, windows_out} - {written}:
        if stale.is_file():
            stale.unlink()
        elif stale.is_dir() and (stale / "windows.json").is_file():
            shutil.rmtree(stale)
    bounds = crs_bounds(las, limits)  # the points' XY box
    if report is not None:  # everything else is written
        report.add(las_out.name, bounds, las.x, las.y, las.z, point_class, finds, job.image)
    counts = np.bincount(point_class, minlength=len(CLASSES))
    return PredictResult(
        job,
        written,
        las_out,
        n,
        {c.name: int(counts[c.index]) for c in CLASSES},
        windows=0 if plan is None else math.prod(len(r) for r in plan.over(limits)),
        side=None if plan is None else window,
        overlap=None if plan is None else overlap,
        survey=0 if context is None else len(survey.files),
        found=finds,
        edge_parts=[f for f in found if f.edge_part],
        bounds=bounds,
        epsg=epsg,
    )


def _predict_tile(
    model, cfg: Config, job: PredictJob, las, points: PointArrays, device, tta, probabilities
):
    """Classes (N,), with ``probabilities`` class probabilities (K, N), the probability of its
    class (N, float16), and the voxel grid of a file predicted as one tile."""
    spec = GridSpec.from_config(cfg.grid)
    vox = voxelize(points, spec, with_labels=False)
    if job.image is not None:
        image = load_image(job.image, cfg.data.image_size)
    else:
        log.info(
            "%s: no image given; rendering a TPI image (%.0f m radius) from the points",
            job.las.name,
            TPI_RADIUS_M,
        )
        image = render_tpi_image(las, cfg.data.image_size)
    probs, _ = infer_tile(model, image, vox.features, device, tta)
    classes = decide(probs, cfg.loss.class_weights, cfg.model.logit_adjustment)
    score = probs.gather(0, classes[None])[0].half().numpy().ravel()
    grid = classes.numpy().astype(np.uint8)
    point_probs = None
    if probabilities:
        point_probs = probs.reshape(len(CLASSES), -1).numpy()[:, vox.point_voxel]
    pv = vox.point_voxel
    return grid.ravel()[pv], point_probs, score[pv], grid


def predict_files(
    model,
    cfg: Config,
    jobs: Sequence[PredictJob],
    out_dir: str | Path,
    device: torch.device | None = None,
    probabilities: bool = False,
    keep_classification: bool = False,
    codes: Sequence[int] | None = None,
    progress: bool = True,
    tta: bool = False,
    window: float | str | None = "auto",
    batch: int | None = None,
    grids: bool = True,
    overlap: float = WINDOW_OVERLAP,
    survey: bool = True,
    report: str | Path | None = None,
    resume: bool = False,
) -> list[PredictResult]:
    """Predict every job; a bad input is reported and skipped while the others go on. Jobs that
    conflict (:func:`check_jobs`) are refused before any work. ``window``: see
    :func:`resolve_window`; files larger than it are cut into windows overlapping by at least
    ``overlap`` of their side, ``batch`` of them at a time through the model (default: the
    training batch, ``data.batch_size``, which fits). ``grids=False`` writes the classified
    LAS/LAZ alone, without voxel grids. ``survey``: files that lie side by side are predicted
    as one survey (:mod:`uxbseg.survey`), each reading its neighbours' points near its edges;
    False predicts each on its own. ``report``: a folder for a picture of each classified file
    and ``report.html`` (:mod:`uxbseg.predict_report`). ``resume``: keep the outputs an earlier
    run into ``out_dir`` finished with the same weights and settings (:mod:`uxbseg.predict_resume`;
    every run records what it finishes)."""
    from tqdm.auto import tqdm

    check_jobs(jobs, out_dir)
    side = resolve_window(window, cfg)
    device = device or default_device()
    batch = window_batch(batch, overlap, cfg, device)
    settings = run_settings(
        model,
        cfg,
        window=side,
        overlap=overlap,
        tta=tta,
        probabilities=probabilities,
        keep_classification=keep_classification,
        codes=None if codes is None else [int(c) for c in codes],
        grids=grids,
        survey=survey,
    )
    record = RunRecord.start(out_dir, settings, resume)  # what this run finishes
    headers = []  # read once, for the surveys and the report's overview
    if (survey and side is not None) or (report is not None and len(jobs) > 1):
        headers = read_headers([(job.las, job.image) for job in jobs])
    pictures = None
    if report is not None:  # an overview of the run where it has several files
        box = _run_box(headers) if len(jobs) > 1 else None
        points = sum(h.points for h in headers)
        pictures = PredictReport(report, overview=box, overview_points=points)
    model = model_for_inference(model, device)
    results = []
    domain = DomainCheck(cfg)
    surveys = {}
    store = PointStore(Path(out_dir))  # the points files read of each other, while needed
    if survey and side is not None:
        surveys = find_surveys(headers, side, store)
        if surveys:
            count = len({id(s) for s in surveys.values()})
            log.info(
                "%d of %d files lie side by side in %d survey(s): they are predicted in windows "
                "laid over each survey, which read the points of every file they cover",
                len(surveys),
                len(jobs),
                count,
            )
    unique = {id(s): s for s in surveys.values()}  # a survey is shared by its files' entries
    digests = {key: survey_digest(s) for key, s in unique.items()}  # once a survey, for --resume
    try:
        bar = tqdm(jobs, desc="predict", unit="file", disable=not progress, **progress_options())
        for job in bar:
            mine = surveys.get(job.las)  # the files its windows read, if any
            together = "" if mine is None else digests[id(mine)]
            try:
                kept = record.kept(job, together) if resume else None
                if kept is not None:
                    log.info("%s: kept from the earlier run (%s)", job.las.name, kept.las.name)
                    results.append(kept)
                    if pictures is not None:
                        _picture_kept(pictures, kept, codes, keep_classification)
                    continue
                results.append(
                    predict_one(
                        model,
                        cfg,
                        job,
                        Path(out_dir),
                        device,
                        probabilities,
                        keep_classification,
                        codes,
                        tta,
                        side,
                        progress,
                        batch,
                        grids,
                        overlap,
                        domain,
                        surveys.get(job.las),
                        pictures,
                    )
                )
                record.add(results[-1], together)
            except UXBError as exc:
                log.error("%s", exc)
                results.append(PredictResult(job, error=str(exc)))
            finally:
                if job.las in surveys:
                    surveys[job.las].finish(job.las)
    finally:
        store.close()
    domain.summary(len(jobs))
    done = [r for r in results if r.error is None]
    finds: list[Find] = []
    if done:  # every file's finds in one list, those cut by a seam between two files joined
        merged = merge_finds([(r.las.name, r.bounds, r.found + r.edge_parts) for r in done])
        finds, files = [m for m, _ in merged], [f for _, f in merged]
        write_finds(Path(out_dir) / SURVEY_FINDS, finds, files)
        write_finds_geojson(Path(out_dir) / SURVEY_OUTLINES, finds, files, _one_epsg(done))
    if pictures is not None:
        kinds = {c.name: sum(f.kind == c.name for f in finds) for c in CLASSES[1:]}
        pictures.close(
            f"{len(done)} of {len(jobs)} files classified into {out_dir}; finds: "
            + ", ".join(f"{v} {k}" for k, v in kinds.items())
            + f" ({SURVEY_FINDS}, {SURVEY_OUTLINES}; one cut by a seam between two files counted "
            "once here, and in each file's picture)",
            overview=len({r.epsg for r in done}) == 1,  # one CRS, one map
        )
    return results


def _picture_kept(
    pictures: PredictReport,
    result: PredictResult,
    codes: Sequence[int] | None,
    keep_classification: bool,
) -> None:
    """The report's picture of a file whose outputs an earlier run wrote: its classes read back
    from its classified LAS/LAZ."""
    las = read_las(result.las)
    written = np.asarray(las.uxb_class if keep_classification else las.classification)
    table = np.zeros(256, np.int64)  # LAS code -> class index (codes of no class: ground)
    for c in CLASSES:
        table[c.las_code if codes is None else codes[c.index]] = c.index
    pictures.add(result.las.name, result.bounds, las.x, las.y, las.z, table[written],
                 result.found, result.job.image)  # fmt: skip


def _run_box(headers: list[SurveyFile]) -> tuple[float, float, float, float] | None:
    """The XY box of the files' headers (CRS units); None where none could be read (each file's
    own turn says what is wrong with it)."""
    if not headers:
        return None
    b = np.asarray([h.bounds for h in headers], dtype=np.float64)
    return (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())


def _one_epsg(results: list[PredictResult]) -> int | None:
    """The EPSG code of the files' CRS for ``finds.geojson``: None (with a note of what to do)
    where a file names none or the files name several (a warning: their finds do not belong in
    one layer)."""
    codes = {r.epsg for r in results}
    if len(codes) == 1 and None not in codes:
        return codes.pop()
    level, why = logging.INFO, "the files name no EPSG code for their CRS"
    if None in codes and len(codes) > 1:
        why = "some files name no EPSG code for their CRS"
    elif None not in codes:
        level = logging.WARNING
        why = f"the files are in several CRSs (EPSG {', '.join(map(str, sorted(codes)))})"
    log.log(
        level,
        "%s: %s, so it names none: set the layer's CRS in your GIS to the files' own",
        SURVEY_OUTLINES,
        why,
    )
    return None
