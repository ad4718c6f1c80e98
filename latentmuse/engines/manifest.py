"""``manifest.json`` beside the plans: what each engine was built from, with what, and on which GPU.

Engines are tied to the ONNX they came from, the TensorRT version and the GPU architecture. The
builder skips a graph whose entry is current; the runtime refuses an engine whose entry does not
match the machine (:func:`entry_is_current` gives the readable reason either way).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import LatentmuseError

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
    export: dict = field(default_factory=dict)  # the graph's export settings (export_report.json)

    @classmethod
    def from_dict(cls, data: dict) -> EngineEntry:
        known = {f.name for f in fields(cls)}
        missing = known - set(data) - {"export"}
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


def atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file; for an ONNX with external data, of the .onnx and its side files."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in [path, *_external_data_files(path)]:
        with open(part, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _external_data_files(path: Path) -> list[Path]:
    """The side files an ONNX model's initializers point to (external data), read from its header."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not parseable here: hash the file alone
        return []
    found: set[Path] = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and (path.parent / location).is_file():
                found.add(path.parent / location)
    return sorted(found)


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
