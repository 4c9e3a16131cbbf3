import numpy as np
import pytest

from uxbseg.classes import IGNORE
from uxbseg.data.voxelize import GridSpec, voxel_labels, voxelize
from uxbseg.io.las import PointArrays


def _points(n=5000, seed=0, z_spread=1000, cls=None):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 10_000, n).astype(np.int32)
    Y = rng.integers(0, 10_000, n).astype(np.int32)
    Z = rng.integers(0, z_spread, n).astype(np.int32) if z_spread else np.zeros(n, np.int32)
    c = cls if cls is not None else rng.choice([2, 27, 6, 1], n).astype(np.uint8)
    return PointArrays(
        X,
        Y,
        Z,
        rng.integers(0, 4000, n).astype(np.uint16),
        np.ones(n, np.uint8),
        np.ones(n, np.uint8),
        c,
    )


ALL = ("occupancy", "log_density", "height", "intensity", "return_ratio")


def test_shapes_and_point_index():
    spec = GridSpec((8, 16, 32), features=ALL)
    pts = _points()
    vox = voxelize(pts, spec)
    assert vox.features.shape == (5, 8, 16, 32) and vox.features.dtype == np.float32
    assert vox.labels.shape == (8, 16, 32) and vox.labels.dtype == np.int64
    assert len(vox.point_voxel) == len(pts)
    assert vox.point_voxel.min() >= 0 and vox.point_voxel.max() < spec.num_voxels
    counts = np.bincount(vox.point_voxel, minlength=spec.num_voxels).reshape(spec.shape)
    np.testing.assert_array_equal(vox.features[0], (counts > 0).astype(np.float32))
    # empty voxels are IGNORE, occupied voxels with a mapped point have a class
    assert (vox.labels[counts == 0] == IGNORE).all()


def test_classification_is_never_a_feature():
    spec = GridSpec((8, 16, 32), features=ALL)
    pts = _points()
    a = voxelize(pts, spec).features
    rng = np.random.default_rng(1)
    pts.classification = rng.permutation(pts.classification)
    b = voxelize(pts, spec).features
    pts.classification = np.full(len(pts), 1, np.uint8)
    c = voxelize(pts, spec).features
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_row_zero_is_north_and_column_zero_west():
    X = np.array([0, 100, 0, 100], np.int32)
    Y = np.array([0, 0, 100, 100], np.int32)  # SW, SE, NW, NE
    Z = np.array([0, 0, 0, 10], np.int32)
    pts = PointArrays(X, Y, Z, classification=np.array([2, 2, 2, 6], np.uint8))
    spec = GridSpec((2, 4, 4), binning="uniform", z_range="minmax")
    vox = voxelize(pts, spec)
    d, h, w = np.unravel_index(vox.point_voxel, spec.shape)
    assert list(zip(h, w)) == [(3, 0), (3, 3), (0, 0), (0, 3)]
    assert d.tolist() == [0, 0, 0, 1]
    assert vox.labels[1, 0, 3] == 2


@pytest.mark.parametrize("n", [1, 7])
def test_degenerate_extents_have_no_nan(n):
    pts = PointArrays(
        np.full(n, 5, np.int32),
        np.full(n, 5, np.int32),
        np.full(n, 5, np.int32),
        classification=np.full(n, 2, np.uint8),
    )
    spec = GridSpec((4, 8, 8), features=ALL)
    vox = voxelize(pts, spec)
    assert np.isfinite(vox.features).all()
    assert vox.features[0].sum() == 1 and len(vox.point_voxel) == n


def test_flat_tile_has_no_nan():
    vox = voxelize(_points(z_spread=0), GridSpec((4, 8, 8), features=ALL))
    assert np.isfinite(vox.features).all()


def test_outlier_does_not_squeeze_terrain():
    pts = _points(n=20_000, z_spread=1000)  # 10 m of terrain at scale 0.01
    pts.Z[0] = 30_000 + 1000  # one noise point 300 m above
    robust = voxelize(pts, GridSpec((32, 8, 8)))
    seedlike = voxelize(pts, GridSpec((32, 8, 8), z_range="minmax"))
    used = lambda v: len(np.unique(np.unravel_index(v.point_voxel[1:], (32, 8, 8))[0]))  # noqa: E731
    assert used(robust) >= 30  # terrain spread over the whole depth
    assert used(seedlike) <= 3  # the seed's min-max squeezes it into the lowest bins


def test_seed_binning_formula():
    v = np.array([0, 50, 99, 100], np.int32)
    pts = PointArrays(v, v, v)
    vox = voxelize(pts, GridSpec((4, 4, 4), binning="seed", z_range="minmax"), with_labels=False)
    _d, h, w = np.unravel_index(vox.point_voxel, (4, 4, 4))
    assert w.tolist() == [0, 1, 2, 3]  # floor(t * 3)
    assert h.tolist() == [3, 2, 1, 0]


def test_majority_vote_and_ties_go_to_rarer_class():
    flat = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 4, 4])
    cls = np.array([0, 0, 2, 0, 1, 2, 0, IGNORE, 0, 0, 0, 0])
    lab = voxel_labels(flat, cls, 6)
    # tile counts: ground 9, plazuela 1, structure 2 -> rarity plazuela > structure > ground
    assert lab.tolist() == [0, 1, 2, IGNORE, 0, IGNORE]
    lab_g = voxel_labels(flat, cls, 6, empty_label="ground")
    assert lab_g[5] == 0 and lab_g[3] == IGNORE


