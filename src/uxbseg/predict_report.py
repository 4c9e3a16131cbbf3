"""``predict --report DIR``: a quick look at each classified file and ``report.html`` to page
through a survey's results without a GIS.

Each file's picture holds three panels over its XY box, north up: its TPI (the given image, or
rendered from its points at the picture's scale), the classes ``predict`` gave its points, and
its finds (:mod:`uxbseg.finds`) outlined in their class's colour over the TPI in grey.
``report.html`` lists the files with the most finds first, under an overview of the whole run
(``overview.png``, given the run's XY box): every file's classes on one map, its finds outlined,
so that a survey delivered as many tiles is seen at once.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .classes import CLASSES, NUM_CLASSES
from .finds import Find
from .io.files import replacing
from .io.raster import TPI_CLIP_M, colourise_tpi, open_image, window_tpi
from .report import class_colours, class_counts, class_raster, compose, majority
from .run_dirs import require_folder

__all__ = ["PredictReport"]

_TPI_POINTS = 2_000_000  # at most this many points (every k-th) render the picture's TPI
_OVERVIEW = 1200  # pixels on the longer side of the run's overview, at most ...
_OVERVIEW_POINTS = 4.0  # ... and about this many points a pixel at least (a class's majority)
_OVERVIEW_MIN = 600  # a coarser overview is enlarged (nearest pixel) to this side at least
_GROUND_GREY = (215, 215, 215)  # the overview's ground: the finds stand out in their colours


@dataclass
class _File:
    name: str
    png: str
    points: int
    counts: dict[str, int]
    finds: dict[str, int]


def _pixels(bounds, panel: int) -> tuple[tuple[int, int], float]:
    """(H, W) of a panel whose longer side is ``panel`` pixels over ``bounds``, and its pixels
    per CRS unit."""
    span_x, span_y = bounds[2] - bounds[0], bounds[3] - bounds[1]
    scale = panel / max(span_x, span_y, 1e-12)
    return (max(1, round(span_y * scale)), max(1, round(span_x * scale))), scale


class _Overview:
    """Every file's classes on one raster over the run's box (``points`` in it), and their
    finds: at most :data:`_OVERVIEW` pixels a side, about four points a pixel at least."""

    def __init__(self, bounds: tuple[float, float, float, float], points: int) -> None:
        self.bounds = bounds
        area = max(bounds[2] - bounds[0], 1e-9) * max(bounds[3] - bounds[1], 1e-9)
        spacing = math.sqrt(_OVERVIEW_POINTS * area / max(points, 1))
        side = min(
            _OVERVIEW, max(1, round(max(bounds[2] - bounds[0], bounds[3] - bounds[1]) / spacing))
        )
        self.hw, self.scale = _pixels(bounds, side)
        self.counts = np.zeros((*self.hw, NUM_CLASSES), np.int64)
        self.finds: list[Find] = []

    def add(self, x, y, classes, finds: list[Find]) -> None:
        self.counts += class_counts(x, y, classes, self.bounds, self.hw)
        self.finds += finds

    def picture(self) -> Image.Image:
        """Ground grey, plazuelas and structures in their colours, no points white; each find
        outlined in black."""
        classes = majority(self.counts)
        rgb = class_colours(classes)
        rgb[classes == 0] = _GROUND_GREY
        grow = max(1, math.ceil(_OVERVIEW_MIN / max(self.hw)))  # enlarged, then outlined
        picture = Image.fromarray(rgb)
        picture = picture.resize((self.hw[1] * grow, self.hw[0] * grow), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(picture)
        x0, y1, scale = self.bounds[0], self.bounds[3], self.scale * grow
        for find in self.finds:
            for polygon in find.outline:
                pts = [((px - x0) * scale, (y1 - py) * scale) for px, py in polygon[0]]
                draw.line(pts, fill=(0, 0, 0), width=1)
        return picture


class PredictReport:
    """Writes ``<name>.png`` for each file :meth:`add`-ed into ``folder`` and ``report.html`` at
    :meth:`close`; with ``overview`` (the run's XY box, CRS units, and ``overview_points``, the
    points in it) also ``overview.png``."""

    def __init__(
        self,
        folder: str | Path,
        panel: int = 400,
        overview: tuple[float, float, float, float] | None = None,
        overview_points: int = 0,
    ) -> None:
        self.folder = require_folder(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.panel = panel
        self.files: list[_File] = []
        self.overview = _Overview(overview, overview_points) if overview is not None else None

    def add(
        self,
        name: str,
        bounds: tuple[float, float, float, float],
        x,
        y,
        z,
        classes: np.ndarray,
        finds: list[Find],
        image: str | Path | None = None,
    ) -> Path:
        """Picture one classified file: its points ``x``, ``y``, ``z`` (CRS units; arrays or
        laspy's scaled views) within ``bounds`` (their XY box) with their class indices
        ``classes``, its ``finds`` outlined, over its TPI ``image`` (default: rendered from
        every k-th point, at most two million)."""
        n = len(classes)
        if n == 0:
            raise ValueError(f"{name}: no points to picture")
        hw, scale = _pixels(bounds, self.panel)
        if image is not None:
            tpi = np.asarray(open_image(image, "RGB").resize(hw[::-1], Image.Resampling.BILINEAR))
        else:
            step = max(1, -(-n // _TPI_POINTS))
            xs, ys, zs = (np.asarray(v[::step], dtype=np.float64) for v in (x, y, z))
            cell = max(1.0, 1.0 / scale)
            tpi = colourise_tpi(window_tpi(xs, ys, zs, bounds, cell), TPI_CLIP_M, None)
            tpi = np.asarray(Image.fromarray(tpi).resize(hw[::-1], Image.Resampling.BILINEAR))
        pred = class_raster(x, y, classes, bounds, hw)
        grey = np.asarray(Image.fromarray(tpi).convert("L"), dtype=np.float32) * 0.5 + 100
        outlined = Image.fromarray(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2))
        draw = ImageDraw.Draw(outlined)
        colour = {c.name: tuple(c.colour) for c in CLASSES}
        for find in finds:
            for polygon in find.outline:
                for ring in polygon:
                    pts = [((px - bounds[0]) * scale, (bounds[3] - py) * scale) for px, py in ring]
                    draw.line(pts, fill=colour[find.kind], width=2)
        panels = [tpi, class_colours(pred), np.asarray(outlined)]
        kinds = {c.name: sum(f.kind == c.name for f in finds) for c in CLASSES[1:]}
        said = ", ".join(f"{v} {k}" for k, v in kinds.items())
        titles = ["TPI", "classes", f"finds: {said}"]
        picture = compose(panels, titles, name)
        png = f"{name}.png"
        with replacing(self.folder / png) as tmp:
            picture.save(tmp, format="PNG")
        if self.overview is not None:
            self.overview.add(x, y, classes, finds)
        counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(CLASSES))
        self.files.append(
            _File(name, png, n, {c.name: int(counts[c.index]) for c in CLASSES}, kinds)
        )
        return self.folder / png

    def close(self, summary: str, overview: bool = True) -> Path:
        """Write ``report.html``: ``summary``, a legend, the overview (unless ``overview`` is
        False: files in several CRSs have no common map) and the files with the most finds
        first (then by name)."""
        files = sorted(self.files, key=lambda f: (-sum(f.finds.values()), f.name))
        top = ""
        if overview and self.overview is not None and self.files:
            with replacing(self.folder / "overview.png") as tmp:
                self.overview.picture().save(tmp, format="PNG")
            top = (
                "<h2>overview: every file, ground grey, finds outlined in black</h2>\n"
                '<img src="overview.png" alt="overview">\n'
            )
        swatch = "".join(
            f'<span style="background:rgb{tuple(c.colour)}">&nbsp;&nbsp;&nbsp;</span> '
            f"{html.escape(c.name)} "
            for c in CLASSES
        )
        rows = "\n".join(
            f"<h3>{html.escape(f.name)}: "
            + ", ".join(f"{v} {html.escape(k)}" for k, v in f.finds.items())
            + f" found ({f.points} points: "
            + ", ".join(f"{html.escape(k)} {v}" for k, v in f.counts.items())
            + f')</h3>\n<img src="{html.escape(f.png)}" alt="{html.escape(f.name)}">'
            for f in files
        )
        page = (
            "<!doctype html>\n<html><head><meta charset='utf-8'><title>uxbseg predictions</title>"
            "</head><body style='font-family:sans-serif'>\n<h1>uxbseg predictions</h1>\n"
            f"<pre>{html.escape(summary)}</pre>\n<p>{swatch}; white: no points; finds outlined "
            "in their class's colour over the TPI in grey</p>\n"
            f"{top}<h2>{len(files)} files, the most finds first</h2>\n{rows}\n</body></html>\n"
        )
        out = self.folder / "report.html"
        with replacing(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return out
