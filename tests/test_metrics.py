import numpy as np
import pytest

from uxbseg.metrics import iou_interval, metrics_from_confusion


def _tile(tp_plaz: int, fp_plaz: int) -> np.ndarray:
    """A tile with 100 ground voxels right, ``tp_plaz`` plazuela right and ``fp_plaz`` ground
    voxels called plazuela; structure perfect (10 voxels)."""
    return np.array([[100, fp_plaz, 0], [0, tp_plaz, 0], [0, 0, 10]])


def test_interval_brackets_the_split_score_and_is_deterministic():
    rng = np.random.default_rng(1)
    tiles = np.stack([_tile(int(rng.integers(5, 40)), int(rng.integers(0, 30))) for _ in range(12)])
    split = metrics_from_confusion(tiles.sum(0))["iou_plazuela"]
    iv = iou_interval(tiles)
    lo, hi = iv["plazuela"]
    assert lo < split < hi and hi - lo > 0.05  # unequal tiles: a real spread
    assert iv["structure"] == (1.0, 1.0)  # perfect on every tile: no spread
    assert iou_interval(tiles) == iv  # seeded
    assert (
        iou_interval(tiles, level=0.5)["plazuela"][1]
        - iou_interval(tiles, level=0.5)["plazuela"][0]
        < hi - lo
    )


def test_identical_tiles_or_one_tile_give_the_point_score():
    tile = _tile(20, 10)
    score = metrics_from_confusion(tile)["iou_plazuela"]
    for tiles in (np.stack([tile] * 8), tile[None]):
        lo, hi = iou_interval(tiles)["plazuela"]
        assert lo == pytest.approx(score) and hi == pytest.approx(score)


def test_more_tiles_of_the_same_kind_narrow_the_interval():
    rng = np.random.default_rng(0)

    def width(n: int) -> float:
        tiles = np.stack(
            [_tile(int(rng.integers(5, 40)), int(rng.integers(0, 30))) for _ in range(n)]
        )
        lo, hi = iou_interval(tiles)["plazuela"]
        return hi - lo

    assert width(60) < width(12)


def test_absent_class_gives_nan_and_bad_input_is_refused():
    tiles = np.stack([np.diag([5, 0, 3])] * 3)
    lo, hi = iou_interval(tiles)["plazuela"]
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="tile_confusions"):
        iou_interval(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="level"):
        iou_interval(tiles, level=95)


def test_the_report_of_one_tile_has_no_interval_and_an_absent_class_no_span():
    from uxbseg.evaluate import format_result

    cm = np.array([[90, 5, 0], [3, 7, 0], [0, 0, 0]])  # no structure at all
    level = {
        "metrics": metrics_from_confusion(cm),
        "baseline": metrics_from_confusion(np.array([[95, 0, 0], [10, 0, 0], [0, 0, 0]])),
        "confusion": cm.tolist(),
        "iou_interval": iou_interval([cm]),
    }
    assert np.isnan(level["iou_interval"]["structure"]).all()
    one = format_result({"split": "test", "tiles": 1, "points": level})
    assert one.startswith("test: 1 tile\n")
    assert "IoU, 95 % interval: none from one tile" in one
    two = format_result({"split": "test", "tiles": 2, "points": level})
    assert two.startswith("test: 2 tiles\n") and "interval over the 2 tiles" in two
    assert "structure -" in two and "nan" not in two.split("IoU, 95 %")[1]


def test_the_metrics_table_names_each_class_whole_with_its_value_beneath():
    from uxbseg.metrics import format_metrics_table

    m = metrics_from_confusion(np.array([[50, 2, 0], [3, 9, 1], [0, 0, 7]]))
    head, row = format_metrics_table({"a label longer than twenty-two": m}).splitlines()
    for name in ("IoU ground", "IoU plazuela", "IoU structure", "F1 structure"):
        end = head.index(name) + len(name)  # right-aligned: the value ends where its name does
        key = name.lower().replace(" ", "_")
        assert row[:end].endswith(f"{m[key]:.3f}")
    assert row.startswith("a label longer than twenty-two  ")
