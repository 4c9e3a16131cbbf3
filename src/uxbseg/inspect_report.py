"""Dataset inspection: run the pair checks of every split and format them as tables."""

from __future__ import annotations

from pathlib import Path

from .classes import CLASSES
from .data.overlap import LEAK_SHARE, TWICE_SHARE, SharedGround, same_ground_pairs
from .data.pairs import (
    PairReport,
    check_pair,
    density_note,
    find_pairs,
    find_splits,
    tile_density,
    tile_extent,
)
from .errors import BadDataError
from .tiling import hold_out_command
from .windows import WINDOW_TRIGGER

__all__ = ["dataset_notes", "format_reports", "inspect_dataset", "reports_to_dict"]


def inspect_dataset(
    root: str | Path,
    splits: list[str] | None = None,
    image_glob: str = "tpi_100m*.png",
    mask_glob: str = "uxb_msk_pl_st*.png",
) -> dict[str, list[PairReport]]:
    """Check every pair of the given (or all found) splits; never raises for bad files."""
    root = Path(root)
    if not root.is_dir():
        raise BadDataError(
            f"{root}: dataset folder not found; expected ROOT/{{train,test,predict}}/"
        )
    splits = splits or find_splits(root)
    if not splits:
        raise BadDataError(
            f"{root}: no split folder with pair_* folders inside; "
            "expected ROOT/train/pair_0000/ ..."
        )
    reports = {
        s: [check_pair(p) for p in find_pairs(root, s, image_glob, mask_glob)] for s in splits
    }
    _note_scale(reports)
    _note_density(reports)
    _note_shared_ground(reports)
    return reports


def _typical(reports: dict[str, list[PairReport]], measure) -> tuple[float | None, str]:
    """``measure`` (:func:`tile_extent`, :func:`tile_density`) of train/, else of every split,
    and the splits it comes from."""
    if reports.get("train"):
        return measure(reports["train"]), "train/"
    every = [r for reps in reports.values() for r in reps]
    return measure(every), ", ".join(f"{s}/" for s in reports)


def _note_scale(reports: dict[str, list[PairReport]]) -> None:
    """Note the tiles much larger or smaller than the training tiles (the median of train/,
    else of every split): the grid spans each tile, so those are seen at another scale."""
    typical, where = _typical(reports, tile_extent)
    if typical is None:
        return
    for reps in reports.values():
        for r in reps:
            if not r.extent or not max(r.extent) > 0:
                continue
            ratio = max(r.extent) / typical
            if 1 / WINDOW_TRIGGER <= ratio <= WINDOW_TRIGGER:
                continue
            r.notes.append(
                f"{max(r.extent):.1f} m on its larger side, {ratio:.2g}x the median "
                f"{typical:.1f} m of {where}: the grid spans each tile, so the model sees this "
                f"one at {1 / ratio:.2g}x the others' scale. predict and evaluate cut large "
                "files into windows; training takes tiles whole: cut it into tiles like the "
                f"others (uxbseg tile ROOT OUT --side {typical:g})"
            )


def _note_density(reports: dict[str, list[PairReport]]) -> None:
    """Note the tiles much sparser or denser than the training tiles (the median of train/,
    else of every split)."""
    typical, where = _typical(reports, tile_density)
    if typical is None:
        return
    for reps in reports.values():
        for r in reps:
            note = None if r.density is None else density_note(r.density, typical, where)
            if note:
                r.notes.append(note)


LEAK_ADVICE = (
    "scored on ground the model was trained on, it measures memory, not what the model finds "
    "in new ground, and training's validation (on test/) picks the best epoch by it; keep "
    "each place in one split (move or remove one of the two)"
)


def _note_shared_ground(reports: dict[str, list[PairReport]]) -> None:
    """Note the test tiles that cover training ground (:mod:`uxbseg.data.overlap`: boxes that
    overlap and terrain that agrees), and the tiles of one split that are mostly the same
    ground."""
    train, test = reports.get("train", []), reports.get("test", [])
    grounds = [r.ground for r in test], [r.ground for r in train]
    for i, j, sg in same_ground_pairs(*grounds, LEAK_SHARE):
        test[i].notes.append(
            f"covers the ground of train/{train[j].pair.pair_id} ({_how(sg)}): " + LEAK_ADVICE
        )
    for split, reps in reports.items():
        if split == "predict":
            continue
        for i, j, sg in same_ground_pairs([r.ground for r in reps], None, TWICE_SHARE):
            reps[j].notes.append(
                f"the same ground as {split}/{reps[i].pair.pair_id} ({_how(sg)}): "
                + ("trained on twice" if split == "train" else "scored twice")
                + "; remove one of the two"
            )


def _how(sg: SharedGround) -> str:
    return f"{sg.share:.0%} of the smaller tile; terrain within a median {sg.dz:.2f} m"


