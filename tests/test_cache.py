import os

import laspy
import numpy as np

from uxbseg.data.cache import VoxelCache
from uxbseg.data.dataset import UXBDataset
from uxbseg.data.pairs import find_pairs
from uxbseg.data.voxelize import GridSpec


def test_cache_returns_the_same_sample_and_follows_content(tiny_dataset, tmp_path):
    import shutil

    shutil.copytree(tiny_dataset / "train", tmp_path / "d" / "train")
    pairs = find_pairs(tmp_path / "d", "train")
    grid = GridSpec((32, 32, 64))
    cache = VoxelCache(tmp_path / "cache", grid)
    plain = UXBDataset(pairs, grid, 64)
    cached = UXBDataset(pairs, grid, 64, cache=cache)
    a = plain[0]
    b = cached[0]  # miss: computed and stored
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    c = cached[0]  # hit
    for key in ("voxels", "labels3d"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        np.testing.assert_array_equal(a[key].numpy(), c[key].numpy())
    np.testing.assert_array_equal(cached.labels3d(0), plain.labels3d(0))
    # other grid settings -> another key
    other = VoxelCache(tmp_path / "cache", GridSpec((32, 32, 64), binning="uniform"))
    assert other.path_for(pairs[0].las) != cache.path_for(pairs[0].las)
    # changed content -> another key, and the new content is what comes back
    las = laspy.read(pairs[0].las)
    las.Z = las.Z + 500
    las.X = las.X[::-1]
    las.write(pairs[0].las)
    os.utime(pairs[0].las, ns=(1, 1))
    d = cached[0]
    e = UXBDataset(pairs, grid, 64)[0]
    np.testing.assert_array_equal(d["voxels"].numpy(), e["voxels"].numpy())
    assert not np.array_equal(d["voxels"].numpy(), a["voxels"].numpy())
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no partial files left
