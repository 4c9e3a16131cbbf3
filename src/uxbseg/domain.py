"""How unlike the training tiles a point cloud is: a CRS not in metres, or a point density far from
theirs (and a header whose box does not hold the points, or an image of another shape than the
points' box it is laid over). Each kind of warning is logged in full for the first file, then
counted, so a survey of 200 files says it once and then how many files it concerns."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from .config import Config
from .data.pairs import aspect_note, bulk_limits, density_note
from .io.las import header_box_note, units_warning
from .io.raster import image_size

__all__ = ["DomainCheck", "domain_warnings"]

log = logging.getLogger(__name__)


def domain_warnings(
    las, n: int, limits, cfg: Config, image: str | Path | None = None
) -> dict[str, str]:
    """What makes a file of ``n`` points within raw XY ``limits`` unlike the training tiles, by
    kind: ``units`` (a CRS not in metres), ``density`` (far from ``grid.tile_density``);
    ``header`` (its header's box does not hold its points, which misleads the survey); and
    ``image`` (its ``image`` is not of the points' box's shape, :func:`~uxbseg.data.pairs.
    aspect_note`)."""
    said = {"units": units_warning(las), "header": header_box_note(las, limits)}
    (x0, x1), (y0, y1) = limits
    sx, sy = las.header.scales[:2]
    if image is not None:
        said["image"] = aspect_note(image_size(image), ((x1 - x0) * sx, (y1 - y0) * sy))
    area = (x1 - x0) * sx * (y1 - y0) * sy
    bulk = bulk_limits(np.asarray(las.X), np.asarray(las.Y), limits)
    if bulk is not None:  # a few stray points far out: the density of where the points are
        (bx0, bx1), (by0, by1) = bulk
        area = (bx1 - bx0) * sx * (by1 - by0) * sy
    if cfg.grid.tile_density is not None and area > 0:
        said["density"] = density_note(n / area, cfg.grid.tile_density, "the training tiles")
    return {kind: text for kind, text in said.items() if text}


class DomainCheck:
    """Logs :func:`domain_warnings` of each file: the first of a kind as a warning, the others
    at debug level; :meth:`summary` then says how many files each kind concerned."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.counts: Counter[str] = Counter()

    def __call__(
        self, path: str | Path, las, n: int, limits, image: str | Path | None = None
    ) -> None:
        for kind, text in domain_warnings(las, n, limits, self.cfg, image).items():
            self.counts[kind] += 1
            first = self.counts[kind] == 1
            log.log(logging.WARNING if first else logging.DEBUG, "%s: %s", path, text)

    def summary(self, files: int) -> None:
        """Warn how many of ``files`` each kind concerned, where more than one."""
        for kind, count in sorted(self.counts.items()):
            if count > 1:
                log.warning(
                    "%d of %d files had the %s warning above (uxbseg --verbose names each)",
                    count,
                    files,
                    kind,
                )
