"""The scale benchmark compares the surveys' file pairs and the seam joins with their all-pairs
references on the same grids."""

from __future__ import annotations

from benchmarks.bench_scale import all_pairs_touching, dense_pairs, edge_finds, grid_files, main
from uxbseg.finds import merge_finds
from uxbseg.survey import _file_pairs


def test_the_references_agree_with_the_current_forms():
    files = grid_files(6)
    got, want = _file_pairs(files, 100.0), dense_pairs(files, 100.0)
    assert [(i.tolist(), j.tolist()) for i, j in (got["near"], got["same"])] == [
        (i.tolist(), j.tolist()) for i, j in (want["near"], want["same"])
    ]
    assert len(got["near"][0]) == 2 * 6 * 5 + 2 * 5 * 5  # edges and corners of a 6 x 6 grid
    finds = edge_finds(4, per_file=60)
    parts = sum(len(f) for _, _, f in finds)
    # every touching pair of parts joins two finds into one (fewer when pairs chain)
    assert parts - all_pairs_touching(finds) <= len(merge_finds(finds)) < parts


def test_the_benchmark_prints_both_tables(capsys):
    main(["--sides", "3", "--big", "4"])
    out = capsys.readouterr().out
    assert "| 9 | " in out and "| 16 | " in out and out.count("x |") == 2
