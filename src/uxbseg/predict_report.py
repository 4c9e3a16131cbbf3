"""``predict --report DIR``: a quick look at each classified file and ``report.html`` to page
through a survey's results without a GIS.

Each file's picture holds three panels over its XY box, north up: its TPI (the given image, or
rendered from its points at the picture's scale), the classes ``predict`` gave its points, and
its finds (:mod:`uxbseg.finds`) outlined in their class's colour over the TPI in grey.
``report.html`` lists the files with the most finds first.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .classes import CLASSES
from .finds import Find
from .io.raster import TPI_CLIP_M, colourise_tpi, open_image, window_tpi
from .report import class_colours, class_raster, compose
from .run_dirs import require_folder

__all__ = ["PredictReport"]

_TPI_POINTS = 2_000_000  # at most this many points (every k-th) render the picture's TPI


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


class PredictReport:
    """Writes ``<name>.png`` for each file :meth:`add`-ed into ``folder`` and ``report.html`` at
    :meth:`close`."""

    def __init__(self, folder: str | Path, panel: int = 400) -> None:
        self.folder = require_folder(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.panel = panel
        self.files: list[_File] = []

    def add(
        self,
        name: str,
        x,
        y,
        z,
        classes: np.ndarray,
        finds: list[Find],
        image: str | Path | None = None,
    ) -> Path:
        """Picture one classified file: its points ``x``, ``y``, ``z`` (CRS units; arrays or
        laspy's scaled views) with their class indices ``classes``, its ``finds`` outlined, over
        its TPI ``image`` (default: rendered from every k-th point, at most two million)."""
        n = len(classes)
        if n == 0:
            raise ValueError(f"{name}: no points to picture")
        bounds = (float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y)))
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
        tmp = self.folder / f".{png}.partial"
        picture.save(tmp, format="PNG")
        os.replace(tmp, self.folder / png)
        counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(CLASSES))
        self.files.append(
            _File(name, png, n, {c.name: int(counts[c.index]) for c in CLASSES}, kinds)
        )
        return self.folder / png

    def close(self, summary: str) -> Path:
        """Write ``report.html``: ``summary``, a legend, and the files with the most finds first
        (then by name)."""
        files = sorted(self.files, key=lambda f: (-sum(f.finds.values()), f.name))
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
            f"<h2>{len(files)} files, the most finds first</h2>\n{rows}\n</body></html>\n"
        )
        out = self.folder / "report.html"
        tmp = self.folder / ".report.html.partial"
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
        return out
