"""Putting one graph's export in place without ever losing the previous one.

An export is written and validated in a private staging folder inside the output folder
(:func:`staging`: ``.NAME.export-XXXXXXXX/``, unique per process, removed afterwards with everything in
it, and nothing else is ever in it). :func:`publish` then decides, under a lock on the output folder
(two exports into one folder never interleave their renames or lose each other's report entries):

* the new export passed its validation: its files replace the graph's files (side files first, the
  ``.onnx`` headers last, each by an atomic rename) and its report entry replaces the old one;
* it did not (an error, a check out of tolerance, a check that could not run) and the report's entry
  for the graph is a validated export whose files are still those recorded: the files and the entry
  stay, the entry gains ``last_export`` saying what the failed attempt did, and the staged files go;
* otherwise (no earlier export, or one that was itself not validated or is gone) the new files are
  installed with their entry, so that what was made can be inspected (``latentmuse build`` refuses
  them unless given ``--unvalidated``); an attempt that made no files records its error.

Files are deleted only when this package provably wrote them: a previous export's file that the new
one does not replace (a side file the new model no longer needs, the fp16 copy of an export made
with ``--no-fp16``) is removed only if the previous entry's ``stat`` records it with this size and
mtime. A signal arriving while the files are being swapped is held until the swap and the report
are complete (a few renames), then delivered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..artifacts.export_report import PASS, REPORT_NAME, ExportResult, read_report, report_lock, update_report
from ..artifacts.onnx_files import model_files, onnx_sha256, unchanged_since
from ..errors import LatentmuseError

#: ``last_run`` statuses of a whole export, and the ``files`` outcome of each graph in it.
RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"
NOT_REACHED = "not reached"
REPLACED, KEPT, NONE = "replaced", "kept previous", "none"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def staging(out_dir: Path, name: str) -> Iterator[Path]:
    """A fresh private folder in ``out_dir`` (same filesystem: installing is a rename) for one graph's
    export; removed afterwards, on every outcome, with what the export wrote in it."""
    root = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out_dir))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Staged:
    """The model files of one export in its staging folder: the fp32 graph and, if made, the fp16 one."""

    fp32: Path
    fp16: Path | None = None

    def files(self) -> list[Path]:
        return [*model_files(self.fp32), *(model_files(self.fp16) if self.fp16 is not None else [])]


@dataclass
class RunRecord:
    """The report's ``last_run``: what the latest ``export_many`` did to each graph it was asked for."""

    graphs: dict[str, dict] = field(default_factory=dict)
    status: str = RUNNING
    weights: str = ""
    seed: int = 0
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None

    @classmethod
    def start(cls, names: Sequence[str], weights: str, seed: int) -> RunRecord:
        return cls({name: {"status": NOT_REACHED, "files": NONE} for name in names}, weights=weights, seed=seed)

    def finish(self, status: str) -> None:
        self.status, self.finished_at = status, _now()

    def as_dict(self) -> dict:
        return {"status": self.status, "weights": self.weights, "seed": self.seed, "started_at": self.started_at,
                "finished_at": self.finished_at, "graphs": self.graphs}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then reach their usual handlers.

    Python runs signal handlers in the main thread whichever thread the kernel picked, so the
    handlers themselves are swapped (masking the main thread alone would not hold them). Outside
    the main thread handlers cannot be changed, and the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def _matches(recorded: object, path: Path, sha256: object) -> bool:
    """Whether the model at ``path`` is the one an entry recorded (its stat, else its sha256)."""
    try:
        if unchanged_since(path, recorded):
            return True
        return bool(sha256) and onnx_sha256(path) == sha256
    except LatentmuseError:
        return False


def intact(entry: Mapping, out_dir: Path) -> bool:
    """Whether the files an entry describes are in ``out_dir`` unchanged since they were recorded."""
    if not entry.get("sha256") or not entry.get("file"):
        return False
    if not _matches(entry.get("stat"), out_dir / Path(str(entry["file"])).name, entry.get("sha256")):
        return False
    fp16 = entry.get("fp16_file")
    return not fp16 or _matches(entry.get("fp16_stat"), out_dir / Path(str(fp16)).name, entry.get("fp16_sha256"))


def _recorded_files(entry: Mapping) -> dict[str, tuple[int, int]]:
    """``name -> (bytes, mtime_ns)`` of every file an entry's ``stat`` lists (fp32 and fp16)."""
    out = {}
    for row in (*(entry.get("stat") or []), *(entry.get("fp16_stat") or [])):
        if isinstance(row, (list, tuple)) and len(row) == 3:
            out[str(row[0])] = (int(row[1]), int(row[2]))
    return out


def _remove_superseded(previous: Mapping | None, out_dir: Path, installed: set[str]) -> None:
    """Delete the previous export's files the new one did not replace, when provably its own."""
    if not previous:
        return
    for name, (size, mtime) in _recorded_files(previous).items():
        path = out_dir / name
        if name in installed or Path(name).name != name or not path.is_file():
            continue
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) == (size, mtime):
            path.unlink()


def _attempt(result: ExportResult) -> dict:
    """What an attempt that was not installed did, kept beside the entry that stands."""
    return {"status": result.status, "error": result.error, "fp32_max_abs": result.fp32_max_abs,
            "fp16_cosine": result.fp16_cosine, "skipped": result.skipped, "exporter_note": result.exporter_note,
            "at": _now()}


def publish(result: ExportResult, staged: Staged | None, out_dir: Path, *, meta: Mapping[str, object],
            also: Sequence[Path] = (), run: RunRecord | None = None, interrupted: bool = False) -> str:
    """Install ``staged`` (or not) and record ``result`` in ``out_dir``'s report and ``also``; see the
    module doc. Returns the files outcome (``replaced``, ``kept previous`` or ``none``) and updates
    ``result`` to describe the files as they now are (paths in ``out_dir``, ``kept_previous``).
    ``run`` (the export's ``last_run``) records the attempt, as ``interrupted`` when it was."""
    main = out_dir / REPORT_NAME
    reports = [main, *also]
    with report_lock(*reports), signals_held():
        previous = read_report(main).get(result.name)
        standing = previous is not None and intact(previous, out_dir)
        validated_standing = standing and previous.get("status") == PASS
        if staged is not None and (result.passed or not validated_standing):
            files = staged.files()
            for src in sorted(files, key=lambda p: p.suffix == ".onnx"):  # side files first, headers last
                os.replace(src, out_dir / src.name)
            _remove_superseded(previous, out_dir, {p.name for p in files})
            result.file = str(out_dir / staged.fp32.name)
            if staged.fp16 is not None:
                result.fp16_file = str(out_dir / staged.fp16.name)
            entry, outcome = {**meta, **result.to_dict()}, REPLACED
        elif standing:
            result.kept_previous = True
            entry, outcome = {**previous, "last_export": _attempt(result)}, KEPT
        else:
            entry, outcome = {**meta, **result.to_dict()}, NONE
        if run is not None:
            run.graphs[result.name] = {"status": INTERRUPTED if interrupted else result.status, "files": outcome,
                                       **({"error": result.error} if result.error else {})}
        for path in reports:
            update_report(path, {result.name: entry}, run.as_dict() if run is not None else None)
    return outcome


def record_run(run: RunRecord, out_dir: Path, also: Sequence[Path] = ()) -> None:
    """Write ``run`` as the reports' ``last_run`` (the graph entries unchanged)."""
    reports = [out_dir / REPORT_NAME, *also]
    with report_lock(*reports):
        for path in reports:
            update_report(path, {}, run.as_dict())
