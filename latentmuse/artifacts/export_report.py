"""What an export produced and how it validated: one :class:`ExportResult` per graph, and the folder's
``export_report.json`` that accumulates them.

The report is the record the engine builder trusts: a TensorRT plan is built only from an ONNX file
whose sha256 the report lists with a passing validation (:func:`validated_entry`). It is merged, not
overwritten (exporting one graph keeps the others' entries), under a lock on its folder (two exports
into one folder never lose each other's entries), and rewritten atomically after each graph and on
every outcome, so that an interrupted or failed export loses nothing already done. ``last_run`` says
what the latest export did to each graph it was asked for (see :func:`update_report`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_write

REPORT_NAME = "export_report.json"
REPORT_SCHEMA = 2

PASS, FAIL, UNVALIDATED = "pass", "FAIL", "unvalidated"


@dataclass
class Validation:
    """One fp32 comparison at one set of dynamic sizes."""

    sizes: dict[str, int]
    max_abs: float
    rel: float  # max |onnx - torch| / max |torch|
    passed: bool


@dataclass
class ExportResult:
    """One graph's export. ``*_pass`` is None where that check did not run (``skipped`` says why)."""

    name: str
    file: str
    bytes: int = 0
    external_data: bool = False
    exporter: str = ""  # "dynamo" or "torchscript"
    opset: int = 0
    seconds: float = 0.0  # the exporter alone
    sha256: str = ""
    stat: list = field(default_factory=list)  # onnx_stat() of the fp32 file at export
    atol: float = 0.0
    rtol: float = 0.0
    fp32_max_abs: float | None = None
    fp32_rel: float | None = None
    fp32_pass: bool | None = None
    validations: list[Validation] = field(default_factory=list)
    memory_bytes: int | None = None  # estimated ONNX Runtime memory for the fp32 validation
    fp16_file: str | None = None
    fp16_bytes: int | None = None
    fp16_sha256: str | None = None
    fp16_stat: list = field(default_factory=list)
    fp16_cosine: float | None = None
    fp16_max_abs: float | None = None
    fp16_pass: bool | None = None
    min_cosine_fp16: float | None = None
    fp16_seconds: float | None = None  # the fp16 conversion
    validation_seconds: float = 0.0  # PyTorch and ONNX Runtime runs, fp32 and fp16
    exporter_note: str = ""
    skipped: list[str] = field(default_factory=list)
    error: str = ""  # the export itself failed
    kept_previous: bool = False  # this attempt was not installed: the previous validated export stands

    @property
    def status(self) -> str:
        """FAIL (an error or a check out of tolerance), unvalidated (a check could not run), or pass."""
        if self.error or self.fp32_pass is False or self.fp16_pass is False:
            return FAIL
        if self.fp32_pass is None or (self.fp16_file is not None and self.fp16_pass is None):
            return UNVALIDATED
        return PASS

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status, "passed": self.passed}


def read_report_data(path: str | Path) -> dict:
    """The whole report (``{}`` when there is no readable report)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_report(path: str | Path) -> dict:
    """The report's graph entries by name ({} when there is no readable report)."""
    graphs = read_report_data(path).get("graphs")
    return {k: v for k, v in graphs.items() if isinstance(v, dict)} if isinstance(graphs, dict) else {}


@contextlib.contextmanager
def report_lock(*paths: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the folders of ``paths`` (reports, or files being replaced there).

    The lock is ``flock`` on the folder itself, so no lock file is left behind; folders are locked in
    a fixed order (no deadlock between two exports). Where ``fcntl`` does not exist (Windows) this
    is a no-op and concurrent exports into one folder are not protected.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folders = sorted({Path(p).parent.resolve() for p in paths})
    fds: list[int] = []
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing the descriptor releases its flock


def update_report(path: str | Path, entries: Mapping[str, dict], last_run: dict | None = None) -> Path:
    """Merge ``entries`` (graph name -> report entry) into the report at ``path``, atomically.

    ``last_run`` replaces the report's record of the latest export when given. The caller holds
    :func:`report_lock` when another process may write the same report.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_report_data(path)
    graphs = read_report(path)
    graphs.update(entries)
    out = {
        "schema": REPORT_SCHEMA,
        "passed": all(g.get("status") == PASS for g in graphs.values()),
        "graphs": dict(sorted(graphs.items())),
    }
    run = last_run if last_run is not None else data.get("last_run")
    if run is not None:
        out["last_run"] = run
    atomic_write(path, (json.dumps(out, indent=2, default=str) + "\n").encode())
    return path


def write_report(results: Sequence[ExportResult], path: str | Path, **meta: object) -> Path:
    """Merge ``results`` (each stamped with ``meta``: weights, seed, torch version) into the report."""
    with report_lock(path):
        return update_report(path, {r.name: {**meta, **r.to_dict()} for r in results})


def _keys(precision: str) -> tuple[str, str]:
    return ("fp16_sha256", "fp16_pass") if precision == "fp16" else ("sha256", "fp32_pass")


def entry_for_file(report: dict, graph: str, precision: str, sha256: str) -> dict | None:
    """The report entry describing exactly this file (``graph`` at ``precision`` with ``sha256``), if any."""
    entry = report.get(graph)
    return entry if entry is not None and entry.get(_keys(precision)[0]) == sha256 else None


def validated_entry(report: dict, graph: str, precision: str, sha256: str) -> tuple[dict | None, str]:
    """The report entry vouching for ``graph``'s ``precision`` file with this ``sha256``, or None and why not."""
    if graph not in report:
        return None, "the export report has no entry for it"
    entry = entry_for_file(report, graph, precision, sha256)
    if entry is None:
        return None, "the file is not the one the export report validated (changed since)"
    check = _keys(precision)[1]
    if entry.get(check) is True:
        return entry, "validated"
    if entry.get(check) is False:
        return None, "its validation against PyTorch failed"
    why = "; ".join(entry.get("skipped") or []) or "it was not validated"
    return None, f"it was not validated ({why})"
