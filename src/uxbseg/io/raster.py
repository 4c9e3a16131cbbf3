"""Image and mask loading (no network) and the TPI renderer shared by synthetic data and predict."""

from __future__ import annotations

import functools
import math
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from ..classes import mask_value_to_class
from ..errors import BadDataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "TPI_CLIP_M",
    "TPI_RADIUS_M",
    "WIDE_GREY_MODES",
    "colourise_tpi",
    "dem_from_points",
    "image_depth_note",
    "image_size",
    "image_window",
    "load_image",
    "load_mask",
    "mask_window",
    "mosaic_window",
    "normalise_rgb",
    "open_image",
    "open_image_noted",
    "read_mask_values",
    "tpi",
    "window_tpi",
]

TPI_RADIUS_M = 100.0
"""Radius of the UXB images' topographic position index."""
TPI_CLIP_M = 4.0
"""TPI value (metres) at which the colour ramp saturates."""

# SegFormer-B0's image processor: rescale 1/255 then ImageNet mean/std (done locally, no hub).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


MAX_IMAGE_PIXELS = 1_000_000_000
"""Largest image (pixels) read: a survey's TPI image can be far larger than Pillow's guard
against decompression bombs (89 M pixels warns, 179 M refuses), e.g. 10 km at 0.5 m is 400 M;
a thousand million RGB pixels take 3 GB decoded."""

_PIXEL_LOCK = threading.Lock()


@contextmanager
def _pixel_limit(limit: int):
    """Pillow's decompression-bomb limit raised to ``limit`` pixels while an image is opened (it
    is a module global of Pillow's, so it is set back afterwards and guarded by a lock)."""
    with _PIXEL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(limit, before or 0)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def open_image(path: str | Path, mode: str) -> Image.Image:
    """Open and fully decode an image in ``mode``; BadDataError when unreadable or larger than
    :data:`MAX_IMAGE_PIXELS`."""
    return open_image_noted(path, mode)[0]


def open_image_noted(path: str | Path, mode: str) -> tuple[Image.Image, str | None]:
    """:func:`open_image`, and for an image of more than 8 bits a channel read in colour, how
    its values were read (:func:`image_depth_note`): one decoding for both (``inspect``)."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(f"{path}: file not found; check the pair folder")
    try:
        with _pixel_limit(MAX_IMAGE_PIXELS), Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise BadDataError(
                    f"{path}: image of {w} x {h} pixels is larger than the {MAX_IMAGE_PIXELS:,} "
                    "read (it would take "
                    f"{w * h * 3 / 2**30:.1f} GiB decoded); cut the area into tiles (uxbseg "
                    "tile), or predict without --image to render the TPI from the points"
                )
            im.load()
            note = None
            if mode != "L" and im.mode in WIDE_GREY_MODES:
                raw = im
                im, note = _eight_bit(raw, path)
                note += _levels_note(raw, im)
            return im.convert(mode), note
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadDataError(
            f"{path}: not a readable image ({exc}); re-export the PNG or remove the pair"
        ) from exc


WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""Pillow's modes of greyscale images of more than 8 bits (16-bit PNG, 32-bit and float TIFF),
which Pillow's own conversion to RGB clips at 255: a 16-bit TPI image spanning its range
would come out white."""

_EXPORT_8BIT = (
    "export the TPI image as an 8-bit PNG with its values stretched to 0-255 "
    "(e.g. gdal_translate -ot Byte -scale)"
)


def _eight_bit(im: Image.Image, path: Path) -> tuple[Image.Image, str]:
    """A greyscale image of more than 8 bits (:data:`WIDE_GREY_MODES`) as 8-bit ``L``, and how it
    was read, for ``inspect``.

    Values within 0..255 are taken as they are (8-bit values in a wider file; Pillow's own
    conversion does the same); integers up to 65535 are divided by 256 and floats within 0..1
    multiplied by 255, as scikit-image's ``img_as_ubyte`` does; other ranges (a float TPI in
    metres, negative values) have no known colours and are refused.
    """
    v = np.asarray(im)
    kind = "float" if im.mode == "F" else "16-bit" if im.mode.startswith("I;16") else "integer"
    if v.size == 0:
        return im.convert("L"), f"{kind} greyscale image, empty"
    floats = im.mode == "F"
    if floats and not np.isfinite(v).all():
        raise BadDataError(
            f"{path}: {kind} greyscale image holds NaN or infinite values; " + _EXPORT_8BIT
        )
    lo, hi = v.min().item(), v.max().item()
    seen = f"{kind} greyscale image, values {lo:g}..{hi:g}"
    # in place where a copy is made: a survey's image may hold hundreds of millions of pixels
    if lo >= 0 and hi <= 255 and not (floats and hi <= 1):
        out, how = np.rint(v) if floats else v, "read as they are (8-bit values in a wider file)"
    elif floats and lo >= 0 and hi <= 1:
        out, how = np.rint(np.multiply(v, 255.0, dtype=np.float32)), "read as 8 bits (value x 255)"
    elif not floats and lo >= 0 and hi <= 65535:
        out, how = v >> 8, "read as 8 bits (value / 256)"
    else:
        ranges = "neither within 0..1 nor 0..255" if im.mode == "F" else "not within 0..65535"
        raise BadDataError(f"{path}: {seen} ({ranges}): their colours are unknown; {_EXPORT_8BIT}")
    return Image.fromarray(out.astype(np.uint8), "L"), f"{seen}: {how}"


