import laspy
import numpy as np
import pytest
from PIL import Image

from uxbseg.data.pairs import find_pairs
from uxbseg.data.synthetic import SynthParams, synth_dataset, synth_tile
from uxbseg.errors import BadDataError


def test_layout_and_content(tiny_dataset):
    pairs = find_pairs(tiny_dataset, "train")
    assert [p.pair_id for p in pairs] == ["pair_0000", "pair_0001", "pair_0002", "pair_0003"]
    seen = set()
    for p in pairs:
        assert p.image.name.startswith("tpi_100m") and p.mask.name.startswith("uxb_msk_pl_st")
        img = np.asarray(Image.open(p.image))
        mask = np.asarray(Image.open(p.mask))
        assert img.shape == (512, 512, 3) and mask.shape == (512, 512)
        assert set(np.unique(mask)) <= {0, 76, 150}
        las = laspy.read(p.las)
        assert las.header.scales.tolist() == [0.01, 0.01, 0.01]
        geokeys = [v for v in las.vlrs if v.record_id == 34735]
        assert geokeys and any(
            k.id == 3072 and k.value_offset == 32616 for k in geokeys[0].geo_keys
        )
        assert np.ptp(las.x) == 100.0 and np.ptp(las.y) == 100.0
        area_density = len(las.points) / 100.0**2
        assert 2.0 <= area_density <= 10.1
        assert np.ptp(las.z) > 5.0  # hilly terrain
        assert (np.diff(las.gps_time) > 0).all()
        seen.update(np.unique(las.classification).tolist())
    assert {2, 27, 6} <= seen


def test_deterministic_by_seed(tmp_path):
    a = synth_dataset(tmp_path / "a", {"train": 1}, seed=5)
    b = synth_dataset(tmp_path / "b", {"train": 1}, seed=5)
    c = synth_dataset(tmp_path / "c", {"train": 1}, seed=6)
    la, lb, lc = (laspy.read(next(f[0].glob("*.las"))) for f in (a, b, c))
    np.testing.assert_array_equal(la.points.array, lb.points.array)
    assert len(la.points) != len(lc.points) or not np.array_equal(la.Z, lc.Z)


def test_labels_follow_the_relief():
    rng = np.random.default_rng(11)
    p = SynthParams(empty_tile_fraction=0.0, plazuelas=(1, 1), isolated_structures=(2, 2))
    las, _image, mask = synth_tile(rng, (0.0, 0.0), p)
    cls = np.asarray(las.classification)
    assert (cls == 6).any() and (cls == 27).any()
    # mask pixels and point labels agree where points fall
    col = np.clip((np.asarray(las.x) / 100 * 512).astype(int), 0, 511)
    row = np.clip(((100 - np.asarray(las.y)) / 100 * 512).astype(int), 0, 511)
    lut = {0: 2, 76: 27, 150: 6}
    from_mask = np.vectorize(lut.get)(mask[row, col])
    labelled = cls != 1
    assert (from_mask[labelled] == cls[labelled]).mean() > 0.97


def test_writes_over_its_own_tiles_but_never_into_a_real_pair(tmp_path):
    first = synth_dataset(tmp_path, {"train": 1, "test": 1}, seed=5)
    again = synth_dataset(tmp_path, {"train": 1, "test": 1}, seed=5)  # same names: replaced
    assert again == first and len(list(first[0].iterdir())) == 3
    real = tmp_path / "test" / "pair_0000" / "survey_tile.laz"
    real.write_bytes(b"a real tile")
    untouched = {p: p.read_bytes() for p in (tmp_path / "train" / "pair_0000").iterdir()}
    with pytest.raises(BadDataError, match=r"test/pair_0000 already holds survey_tile\.laz"):
        synth_dataset(tmp_path, {"train": 1, "test": 1}, seed=6)
    # refused before anything was written, the train pair included
    assert {p: p.read_bytes() for p in (tmp_path / "train" / "pair_0000").iterdir()} == untouched
    assert real.read_bytes() == b"a real tile"
