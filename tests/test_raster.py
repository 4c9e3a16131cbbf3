import numpy as np
import pytest
from PIL import Image

from uxbseg.classes import IGNORE
from uxbseg.errors import BadDataError
from uxbseg.io import raster
from uxbseg.io.raster import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    colourise_tpi,
    dem_from_points,
    image_depth_note,
    load_image,
    load_mask,
    open_image,
    tpi,
)


def test_load_image_normalises_like_segformer(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(tmp_path / "i.png")
    arr = load_image(tmp_path / "i.png", 16)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)


def test_load_mask_maps_and_resizes_nearest(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:4, :4] = 76
    m[4:, 4:] = 150
    m[0, 7] = 200
    Image.fromarray(m).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png", (4, 4))
    assert out.dtype == np.int64
    assert out[0, 0] == 1 and out[3, 3] == 2 and out[3, 0] == 0
    assert set(np.unique(out)) <= {0, 1, 2, IGNORE}


def test_corrupt_png_is_bad_data(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(BadDataError, match=r"x\.png"):
        load_image(tmp_path / "x.png")


def _grey(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (24, 32)).astype(np.uint8)


def test_a_16_bit_tpi_image_is_read_by_its_range_not_clipped_white(tmp_path):
    grey = _grey(np.random.default_rng(0))
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 0..65535
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    # Pillow's own conversion clips at 255: the image would be white
    assert (np.asarray(Image.open(tmp_path / "16.png").convert("RGB")) == 255).mean() > 0.9
    rgb = np.asarray(open_image(tmp_path / "16.png", "RGB"))
    np.testing.assert_array_equal(rgb, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(
        load_image(tmp_path / "16.png", 8), load_image(tmp_path / "8.png", 8)
    )
    note = image_depth_note(tmp_path / "16.png")
    assert note.startswith("16-bit greyscale image, values") and "value / 256" in note
    assert image_depth_note(tmp_path / "8.png") is None


def test_an_image_and_its_note_come_from_one_decoding(tmp_path, monkeypatch):
    """inspect reads a 16-bit image once for both its pixels and the note on how they were
    read (a survey's image may hold hundreds of millions of pixels)."""
    from uxbseg.io import raster

    narrow = 1000 + _grey(np.random.default_rng(2)).astype(np.uint16) // 40
    Image.fromarray(narrow).save(tmp_path / "16.png")
    Image.fromarray(_grey(np.random.default_rng(2))).save(tmp_path / "8.png")
    calls = []
    real = raster._eight_bit
    monkeypatch.setattr(raster, "_eight_bit", lambda im, path: calls.append(path) or real(im, path))
    im, note = raster.open_image_noted(tmp_path / "16.png", "RGB")
    assert len(calls) == 1
    again = open_image(tmp_path / "16.png", "RGB")
    np.testing.assert_array_equal(np.asarray(im), np.asarray(again))
    assert note == image_depth_note(tmp_path / "16.png") and "only 1 grey level(s)" in note
    assert raster.open_image_noted(tmp_path / "8.png", "RGB")[1] is None
    assert raster.open_image_noted(tmp_path / "16.png", "L")[1] is None  # a mask keeps its values


def test_8_bit_values_in_a_16_bit_file_are_read_as_they_are(tmp_path):
    grey = _grey(np.random.default_rng(1))
    Image.fromarray(grey.astype(np.uint16)).save(tmp_path / "16.png")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "16.png", "L")), grey)
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "16.png", "RGB"))[..., 1], grey)
    assert "read as they are" in image_depth_note(tmp_path / "16.png")


def test_a_16_bit_image_that_keeps_few_grey_levels_is_noted_with_the_fix(tmp_path):
    narrow = 1000 + _grey(np.random.default_rng(2)).astype(np.uint16) // 40  # 7 values
    Image.fromarray(narrow).save(tmp_path / "16.png")
    note = image_depth_note(tmp_path / "16.png")
    assert "only 1 grey level(s) remain of 7" in note and "gdal_translate -ot Byte -scale" in note


def test_float_images_0_to_1_are_scaled_and_a_float_tpi_in_metres_refused(tmp_path):
    grey = _grey(np.random.default_rng(3))
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(
        np.asarray(open_image(tmp_path / "unit.tif", "RGB"))[..., 0], grey
    )
    assert "value x 255" in image_depth_note(tmp_path / "unit.tif")
    metres = grey.astype(np.float32) / 32 - 4  # a TPI of -4..4 m
    Image.fromarray(metres).save(tmp_path / "tpi.tif")
    with pytest.raises(
        BadDataError, match=r"tpi\.tif: float greyscale image, values -4\.\.3\.96875"
    ):
        load_image(tmp_path / "tpi.tif")
    assert image_depth_note(tmp_path / "tpi.tif") is None  # open_image's error says it
    nan = metres.copy()
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(BadDataError, match="NaN"):
        open_image(tmp_path / "nan.tif", "RGB")


def test_a_16_bit_mask_keeps_its_class_values(tmp_path):
    m = np.zeros((8, 8), np.uint16)
    m[:4] = 76
    m[6:] = 150
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_array_equal(
        load_mask(tmp_path / "m.png", (8, 8)), (m == 76) * 1 + (m == 150) * 2
    )


