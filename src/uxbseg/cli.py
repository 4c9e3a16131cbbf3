"""The ``uxbseg`` command line: argument parsing only; the work lives in the modules it calls.

Exit codes: 0 success, 1 bad input (message names the file and the fix), 2 usage error.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import BadDataError, UXBError
from .runtime import tune_cpu_allocator

log = logging.getLogger("uxbseg")


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import synth_dataset

    t0 = time.perf_counter()
    splits = {"train": args.train, "test": args.test, "predict": args.predict}
    folders = synth_dataset(args.out, splits, seed=args.seed)
    print(
        f"wrote {len(folders)} pairs to {args.out} "
        f"(train {args.train}, test {args.test}, predict {args.predict}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from .environment import describe_environment, format_environment

    env = describe_environment()
    if args.json:
        import json

        print(json.dumps(env, indent=2))
    else:
        print(format_environment(env))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_report import dataset_notes, format_reports, inspect_dataset, reports_to_dict

    reports = inspect_dataset(args.root, args.split or None)
    notes = dataset_notes(args.root, reports)
    if args.json:
        import json

        print(json.dumps(reports_to_dict(reports, notes), indent=2))
    else:
        print(format_reports(reports, notes))
    return 0 if all(r.ok for reps in reports.values() for r in reps) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from .cli_model import positive, share

    p = argparse.ArgumentParser(
        prog="uxbseg",
        description="Find ancient Maya architecture (plazuelas, structures) in airborne lidar "
        "with a SegFormer + SwinUNETR 2D+3D fusion model.",
        epilog="Start with `uxbseg demo`. Each command has its own --help.",
    )
    p.add_argument("--version", action="version", version=f"uxbseg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log diagnostics (DEBUG)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "synth",
        help="write a synthetic UXB-like dataset",
        description="Write a deterministic synthetic dataset in the UXB layout "
        "(TPI image, mask, LAS per pair) for demos and tests.",
    )
    s.add_argument("out", type=Path, help="output folder (ROOT)")
    s.add_argument("--train", type=int, default=40, help="training pairs (default 40)")
    s.add_argument("--test", type=int, default=12, help="test/validation pairs (default 12)")
    s.add_argument("--predict", type=int, default=8, help="prediction pairs (default 8)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser(
        "inspect",
        help="check a dataset and list its problems",
        description="Check every pair of a UXB dataset: files found, LAS/PNG "
        "readable, classes and mask values. Notes (not problems): codes outside the class "
        "map, a CRS not in metres, tiles of another size or point density than the training "
        "tiles, test tiles on training ground (their scores would measure memory) and tiles "
        "given twice. Exit 1 when any pair has a problem.",
    )
    s.add_argument("root", type=Path, help="dataset folder holding train/ test/ predict/")
    s.add_argument("--split", action="append", help="only this split (repeatable)")
    s.add_argument(
        "--json",
        action="store_true",
        help="print every pair's report (files, counts, histograms, problems with their fix, "
        "notes) as JSON instead of tables, for a script; the exit code is the same",
    )
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser(
        "tile",
        help="cut labelled pairs larger than a tile into tiles (for training)",
        description="Write a copy of a UXB dataset in which every pair more than 1.25x "
        "--side on a side is cut into tiles of that side: point cloud (every attribute and "
        "VLR kept; each point in exactly one tile), TPI image and mask (cut at their own "
        "resolution), as predict and evaluate cut large files into windows. Smaller pairs are "
        "copied. Nothing is written unless every pair has its files and every output is new.",
    )
    s.add_argument("root", type=Path, help="dataset folder holding train/ test/ predict/")
    s.add_argument("out", type=Path, help="new dataset folder for the tiles")
    s.add_argument(
        "--side",
        type=positive(float),
        required=True,
        help="tile side in CRS units, e.g. 100 for the UXB tiles",
    )
    s.add_argument("--split", action="append", help="only this split (repeatable)")
    s.add_argument(
        "--hold-out",
        type=share,
        metavar="SHARE",
        help="also move about SHARE (e.g. 0.2) of the training tiles to test/, whole blocks of "
        "ground at a time (--block), so that the test tiles are new ground rather than tiles "
        "scattered among the training ones (only a block's edge cuts a mound between the two "
        "splits); moved folders are named <tile>_from_train",
    )
    s.add_argument(
        "--block",
        type=positive(float),
        help="side of the hold-out blocks in CRS units (default 5x --side: 500 m for 100 m tiles)",
    )
    s.add_argument("--seed", type=int, default=0, help="which blocks are held out (default 0)")
    s.set_defaults(func=_cmd_tile)

    _add_later_commands(sub)
    s = sub.add_parser(
        "env",
        help="what uxbseg runs on: versions, GPUs, caches",
        description="Print the versions of uxbseg and the libraries it uses, the CPU cores "
        "and memory, the GPUs torch sees (name, memory, bf16) and where predict and evaluate "
        "would run the model, the LAZ backends, and the voxel and compile caches with their "
        "size. For checking a GPU set-up, and for a bug report.",
    )
    s.add_argument("--json", action="store_true", help="the same as JSON")
    s.set_defaults(func=_cmd_env)
    return p


def _cmd_tile(args: argparse.Namespace) -> int:
    from .tiling import hold_out, tile_dataset

    held = None
    if args.hold_out is not None and args.split and "train" not in args.split:
        raise BadDataError("--hold-out moves training tiles to test/: include --split train")
    done = tile_dataset(args.root, args.out, args.side, args.split)
    if args.hold_out is not None:
        held = hold_out(args.out, done, args.hold_out, args.block or 5 * args.side, args.seed)
    for t in done:
        what = f"{len(t.folders)} tiles" if t.cut else "copied"
        if t.held:
            what += f" ({len(t.held)} held out in test/)"
        print(f"{t.split}/{t.pair_id}: {t.extent[0]:.1f} x {t.extent[1]:.1f} -> {what}")
    tiles = sum(len(t.folders) for t in done)
    cut = sum(t.cut for t in done)
    print(f"{len(done)} pairs ({cut} cut) -> {tiles} pairs in {args.out}")
    if held is not None:
        print(
            f"held out in test/: {held.tiles} of {held.of} training tiles "
            f"({held.tiles / held.of:.0%}; asked {held.share:.0%}), {held.blocks} of the "
            f"{held.among} blocks of {held.block:g} they lie in"
        )
    return 0


def _add_later_commands(sub) -> None:
    """Commands that need the model (imported lazily so `inspect` stays fast)."""
    from .cli_model import add_model_commands

    add_model_commands(sub)


def quiet_lightning(verbose: bool) -> None:
    """Keep Lightning's start-up chatter (devices, tips) out of the output unless --verbose.

    Call after importing Lightning: its package import sets its loggers to INFO.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


