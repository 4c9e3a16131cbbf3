"""``evaluate --report DIR``: a picture of each tile and ``report.html`` to look through them.

Each tile's picture holds four panels over its XY bounding box, north up: the TPI image, the
truth (the points' own LAS classes through the class map), the prediction (the classes
``predict`` gives the points) and the errors (missed archaeology, false alarms, plazuela and
structure swapped, over the TPI in grey). The classes are drawn from the points, so a tile cut
into windows is pictured exactly as predict classifies it. ``report.html`` lists the metrics and
the tiles worst first, so the failures are seen before the successes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .classes import CLASSES, IGNORE, NUM_CLASSES
from .io.files import replacing
from .io.raster import open_image
from .metrics import metrics_from_confusion
from .run_dirs import require_folder

__all__ = [
    "ERROR_COLOURS",
    "TileReport",
    "cell_of",
    "class_colours",
    "class_counts",
    "class_raster",
    "compose",
    "majority",
]

# apart from the classes' own colours (ground brown, plazuela blue, structure red)
ERROR_COLOURS = {
    "missed": (230, 30, 200),  # truth plazuela or structure, predicted ground: magenta
    "false alarm": (255, 140, 0),  # truth ground, predicted plazuela or structure: orange
    "swapped": (40, 190, 60),  # plazuela and structure taken for each other: green
}
_NO_DATA = (255, 255, 255)
_FILL_PX = 3  # pixels without points take the class of a pixel with points this close


def class_raster(
    x,
    y,
    cls,
    bounds: tuple[float, float, float, float],
    hw: tuple[int, int],
    chunk: int = 1 << 21,
) -> np.ndarray:
    """(H, W) raster of point classes over ``bounds`` = (xmin, ymin, xmax, ymax), row 0 north:
    each pixel the most frequent class of its points (IGNORE ones left out); pixels without
    points take the class of the nearest pixel with some within a few pixels, else -1.
    ``x``, ``y`` (CRS units; arrays or laspy's scaled views) and ``cls`` are read ``chunk``
    points at a time, so a survey file of many millions costs no copy of its coordinates."""
    return majority(class_counts(x, y, cls, bounds, hw, chunk))


def class_counts(
    x,
    y,
    cls,
    bounds: tuple[float, float, float, float],
    hw: tuple[int, int],
    chunk: int = 1 << 21,
) -> np.ndarray:
    """(H, W, classes) counts of the points of each class in each pixel of :func:`class_raster`'s
    raster (IGNORE ones left out; points beyond ``bounds`` in its edge pixels)."""
    h, w = hw
    counts = np.zeros(h * w * NUM_CLASSES, np.int64)
    for a in range(0, len(cls), chunk):
        rows, cols = cell_of(x[a : a + chunk], y[a : a + chunk], bounds, hw)
        c = np.asarray(cls[a : a + chunk], dtype=np.int64)
        ok = c != IGNORE
        counts += np.bincount(
            (rows[ok] * w + cols[ok]) * NUM_CLASSES + c[ok], minlength=h * w * NUM_CLASSES
        )
    return counts.reshape(h, w, NUM_CLASSES)


def majority(counts: np.ndarray) -> np.ndarray:
    """:func:`class_raster` from :func:`class_counts`: each pixel's most frequent class; pixels
    without points that of the nearest pixel with some within a few pixels, else -1."""
    out = counts.argmax(axis=2)
    empty = counts.sum(axis=2) == 0
    out[empty] = -1
    if empty.any() and not empty.all():
        dist, (rr, cc) = ndimage.distance_transform_edt(empty, return_indices=True)
        near = empty & (dist <= _FILL_PX)
        out[near] = out[rr[near], cc[near]]
    return out


def cell_of(
    x, y, bounds: tuple[float, float, float, float], hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the cell of :func:`class_raster`'s raster each point falls in."""
    h, w = hw
    x0, y0, x1, y1 = bounds
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    col = np.clip(((x - x0) / max(x1 - x0, 1e-12) * w).astype(np.int64), 0, w - 1)
    row = np.clip(((y1 - y) / max(y1 - y0, 1e-12) * h).astype(np.int64), 0, h - 1)
    return row, col


def class_colours(classes: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) of a :func:`class_raster` raster: each class its colour, -1 white."""
    lut = np.array([c.colour for c in CLASSES] + [_NO_DATA], dtype=np.uint8)
    return lut[classes]  # -1 picks the last entry: no data


def _errors(truth: np.ndarray, pred: np.ndarray, grey: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=2)
    known = (truth >= 0) & (pred >= 0)
    arch_t, arch_p = truth > 0, pred > 0
    kinds = {
        "missed": known & arch_t & ~arch_p,
        "false alarm": known & ~arch_t & arch_p,
        "swapped": known & arch_t & arch_p & (truth != pred),
    }
    for name, where in kinds.items():
        rgb[where] = ERROR_COLOURS[name]
    return rgb


@dataclass
class _Tile:
    pair_id: str
    png: str
    iou: dict[str, float]
    score: float  # mean IoU of the classes in its truth or prediction (1 when none)
    points: int
    objects: dict[str, dict[str, int]] | None = None  # finds.object_counts of the tile


class TileReport:
    """Writes ``<pair>.png`` for each tile :meth:`add`-ed into ``folder`` and ``report.html``
    at :meth:`close`."""

    def __init__(self, folder: str | Path, panel: int = 320) -> None:
        self.folder = require_folder(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.panel = panel
        self.tiles: list[_Tile] = []

    def add(
        self,
        pair_id: str,
        image: str | Path,
        x: np.ndarray,
        y: np.ndarray,
        truth: np.ndarray,
        pred: np.ndarray,
        tile_confusion: np.ndarray,
        objects: dict[str, dict[str, int]] | None = None,
    ) -> Path:
        """Picture one tile: points ``x``, ``y`` (CRS units) with their ``truth`` and ``pred``
        classes (IGNORE truths left out of the truth picture, as out of the scores) and the
        TPI ``image`` over their bounding box; its point confusion ranks it in the report, and
        its ``objects`` (:func:`~uxbseg.finds.object_counts`) are listed under its heading."""
        bounds = (float(x.min()), float(y.min()), float(x.max()), float(y.max()))
        span_x, span_y = bounds[2] - bounds[0], bounds[3] - bounds[1]
        scale = self.panel / max(span_x, span_y, 1e-12)
        hw = (max(1, round(span_y * scale)), max(1, round(span_x * scale)))
        t = class_raster(x, y, truth, bounds, hw)
        p = class_raster(x, y, pred, bounds, hw)
        tpi = open_image(image, "RGB").resize(hw[::-1], Image.Resampling.BILINEAR)
        grey = (np.asarray(tpi.convert("L"), dtype=np.float32) * 0.5 + 100).astype(np.uint8)
        panels = [np.asarray(tpi), class_colours(t), class_colours(p), _errors(t, p, grey)]
        titles = ["TPI image", "truth (LAS classes)", "prediction", "errors"]
        picture = compose(panels, titles, pair_id)
        name = f"{pair_id}.png"
        with replacing(self.folder / name) as tmp:
            picture.save(tmp, format="PNG")
        m = metrics_from_confusion(tile_confusion)
        iou = {c.name: m[f"iou_{c.name}"] for c in CLASSES}
        score = m["miou"] if np.isfinite(m["miou"]) else 1.0
        self.tiles.append(_Tile(pair_id, name, iou, score, int(tile_confusion.sum()), objects))
        return self.folder / name

    def close(self, summary: str) -> Path:
        """Write ``report.html``: ``summary`` (the metrics as text), a legend, and the tiles
        from the worst (lowest mean IoU of the classes they hold or were given) to the best."""
        tiles = sorted(self.tiles, key=lambda t: (t.score, t.pair_id))
        swatch = "".join(
            f'<span style="background:rgb{c}">&nbsp;&nbsp;&nbsp;</span> {html.escape(n)} '
            for n, c in [(c.name, c.colour) for c in CLASSES] + list(ERROR_COLOURS.items())
        )
        rows = "\n".join(
            f"<h3>{html.escape(t.pair_id)}: point IoU "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in t.iou.items())
            + f" ({t.points} scored points)</h3>\n"
            + _objects_line(t.objects)
            + f'<img src="{html.escape(t.png)}" alt="{html.escape(t.pair_id)}">'
            for t in tiles
        )
        page = (
            "<!doctype html>\n<html><head><meta charset='utf-8'><title>uxbseg evaluation</title>"
            "</head><body style='font-family:sans-serif'>\n<h1>uxbseg evaluation</h1>\n"
            f"<pre>{html.escape(summary)}</pre>\n<p>{swatch}; white: no points</p>\n"
            f"<h2>{len(tiles)} tiles, worst first</h2>\n{rows}\n</body></html>\n"
        )
        out = self.folder / "report.html"
        with replacing(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return out


def _objects_line(objects: dict[str, dict[str, int]] | None) -> str:
    if not objects:
        return ""
    said = "; ".join(
        f"{name} found {o['found']} of {o['true']}, {o['predicted']} predicted ({o['real']} real)"
        for name, o in objects.items()
    )
    return f"<p>objects: {html.escape(said)}</p>\n"


def _fmt(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "-"


def compose(panels: list[np.ndarray], titles: list[str], heading: str) -> Image.Image:
    """Panels of one size side by side, each under its title, under a heading."""
    gap, top, caption = 8, 22, 18
    h, w = panels[0].shape[:2]
    out = Image.new("RGB", (len(panels) * (w + gap) + gap, top + caption + h + gap), "white")
    draw = ImageDraw.Draw(out)
    draw.text((gap, 4), heading, fill=(0, 0, 0))
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x = gap + i * (w + gap)
        draw.text((x, top), title, fill=(0, 0, 0))
        out.paste(Image.fromarray(np.ascontiguousarray(panel)), (x, top + caption))
    return out