def test_tpi_plane_is_zero_and_bump_positive():
    yy, xx = np.mgrid[0:120, 0:120].astype(float)
    plane = 0.3 * xx + 0.1 * yy
    t = tpi(plane, 1.0, 20.0)
    assert np.abs(t[30:90, 30:90]).max() < 1e-6
    bump = plane + 3.0 * np.exp(-((xx - 60) ** 2 + (yy - 60) ** 2) / 20)
    assert tpi(bump, 1.0, 20.0)[60, 60] > 2.0
    rgb = colourise_tpi(tpi(bump, 1.0, 20.0), 2.5, 64)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[32, 32, 0] > rgb[32, 32, 2]  # rises are red


def test_dem_from_points_takes_lowest_and_fills_holes():
    x = np.array([0.5, 0.5, 2.5])
    y = np.array([2.5, 2.5, 0.5])
    z = np.array([5.0, 3.0, 1.0])
    dem = dem_from_points(x, y, z, (0, 0, 3, 3), 1.0)
    assert dem.shape == (3, 3)
    assert dem[0, 0] == 3.0 and dem[2, 2] == 1.0 and np.isfinite(dem).all()


def test_tpi_gapless_dem_reuses_the_normalisation_and_gives_the_same_values():
    """The cached normalisation of a DEM without gaps gives exactly the uncached TPI, and a DEM
    with gaps still normalises by its own valid cells."""
    from scipy import signal

    from uxbseg.io.raster import _disc, _disc_coverage

    def uncached(d):  # both convolutions for every tile, as before the cache
        kernel = _disc(12.5)
        num = signal.fftconvolve(d, kernel, mode="same")
        den = signal.fftconvolve(np.ones_like(d), kernel, mode="same")
        return d - num / np.maximum(den, 1e-9)

    rng = np.random.default_rng(0)
    dem = rng.normal(100.0, 5.0, (90, 70))
    other = rng.normal(300.0, 20.0, (90, 70))  # another tile of the same size: a cache hit
    _disc_coverage.cache_clear()
    np.testing.assert_array_equal(tpi(dem, 2.0, 25.0), uncached(dem))
    np.testing.assert_array_equal(tpi(other, 2.0, 25.0), uncached(other))
    info = _disc_coverage.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    gappy = dem.copy()
    gappy[:, :35] = np.nan  # the west half missing: its mean comes from the east half only
    t = tpi(gappy, 2.0, 25.0)
    assert np.all(t[:, :35] == 0.0)
    east = tpi(dem[:, 35:], 2.0, 25.0)  # the east half alone, as its own raster
    np.testing.assert_allclose(t[:, 35:], east, atol=1e-9)


@pytest.mark.real
def test_tpi_on_the_real_dem_is_the_disc_mean_difference():
    """The real 1 m DEM (1000 x 1000, Slovenia): at 100 m the FFT TPI equals elevation minus the
    plain mean of the cells within 100 m that lie in the raster, at the centre, the edges and
    the corners alike."""
    from .conftest import REAL_DIR

    path = REAL_DIR / "dem" / "TM1_564_146.tif"
    if not path.is_file():
        pytest.skip(f"real DEM not found at {path} (needs ../shared beside the project)")
    dem = np.asarray(Image.open(path), dtype=np.float64)
    assert dem.shape == (1000, 1000) and np.isfinite(dem).all()
    t = tpi(dem, 1.0, 100.0)
    assert t.shape == dem.shape and np.isfinite(t).all()
    yy, xx = np.mgrid[0:1000, 0:1000]
    rng = np.random.default_rng(1)
    cells = [(500, 500), (0, 0), (999, 999), (0, 640), (371, 999), (50, 50), (950, 120)]
    cells += [tuple(c) for c in rng.integers(0, 1000, (8, 2))]
    for r, c in cells:
        inside = (yy - r) ** 2 + (xx - c) ** 2 <= 100.0**2
        assert t[r, c] == pytest.approx(dem[r, c] - dem[inside].mean(), abs=1e-6), (r, c)
    # real relief, not a flat sheet: metres of TPI both ways
    assert t.min() < -2.0 and t.max() > 2.0


def test_open_image_reads_images_beyond_pillows_bomb_guard(tmp_path, monkeypatch, recwarn):
    # Pillow refuses an image of more than twice its MAX_IMAGE_PIXELS; a survey's TPI image can
    # be that large, so uxbseg's own limit applies and Pillow's is set back afterwards.
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1200 px: Pillow alone would refuse
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    im = open_image(path, "RGB")
    assert im.size == (40, 30) and im.getpixel((5, 5)) == (10, 20, 30)
    assert Image.MAX_IMAGE_PIXELS == 100
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_open_image_refuses_an_image_over_the_limit_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("L", (40, 30)).save(path)
    monkeypatch.setattr(raster, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadDataError, match=r"huge\.png: image of 40 x 30 pixels.*uxbseg tile"):
        open_image(path, "L")
    monkeypatch.setattr(raster, "MAX_IMAGE_PIXELS", 1200)
    assert open_image(path, "L").size == (40, 30)