class _Stderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is at each message (as logging's own
    last-resort handler does), not to the stream of the first call: a notebook's or a test's
    capture that replaces stderr later still gets the messages."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        pass


def _setup_logging(verbose: bool) -> None:
    """Our diagnostics to stderr; Lightning's own chatter only when asked for."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("uxbseg")
    if not pkg.handlers or all(isinstance(h, logging.NullHandler) for h in pkg.handlers):
        pkg.addHandler(handler)
    pkg.setLevel(logging.DEBUG if verbose else logging.INFO)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # config.yaml is in the run folder before the CSV logger starts (it warns about any file)
    warnings.filterwarnings("ignore", message="Experiment logs directory")


_SYSTEM_FIXES = {
    errno.ENOSPC: "free some space, or write to another disk (--out); nothing half-written "
    "is left behind",
    errno.EDQUOT: "your disk quota is used up: free some of it, or write elsewhere (--out)",
    errno.EACCES: "change its permissions, or write to a folder you may write to (--out)",
    errno.EPERM: "change its permissions, or write to a folder you may write to (--out)",
    errno.EROFS: "the file system is read-only: write to another folder (--out)",
}
"""The errors of the machine's state (not of uxbseg) that a user fixes, and how."""

_WINDOWS_FIX = (
    "lower --batch (windows through the model at a time; on a GPU the default is 4x the "
    "training batch), or run on a machine with more memory"
)
_OUT_OF_MEMORY_FIXES = {
    "train": "lower data.batch_size (--set data.batch_size=1), or set model.use_checkpoint=true "
    "(about half the memory for a 2x slower step), or on a GPU model.compile=true (43 GiB "
    "against 60-68 GiB in eager mode for the seed model at batch 4 on an H200), or on a CPU "
    "train a CPU-sized model (--config tiny); --resume goes on from the last checkpoint",
    "evaluate": _WINDOWS_FIX,
    "predict": _WINDOWS_FIX + "; --resume keeps the files this run finished",
    "demo": "run the demo on a machine with more free memory (it needs about 1.5 GiB)",
}
"""How to get under the memory of the device a command ran out of, by command."""


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory: torch's ``OutOfMemoryError`` (a GPU),
    the CPU allocator's refusal, or numpy's ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # imported by the commands that can run out of memory
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uxbseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    tune_cpu_allocator()
    try:
        return args.func(args)
    except UXBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        fix = _SYSTEM_FIXES.get(exc.errno)
        if fix is None:  # not the machine's state: ours to fix, with the traceback
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror}; {fix}", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as exc:
        fix = _OUT_OF_MEMORY_FIXES.get(args.command)
        if fix is None or not _out_of_memory(exc):
            raise
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: out of memory ({said}); {fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
