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
