"""Command-line usage errors: exit code 2 with a message naming the argument, nothing written."""

from __future__ import annotations

import pytest

from uxbseg.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minutes", "0"], "argument --minutes: must be > 0, got 0"),
        (["--minutes", "-1.5"], "argument --minutes: must be > 0, got -1.5"),
        (["--minutes", "soon"], "argument --minutes: invalid float value: 'soon'"),
        (["--train-tiles", "0"], "argument --train-tiles: must be > 0, got 0"),
    ],
)
def test_demo_rejects_a_budget_or_tile_count_that_is_not_positive(args, message, tmp_path, capsys):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_each_demo_trains_into_a_new_run_folder(tmp_path):
    from uxbseg.demo import _new_run_dir

    assert _new_run_dir(tmp_path) == tmp_path / "run"
    (tmp_path / "run").mkdir()
    assert _new_run_dir(tmp_path) == tmp_path / "run_2"
    (tmp_path / "run_2").mkdir()
    assert _new_run_dir(tmp_path) == tmp_path / "run_3"
