"""What an export produced and how it validated: one :class:`ExportResult` per graph, and the folder's
``export_report.json`` that accumulates them.

The report is the record the engine builder trusts: a TensorRT plan is built only from an ONNX file
whose sha256 the report lists with a passing validation (:func:`validated_entry`). It is merged, not
overwritten (exporting one graph keeps the others' entries), and rewritten atomically after each graph
so that an interrupted export loses nothing already done.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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


def read_report(path: str | Path) -> dict:
    """The report's graph entries by name ({} when there is no readable report)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    graphs = data.get("graphs") if isinstance(data, dict) else None
    return {k: v for k, v in graphs.items() if isinstance(v, dict)} if isinstance(graphs, dict) else {}


def write_report(results: Sequence[ExportResult], path: str | Path, **meta: object) -> Path:
    """Merge ``results`` (each stamped with ``meta``: weights, seed, torch version) into the report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graphs = read_report(path)
    for r in results:
        graphs[r.name] = {**meta, **r.to_dict()}
    data = {
        "schema": REPORT_SCHEMA,
        "passed": all(g.get("status") == PASS for g in graphs.values()),
        "graphs": dict(sorted(graphs.items())),
    }
    atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
    return path


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
