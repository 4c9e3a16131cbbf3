"""The record of a predict run, ``OUT/.uxbseg-predict.jsonl``, so that a run cut short (a laptop
asleep, Ctrl-C, a cluster job's time limit) can go on where it stopped: ``predict --resume``.

Every run writes it: the model's fingerprint and the settings that shape the outputs, then, as
each input is finished, what was written for it (its result, its finds with their outlines).
A resumed run keeps an input's outputs when the record lists them under the same model and
settings, the input has not changed since (size and modification time), it lies in a survey
of the same files and the outputs are all still there; it predicts the other inputs. A file
of a survey that is kept still lends its points to its neighbours, which are classified as in
an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import Config, config_to_dict
from .errors import BadDataError
from .finds import Find
from .io.files import replacing

if TYPE_CHECKING:
    from .predict import PredictJob, PredictResult
    from .survey import Survey

__all__ = [
    "RECORD",
    "RunRecord",
    "earlier_outputs",
    "model_fingerprint",
    "run_settings",
    "survey_digest",
]

log = logging.getLogger(__name__)

RECORD = ".uxbseg-predict.jsonl"
"""The record's name in the output folder."""

_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes and values): the
    same weights give the same fingerprint, whatever file they were loaded from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        shape = t.shape
        t = t.detach().cpu().contiguous().reshape(-1)  # size-1 dims may keep any stride
        h.update(f"{name}:{t.dtype}:{tuple(shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_settings(model: torch.nn.Module, cfg: Config, **options: Any) -> dict[str, Any]:
    """What a run's outputs depend on: the model's fingerprint, a hash of its config (the logit
    adjustment included) and ``options`` (JSON values: the window, overlap, codes, ...)."""
    config = json.dumps(config_to_dict(cfg), sort_keys=True).encode()
    return {"model": model_fingerprint(model), "config": hashlib.sha256(config).hexdigest(),
            **options}  # fmt: skip


def earlier_outputs(folder: str | Path) -> set[str]:
    """The names of the point clouds an earlier run wrote into ``folder`` (from its record;
    none when there is no readable record), so that a folder predicted into itself can be
    given again without its outputs being taken for inputs."""
    try:
        lines = (Path(folder) / RECORD).read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    return {e["result"]["las"] for e in _entries(lines[1:]) if "las" in e.get("result", {})}


def _entries(lines: list[str]) -> list[dict[str, Any]]:
    """The record's input lines as dicts, less any cut short when the run was stopped."""
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "id" in entry:
            entries.append(entry)
    return entries


def survey_digest(survey: Survey) -> str:
    """SHA-256 of a survey's files (resolved paths, in order): a line of the record names the
    files its input was predicted with in 64 characters, however many there are."""
    paths = "\n".join(str(f.path.resolve()) for f in survey.files)
    return hashlib.sha256(paths.encode()).hexdigest()


def _input_state(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _find_to_json(f: Find) -> dict[str, Any]:
    return asdict(f)


def _find_from_json(d: dict[str, Any]) -> Find:
    d = dict(d)
    d["outline"] = tuple(
        tuple(tuple(tuple(v) for v in ring) for ring in polygon) for polygon in d["outline"]
    )
    return Find(**d)


def _difference(key: str, then: Any, now: Any) -> str:
    if key == "model":
        return "the weights"
    if key == "config":
        return "the weights' settings or --logit-adjustment"
    return f"{key} ({then} then, {now} now)"


class RunRecord:
    """``OUT/.uxbseg-predict.jsonl`` of the run now going on: a first line with the settings,
    then a line for each input as it is finished (appended: a survey of thousands of files
    costs a line each, not a rewrite)."""

    def __init__(self, out_dir: Path, settings: dict[str, Any]):
        self.path = Path(out_dir) / RECORD
        self.settings = settings
        self.files: dict[str, dict[str, Any]] = {}  # the earlier run's, by output id

    @classmethod
    def start(cls, out_dir: str | Path, settings: dict[str, Any], resume: bool) -> RunRecord:
        """A new record for a run with ``settings`` (an earlier run's record is replaced at
        once, before this run writes any output; a new one begins when the first input is
        finished); with ``resume``, the earlier run's, whose settings must be these (a
        :class:`BadDataError` names those that differ)."""
        record = cls(Path(out_dir), settings)
        if not resume:
            if record.path.exists():
                record._begin()
            return record
        try:
            lines = record.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            log.info("%s: no earlier run to resume; every input is predicted", record.path.parent)
            return record
        except OSError as exc:
            raise BadDataError(
                f"{record.path}: the earlier run's record cannot be read ({exc}); predict "
                "without --resume to start again"
            ) from exc
        try:
            head = json.loads(lines[0])
        except (IndexError, ValueError):
            head = {}
        if head.get("version") != _VERSION:
            raise BadDataError(
                f"{record.path}: not a record this version of uxbseg wrote; predict without "
                "--resume to start again"
            )
        before = head.get("settings", {})
        differ = [
            k for k in sorted(settings.keys() | before.keys()) if settings.get(k) != before.get(k)
        ]
        if differ:
            said = ", ".join(_difference(k, before.get(k), settings.get(k)) for k in differ)
            raise BadDataError(
                f"{record.path.parent}: the earlier run differs in {said}, so its outputs are not "
                "this run's; predict without --resume (every input again) or into another --out"
            )
        for entry in _entries(lines[1:]):
            record.files[entry["id"]] = entry
        record._begin(record.files.values())  # again whole: no line cut short, one an input
        return record

    def kept(self, job: PredictJob, survey: str) -> PredictResult | None:
        """The earlier run's result for ``job``, when it finished it, the input is unchanged,
        it lies in the same ``survey`` (:func:`survey_digest` of the files predicted together
        with it, "" when on its own: other neighbours would classify its edges otherwise) and
        its outputs are all there; else None (it is predicted)."""
        from .predict import PredictResult

        entry = self.files.get(job.out_id)
        if (
            entry is None
            or entry.get("state") != _input_state(job.las)
            or entry.get("survey") != survey
        ):
            return None
        out = self.path.parent
        r = entry["result"]
        written = [out / name for name in (r["las"], r["npy"]) if name is not None]
        written.append(out / f"pred_{job.out_id}.finds.csv")
        if not all(p.exists() for p in written):
            return None
        result = {k: v for k, v in r.items() if k not in ("las", "npy", "found", "edge_parts")}
        result["bounds"] = None if r["bounds"] is None else tuple(r["bounds"])
        return PredictResult(
            job,
            npy=None if r["npy"] is None else out / r["npy"],
            las=out / r["las"],
            found=[_find_from_json(f) for f in r["found"]],
            edge_parts=[_find_from_json(f) for f in r["edge_parts"]],
            kept=True,
            **result,
        )

    def add(self, result: PredictResult, survey: str) -> None:
        """Record a finished input and its ``survey`` (:meth:`kept`): a line appended (after
        the settings' line, for the first)."""
        skip = {"job", "error", "kept", "las", "npy", "found", "edge_parts"}
        r = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in skip}
        r["las"] = result.las.name
        r["npy"] = None if result.npy is None else result.npy.name
        r["found"] = [_find_to_json(f) for f in result.found or []]
        r["edge_parts"] = [_find_to_json(f) for f in result.edge_parts]
        entry = {
            "id": result.job.out_id,
            "state": _input_state(result.job.las),
            "survey": survey,
            "result": r,
        }
        if not self.path.exists():  # the first input this run finishes
            self._begin()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def _begin(self, entries=()) -> None:
        """The record's first line, this run's settings, and ``entries``' lines, replacing any
        earlier record (written under a temporary name, renamed)."""
        lines = [{"version": _VERSION, "settings": self.settings}, *entries]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        with replacing(self.path) as tmp:
            tmp.write_text(text, encoding="utf-8")
