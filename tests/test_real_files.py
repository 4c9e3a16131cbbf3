"""Every real lidar file in ../shared/data/real/las reads and voxelises with its points kept."""

import laspy
import numpy as np
import pytest

from uxbseg.config import VOXEL_FEATURES
from uxbseg.data.voxelize import GridSpec, voxelize
from uxbseg.io.las import PointArrays, read_las

from .conftest import REAL_LAS, real_las_files


@pytest.mark.real
@pytest.mark.parametrize("path", REAL_LAS or [None], ids=lambda p: p.name if p else "missing")
def test_real_file_voxelises(path):
    real_las_files()
    las = read_las(path)
    with laspy.open(path) as reader:
        n = reader.header.point_count
    assert len(las.points) == n
    spec = GridSpec((32, 64, 64), features=VOXEL_FEATURES)
    vox = voxelize(PointArrays.from_las(las), spec)
    assert len(vox.point_voxel) == n
    assert np.isfinite(vox.features).all()
    assert int(vox.features[0].sum()) == len(np.unique(vox.point_voxel))
    counts = np.bincount(vox.point_voxel, minlength=spec.num_voxels)
    assert counts.sum() == n


FT, US_FT = ("foot", 0.3048), ("US survey foot", 0.3048006096012192)
M = ("metre", 1.0)
UNITS = {  # (horizontal, vertical) as the files' WKT or GeoTIFF keys give them
    "1_4_w_evlr.las": (US_FT, US_FT),  # WKT in an EVLR, a VERTCS inside the PROJCS
    "autzen_trim.laz": (FT, None),  # GeoTIFF keys
    "autzen_trim_7.las": (FT, None),
    "simple.copc.laz": (M, US_FT),  # COMPD_CS: metres, heights in US feet
    "las_with_several_extra_byte_bloc.laz": (M, None),  # WKT 2
    "test_semis_2023_0292_6833_LA93_IGN69_extra_dims.laz": (M, None),
    "simple.las": (None, None),  # no unit stated
}


EPSG = {  # of the horizontal CRS, as the files' WKT or GeoTIFF keys name it
    "1_4_w_evlr.las": 2903,  # NAD83(HARN) / New Mexico Central (ftUS), a VERTCS inside
    "autzen_trim.laz": None,  # ESRI WKT without an authority, GeoTIFF keys "user-defined"
    "simple.copc.laz": 2991,  # COMPD_CS: NAD83 / Oregon LCC (m) + NAVD88 height
    "las_with_several_extra_byte_bloc.laz": 2154,  # WKT 2 (and GeoTIFF keys)
    "test_data_77050_627755_LA93_IGN69.laz": 2154,  # Lambert-93
    "simple.las": None,  # no CRS at all
}


@pytest.mark.real
@pytest.mark.parametrize(("name", "code"), EPSG.items())
def test_crs_epsg_of_real_files(name, code):
    import laspy

    from uxbseg.io.las import crs_epsg

    (path,) = [p for p in real_las_files() if p.name == name]
    with laspy.open(path) as f:
        assert crs_epsg(f.header) == code
    assert crs_epsg(read_las(path)) == code


@pytest.mark.real
@pytest.mark.parametrize(("name", "units"), UNITS.items())
def test_crs_units_of_real_files(name, units):
    from uxbseg.io.las import crs_units, units_warning

    (path,) = [p for p in real_las_files() if p.name == name]
    las = read_las(path)
    assert crs_units(las) == units
    warning = units_warning(las)
    if any(u and u[0] != "metre" for u in units):
        assert "foot" in warning and "reproject" in warning
    else:
        assert warning is None