def test_relief_marks_mounds_above_the_local_terrain():
    rng = np.random.default_rng(0)
    n = 40_000
    x = rng.uniform(0, 100, n)
    y = rng.uniform(0, 100, n)
    z = 0.2 * x + 3.0 * np.exp(-((x - 50) ** 2 + (y - 50) ** 2) / 20.0)  # slope + mound
    pts = PointArrays(
        (x * 100).astype(np.int32),
        (y * 100).astype(np.int32),
        (z * 100).astype(np.int32),
        scales=(0.01, 0.01, 0.01),
    )
    spec = GridSpec((16, 32, 32), binning="uniform", features=("relief",))
    rel = voxelize(pts, spec, with_labels=False).features[0]
    top = rel[:, 14:18, 14:18].max()
    assert top > 0.9  # ~3 m, above the 2 m scale
    assert np.abs(rel[:, 22:26, 6:10]).max() < 0.25  # plain slope away from mound and edges


def test_surface_features_are_dense_columns_of_the_ground_relief():
    rng = np.random.default_rng(1)
    n = 40_000
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    z = 0.2 * x + 3.0 * np.exp(-((x - 50) ** 2 + (y - 50) ** 2) / 20.0)
    z[:2000] += 2.5  # low returns above the ground must not lift the surface
    pts = PointArrays(*(np.round(a * 100).astype(np.int32) for a in (x, y, z)), scales=(0.01,) * 3)
    feats = ("occupancy", "relief", "surface_relief", "above_surface")
    spec = GridSpec((16, 32, 32), binning="uniform", features=feats)
    occ, rel, srel, above = voxelize(pts, spec, with_labels=False).features
    assert (srel == srel[:1]).all()  # one value per column, in every depth slice
    lowest = occ.argmax(axis=0)
    ground_rel = np.take_along_axis(rel, lowest[None], 0)[0]
    np.testing.assert_allclose(srel[0], ground_rel, atol=1e-6)  # = relief of the ground voxel
    assert srel[0, 14:18, 14:18].max() > 0.75 and np.abs(srel[0, 22:26, 6:10]).max() < 0.25
    assert (np.diff(above, axis=0) >= 0).all()  # grows with depth (clipped at +-1)
    col = above[:, 24, 8]
    assert col[lowest[24, 8]] == pytest.approx(0.0, abs=0.35)  # ground voxel ~ at the surface
    assert col[0] < 0 < col[-1]


def test_fine_reliefs_are_the_same_relief_at_a_quarter_of_the_scale():
    rng = np.random.default_rng(2)
    n = 30_000
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    z = 0.1 * y + 0.6 * ((np.abs(x - 50) < 15) & (np.abs(y - 50) < 10))  # a 0.6 m platform
    pts = PointArrays(*(np.round(a * 100).astype(np.int32) for a in (x, y, z)), scales=(0.01,) * 3)
    feats = (
        "surface_relief",
        "surface_relief_fine",
        "surface_relief_wide",
        "surface_relief_wide_fine",
    )
    spec = GridSpec((16, 32, 32), binning="uniform", features=feats)
    rel, fine, wide, wide_fine = voxelize(pts, spec, with_labels=False).features[:, 0]
    np.testing.assert_allclose(fine, np.clip(4 * rel, -1, 1), atol=1e-5)
    np.testing.assert_allclose(wide_fine, np.clip(4 * wide, -1, 1), atol=1e-5)
    # the platform fills the fine feature's range where the coarse one stays faint
    assert wide[16, 16] < 0.3 and wide_fine[16, 16] > 0.9


@pytest.mark.parametrize("binning", ["seed", "uniform"])
@pytest.mark.parametrize("threads", [False, True])
def test_chunked_binning_matches_the_formula(monkeypatch, binning, threads):
    """Chunks (and the two-thread split) leave no trace: every point lands where the integer
    formula puts it, labels equal those of one whole-array pass."""
    import uxbseg.data.voxelize as vz

    pts = _points(n=10_007, z_spread=5000)
    pts.Z[:3] = [-40_000, 90_000, 4999]  # outliers beyond the percentile clip
    spec = GridSpec((8, 16, 32), binning=binning, features=("occupancy", "height"))
    whole = voxelize(pts, spec)
    monkeypatch.setattr(vz, "_CHUNK", 1000)
    monkeypatch.setattr(vz, "_THREAD_MIN_POINTS", 0 if threads else 10**9)
    vox = voxelize(pts, spec)
    zlo, zhi = vz._z_limits(pts.Z, spec)

    def ref(v, n, lo, hi):
        mult = n - 1 if binning == "seed" else n
        idx = (np.clip(v.astype(np.int64), lo, hi) - lo) * mult // (hi - lo)
        return np.minimum(idx, n - 1)

    d = ref(pts.Z, 8, zlo, zhi)
    h = 15 - ref(pts.Y, 16, int(pts.Y.min()), int(pts.Y.max()))
    w = ref(pts.X, 32, int(pts.X.min()), int(pts.X.max()))
    np.testing.assert_array_equal(vox.point_voxel, (d * 16 + h) * 32 + w)
    np.testing.assert_array_equal(vox.point_voxel, whole.point_voxel)
    np.testing.assert_array_equal(vox.labels, whole.labels)
    np.testing.assert_allclose(vox.features, whole.features, atol=1e-6)
    _flat, zfrac = vz.bin_points(pts, spec)
    assert zfrac.min() >= 0.0 and zfrac.max() <= 1.0