def image_depth_note(path: str | Path) -> str | None:
    """How an image of more than 8 bits a channel is read (:func:`open_image`), or None for an
    8-bit image; ``inspect`` lists it."""
    path = Path(path)
    try:
        with _pixel_limit(MAX_IMAGE_PIXELS), Image.open(path) as im:
            if im.mode not in WIDE_GREY_MODES:
                return None
        return open_image_noted(path, "RGB")[1]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, BadDataError):
        return None  # open_image reports it


def _levels_note(raw: Image.Image, grey: Image.Image) -> str:
    """The warning part of a wide image's note: when reading it as 8 bits left fewer than 16
    grey levels of those it had (counted on a regular sample of a survey-sized image)."""
    v = np.asarray(raw).ravel()
    step = max(1, v.size // 2**24)
    levels = np.count_nonzero(np.bincount(np.asarray(grey).ravel()[::step], minlength=256))
    distinct = (
        len(np.unique(v[::step]))
        if raw.mode == "F"
        else np.count_nonzero(np.bincount(v[::step].astype(np.int64)))
    )
    if levels < min(16, distinct):
        return f"; only {levels} grey level(s) remain of {distinct}: {_EXPORT_8BIT}"
    return ""


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image from its header (nothing decoded), or None where it cannot
    be read (:func:`open_image` says why)."""
    try:
        with _pixel_limit(MAX_IMAGE_PIXELS), Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def load_image(path: str | Path, size: int = 512) -> np.ndarray:
    """RGB image resized (bilinear) to ``size`` and normalised like SegFormer's processor.

    Returns float32 (3, size, size).
    """
    im = open_image(path, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    return normalise_rgb(np.asarray(im))


def normalise_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) normalised like SegFormer's processor."""
    arr = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _window_box(
    arr: np.ndarray,
    bounds: tuple[float, float, float, float],
    window: tuple[float, float, float, float],
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The pixels of ``arr`` (an image over ``bounds``, north-up) that ``window`` touches, and
    the window's box within them (PIL's resize ``box``); edge pixels repeat beyond the image."""
    h, w = arr.shape[:2]
    bx0, by0, bx1, by1 = bounds
    x0, y0, x1, y1 = window
    fx = [(x - bx0) / max(bx1 - bx0, 1e-12) * w for x in (x0, x1)]
    fy = [(by1 - y) / max(by1 - by0, 1e-12) * h for y in (y1, y0)]  # row 0 = north
    # pixel edges within rounding of a window edge are that edge (no sliver of a neighbour)
    box = [round(b) if abs(b - round(b)) < 1e-6 else b for b in (fx[0], fy[0], fx[1], fy[1])]
    pad = max(0, math.ceil(max(-box[0], -box[1], box[2] - w, box[3] - h)))
    if pad:
        widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (arr.ndim - 2)
        arr = np.pad(arr, widths, mode="edge")
        box = [b + pad for b in box]
    c0, r0 = math.floor(box[0]), math.floor(box[1])
    cut = np.ascontiguousarray(arr[r0 : math.ceil(box[3]), c0 : math.ceil(box[2])])
    return cut, (box[0] - c0, box[1] - r0, box[2] - c0, box[3] - r0)


def image_window(
    rgb: np.ndarray,
    bounds: tuple[float, float, float, float],
    window: tuple[float, float, float, float],
    size: int = 512,
) -> np.ndarray:
    """The part of an RGB image (H, W, 3) over ``bounds`` that covers ``window``, resized
    (bilinear) and normalised like :func:`load_image`.

    ``bounds`` = (xmin, ymin, xmax, ymax), north-up, and ``window`` in CRS units. The window's
    pixels are cut out before resizing, so, as for a tile's own image, nothing beyond its edge
    blends in; parts of the window beyond the image repeat the image's edge pixels.
    """
    cut, inner = _window_box(rgb, bounds, window)
    im = Image.fromarray(cut, "RGB")
    return normalise_rgb(np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, inner)))


def mosaic_window(
    sources: list[tuple[np.ndarray, tuple[float, float, float, float]]],
    window: tuple[float, float, float, float],
    size: int = 512,
) -> np.ndarray:
    """:func:`image_window` of the first of ``sources`` ((RGB image, its bounds)), with the
    pixels beyond its bounds taken from the first of the others that covers them (adjacent
    tiles' images); pixels no source covers repeat the first image's edge."""
    rgb, bounds = sources[0]
    out = image_window(rgb, bounds, window, size)
    if len(sources) == 1:
        return out
    x0, y0, x1, y1 = window
    cx = x0 + (np.arange(size) + 0.5) * (x1 - x0) / size
    cy = y1 - (np.arange(size) + 0.5) * (y1 - y0) / size  # row 0 = north

    def covered(b: tuple[float, float, float, float]) -> np.ndarray:
        return ((cy >= b[1]) & (cy <= b[3]))[:, None] & ((cx >= b[0]) & (cx <= b[2]))[None, :]

    filled = covered(bounds)
    for rgb, b in sources[1:]:
        take = covered(b) & ~filled
        if take.any():
            out[:, take] = image_window(rgb, b, window, size)[:, take]
            filled |= take
    return out


def mask_window(
    values: np.ndarray,
    bounds: tuple[float, float, float, float],
    window: tuple[float, float, float, float],
    hw: tuple[int, int],
) -> np.ndarray:
    """The part of a mask's grey values (:func:`read_mask_values`, over ``bounds``) covering
    ``window``, as class indices NEAREST-resized to (H, W) like :func:`load_mask`."""
    cut, inner = _window_box(values, bounds, window)
    h, w = hw
    im = Image.fromarray(cut, "L").resize((w, h), Image.Resampling.NEAREST, inner)
    return mask_value_to_class(np.asarray(im))


def read_mask_values(path: str | Path) -> np.ndarray:
    """The mask as 8-bit grey values (H, W), unresized."""
    return np.asarray(open_image(path, "L"))


def load_mask(path: str | Path, hw: tuple[int, int]) -> np.ndarray:
    """Mask values mapped to class indices (unmapped -> IGNORE), NEAREST-resized to (H, W)."""
    h, w = hw
    im = open_image(path, "L").resize((w, h), Image.Resampling.NEAREST)
    return mask_value_to_class(np.asarray(im))


def _disc(radius_cells: float) -> np.ndarray:
    r = int(np.ceil(radius_cells))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2 <= radius_cells**2).astype(np.float64)


@functools.lru_cache(maxsize=4)
def _disc_coverage(shape: tuple[int, int], radius_cells: float) -> np.ndarray:
    """How many cells of the disc lie inside a raster of ``shape`` around each cell: the
    normalisation of a DEM without gaps, the same for every tile of a size (read-only)."""
    from scipy import signal  # here: importing it takes ~1 s, which inspect need not pay

    out = signal.fftconvolve(np.ones(shape), _disc(radius_cells), mode="same")
    out.setflags(write=False)
    return out


def tpi(dem: np.ndarray, cell_size: float, radius_m: float = TPI_RADIUS_M) -> np.ndarray:
    """Topographic position index: elevation minus the mean elevation within ``radius_m``.

    Edges use only the cells that exist (normalised convolution), so a DEM with a margin of
    ``radius_m`` around the area of interest gives exact values inside it. For a DEM without
    gaps (every DEM :func:`dem_from_points` makes) the normalisation depends on the raster's
    shape alone and is computed once per shape: one FFT convolution a tile instead of two.
    """
    from scipy import signal  # here: importing it takes ~1 s, which inspect need not pay

    radius_cells = radius_m / cell_size
    kernel = _disc(radius_cells)
    valid = np.isfinite(dem)
    z = np.where(valid, dem, 0.0)
    num = signal.fftconvolve(z, kernel, mode="same")
    if valid.all():
        den = _disc_coverage(dem.shape, radius_cells)
    else:
        den = signal.fftconvolve(valid.astype(np.float64), kernel, mode="same")
    mean = num / np.maximum(den, 1e-9)
    out = dem - mean
    return np.where(valid, out, 0.0)


# diverging ramp: deep blue (hollows) -> pale yellow (flat) -> dark red (rises)
_RAMP = np.array(
    [
        [-1.0, 33, 102, 172],
        [-0.4, 103, 169, 207],
        [0.0, 247, 247, 220],
        [0.4, 239, 138, 98],
        [1.0, 178, 24, 43],
    ],
    dtype=np.float64,
)


def colourise_tpi(
    tpi_m: np.ndarray, clip_m: float = TPI_CLIP_M, size: int | None = 512
) -> np.ndarray:
    """Colourise a TPI raster (metres) to uint8 RGB with a diverging ramp clipped at +-clip_m.

    Row 0 of the raster is north. ``size`` resizes the result (bilinear); None keeps its shape.
    """
    t = np.clip(tpi_m / clip_m, -1.0, 1.0)
    rgb = np.stack([np.interp(t, _RAMP[:, 0], _RAMP[:, i]) for i in (1, 2, 3)], axis=-1)
    im = Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")
    if size is not None:
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im)


def dem_from_points(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    bounds: tuple[float, float, float, float],
    cell_size: float,
) -> np.ndarray:
    """A terrain raster from points: lowest z per cell, holes filled from the nearest cell.

    ``bounds`` = (xmin, ymin, xmax, ymax); row 0 is north. Taking the lowest point per cell keeps
    the ground under vegetation returns.
    """
    xmin, ymin, xmax, ymax = bounds
    w = max(1, int(np.ceil((xmax - xmin) / cell_size)))
    h = max(1, int(np.ceil((ymax - ymin) / cell_size)))
    col = np.clip(((x - xmin) / cell_size).astype(np.int64), 0, w - 1)
    row = np.clip(((ymax - y) / cell_size).astype(np.int64), 0, h - 1)
    dem = np.full(h * w, np.inf)
    np.minimum.at(dem, row * w + col, z)
    dem = dem.reshape(h, w)
    holes = ~np.isfinite(dem)
    if holes.all():
        return np.zeros((h, w))
    if holes.any():
        idx = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
        dem = dem[tuple(idx)]
    return dem


def window_tpi(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    window: tuple[float, float, float, float],
    cell_size: float,
    radius_m: float = TPI_RADIUS_M,
) -> np.ndarray:
    """TPI (metres) of one window of a larger survey, from its points and those around it.

    ``window`` = (xmin, ymin, xmax, ymax); ``x, y, z`` should hold every point within
    ``radius_m`` of it. The window's raster is laid out as :func:`dem_from_points` lays out a
    tile with those bounds (holes filled from the nearest cell); the margin around it keeps
    only the cells that hold points, so the mean of each disc uses the real terrain beside the
    window where there is some, and the part of the disc inside the window where there is none
    - a window with nothing around it gets the TPI of a lone tile.
    """
    x0, y0, x1, y1 = window
    w = max(1, int(np.ceil((x1 - x0) / cell_size)))
    h = max(1, int(np.ceil((y1 - y0) / cell_size)))
    m = int(np.ceil(radius_m / cell_size))
    col = np.floor((x - x0) / cell_size).astype(np.int64)
    row = np.floor((y1 - y) / cell_size).astype(np.int64)
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)  # clipped like a tile's edge points
    col[inside] = np.clip(col[inside], 0, w - 1)
    row[inside] = np.clip(row[inside], 0, h - 1)
    col, row = col + m, row + m
    hh, ww = h + 2 * m, w + 2 * m
    keep = (col >= 0) & (col < ww) & (row >= 0) & (row < hh)
    dem = np.full(hh * ww, np.inf)
    np.minimum.at(dem, row[keep] * ww + col[keep], z[keep])
    dem = dem.reshape(hh, ww)
    holes = ~np.isfinite(dem)
    inner = (slice(m, m + h), slice(m, m + w))
    if holes[inner].all():
        return np.zeros((h, w))
    if holes[inner].any():  # from the nearest cell with points, as a tile's holes are
        idx = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
        filled = dem[tuple(idx)]
        dem[inner] = filled[inner]
    dem[~np.isfinite(dem)] = np.nan  # the margin's empty cells: outside every disc's mean
    return tpi(dem, cell_size, radius_m)[inner]
