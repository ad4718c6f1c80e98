"""``manifest.json`` beside the plans: what each engine was built from, with what, and on which GPU.

Engines are tied to the ONNX they came from, the TensorRT version and the GPU architecture. The
builder skips a graph whose entry is current; the runtime refuses an engine whose entry does not
match the machine (:func:`entry_is_current` gives the readable reason either way).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import LatentmuseError
from ..files import atomic_write

MANIFEST_NAME = "manifest.json"
SCHEMA = 1

ShapeList = list[int]


@dataclass
class EngineEntry:
    """One built engine. ``plan`` is relative to the manifest's folder; ``profiles`` maps each input
    to ``[min, opt, max]`` shapes."""

    graph: str
    onnx: str
    onnx_sha256: str
    precision: str
    profiles: dict[str, list[ShapeList]]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    plan: str
    plan_bytes: int
    build_seconds: float
    built_at: str  # UTC, ISO 8601
    validated: bool = True  # the ONNX passed its validation against PyTorch (False: built with --unvalidated)
    export: dict = field(default_factory=dict)  # how it was exported and validated (export_report.json)

    @classmethod
    def from_dict(cls, data: dict) -> EngineEntry:
        known = {f.name for f in fields(cls)}
        missing = known - set(data) - {"export", "validated"}
        if missing:
            raise ValueError(f"entry lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Manifest:
    graphs: dict[str, EngineEntry] = field(default_factory=dict)
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps({"schema": self.schema, "graphs": {k: asdict(v) for k, v in sorted(self.graphs.items())}},
                          indent=2) + "\n"


def manifest_path(where: str | Path) -> Path:
    """``where`` is the engines folder or the manifest file itself."""
    where = Path(where)
    return where if where.suffix == ".json" else where / MANIFEST_NAME


def load(where: str | Path) -> Manifest:
    """The manifest in ``where`` (an empty one if there is none); a broken file is a LatentmuseError."""
    path = manifest_path(where)
    if not path.is_file():
        return Manifest()
    try:
        data = json.loads(path.read_text())
        graphs = {name: EngineEntry.from_dict(entry) for name, entry in data.get("graphs", {}).items()}
        return Manifest(graphs=graphs, schema=int(data.get("schema", SCHEMA)))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise LatentmuseError(f"engine manifest {path} is unreadable ({exc}).",
                              "delete it and run `latentmuse build --force`.") from exc


def save(manifest: Manifest, where: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then rename): a crash never leaves half a file."""
    path = manifest_path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, manifest.to_json().encode())
    return path


def entry_is_current(entry: EngineEntry | None, onnx_sha256: str, trt_version: str, gpu_name: str,
                     compute_capability: str) -> tuple[bool, str]:
    """Whether ``entry`` still describes an engine usable here; the reason says why (not) in words."""
    if entry is None:
        return False, "not built yet"
    if entry.onnx_sha256 != onnx_sha256:
        return False, "onnx changed"
    if entry.tensorrt_version != trt_version:
        return False, f"built with TensorRT {entry.tensorrt_version}, this machine has {trt_version}"
    if entry.gpu_name != gpu_name:
        return False, f"built for GPU {entry.gpu_name}, this machine has {gpu_name}"
    if str(entry.compute_capability) != str(compute_capability):
        return False, (f"built for compute capability {entry.compute_capability}, "
                       f"this GPU has {compute_capability}")
    return True, "up to date"