def dataset_notes(
    root: str | Path, reports: dict[str, list[PairReport]], val_split: str = "test"
) -> list[str]:
    """What the dataset as a whole lacks for ``uxbseg train``: its validation split."""
    notes = []
    if "train" in reports and not (Path(root) / val_split).is_dir():
        side = tile_extent(reports["train"])
        notes.append(
            f"no {val_split}/ split: `uxbseg train` validates on it (best epoch, early stopping) "
            f"and does not start without it; make one from train/ with "
            f"`{hold_out_command(root, side)}` (whole blocks of ground move to test/)"
        )
    return notes


def reports_to_dict(reports: dict[str, list[PairReport]], notes: list[str] | None = None) -> dict:
    """The reports as plain data (``inspect --json``): each split's pairs with their files,
    counts, extent, density, class and mask histograms, problems (file, reason, fix) and
    notes, the dataset's own ``notes`` (:func:`dataset_notes`), and whether the dataset is free
    of problems."""

    def path(p) -> str | None:
        return None if p is None else str(p)

    out: dict = {
        "ok": all(r.ok for reps in reports.values() for r in reps),
        "notes": list(notes or []),
        "splits": {},
    }
    for split, reps in reports.items():
        out["splits"][split] = [
            {
                "pair_id": r.pair.pair_id,
                "las": path(r.pair.las),
                "image": path(r.pair.image),
                "mask": path(r.pair.mask),
                "points": r.points,
                "point_format": r.point_format,
                "extent": None if r.extent is None else list(r.extent),
                "density": r.density,
                "las_classes": {str(k): v for k, v in r.las_classes.items()},
                "mask_values": {str(k): v for k, v in r.mask_values.items()},
                "image_size": None if r.image_size is None else list(r.image_size),
                "problems": [
                    {"file": p.file, "reason": p.reason, "fix": p.fix} for p in r.problems
                ],
                "notes": list(r.notes),
            }
            for r in reps
        ]
    return out


def _hist(d: dict[int, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items())) or "-"


_COLUMNS = (
    ("pair", "<"),
    ("points", ">"),
    ("fmt", ">"),
    ("extent (m)", ">"),
    ("pts/m2", ">"),
    ("image", ">"),
    ("LAS classes (code:points)", "<"),
    ("mask values (value:px)", "<"),
    ("status", "<"),
)


def _table(columns: tuple[tuple[str, str], ...], rows: list[list[str]]) -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell, two spaces apart (a
    long pair id or class list shifts the columns instead of running into the next one)."""
    widths = [
        max([len(name), *(len(row[i]) for row in rows)]) for i, (name, _) in enumerate(columns)
    ]

    def line(cells) -> str:
        return "  ".join(
            f"{cell:{align}{w}}" for cell, (_, align), w in zip(cells, columns, widths)
        ).rstrip()

    head = line([name for name, _ in columns])
    return [head, "-" * len(head), *(line(row) for row in rows)]


def format_reports(reports: dict[str, list[PairReport]], notes: list[str] | None = None) -> str:
    """Human-readable tables, one per split, the dataset's own ``notes``, then every problem
    with its fix."""
    lines = []
    codes = ", ".join(f"{c.las_code}={c.name}" for c in CLASSES)
    lines.append(
        f"class map: LAS codes {codes}; mask values "
        + ", ".join(f"{c.mask_value}={c.name}" for c in CLASSES)
    )
    for split, reps in reports.items():
        lines.append("")
        lines.append(f"[{split}] {len(reps)} pair{'s' * (len(reps) != 1)}")
        rows = []
        for r in reps:
            rows.append(
                [
                    r.pair.pair_id,
                    "-" if r.points is None else str(r.points),
                    "-" if r.point_format is None else str(r.point_format),
                    f"{r.extent[0]:.1f} x {r.extent[1]:.1f}" if r.extent else "-",
                    f"{r.density:.3g}" if r.density is not None else "-",
                    f"{r.image_size[0]}x{r.image_size[1]}" if r.image_size else "-",
                    _hist(r.las_classes),
                    _hist(r.mask_values),
                    "ok" if r.ok else f"{len(r.problems)} problem(s)",
                ]
            )
        lines += _table(_COLUMNS, rows)
        for pid, note in [(r.pair.pair_id, n) for r in reps for n in r.notes]:
            lines.append(f"  note {pid}: {note}")
    problems = [
        (s, r.pair.pair_id, p) for s, reps in reports.items() for r in reps for p in r.problems
    ]
    lines.append("")
    lines += [f"note: {n}" for n in notes or []]
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        for split, pid, p in problems:
            lines.append(f"  {split}/{pid}: {p.file}: {p.reason}\n      fix: {p.fix}")
    else:
        lines.append("no problems found")
    return "\n".join(lines)
