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
