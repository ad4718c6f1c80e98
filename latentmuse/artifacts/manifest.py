"""``manifest.json`` beside the plans: what each engine was built from, with what, and for which GPUs.

Engines are tied to the ONNX they came from, the TensorRT flavour and version, and the GPU: a standard
TensorRT plan to the GPU model it was built on, a TensorRT for RTX plan to the compute capabilities it
targets. One engines folder holds both flavours' plans (``vae_encoder.plan`` and
``vae_encoder.rtx.plan``): entries are keyed by graph, then flavour. The builder skips a graph whose
entry is current (:func:`entry_is_current`); the runtime refuses a plan that cannot run on this GPU
(:func:`entry_runs_on`); both give the readable reason.

Schema 1 (one standard TensorRT entry per graph) is read as standard TensorRT entries.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..errors import LatentmuseError
from ..files import atomic_write
from ..system import FLAVORS, TENSORRT, TENSORRT_RTX, GpuInfo

MANIFEST_NAME = "manifest.json"
SCHEMA = 2

ShapeList = list[int]


@dataclass
class EngineEntry:
    """One built engine. ``plan`` is relative to the manifest's folder; ``profiles`` maps each input
    to ``[min, opt, max]`` shapes.

    ``gpu_name`` and ``compute_capability`` are the GPU the plan was built on ("" for a TensorRT for RTX
    plan built ahead of time without one); ``compute_capabilities`` are the ones it runs on (standard
    TensorRT: the build GPU's; RTX: its targets). ``inputs`` is what the real builder's network says of
    each input (dtype, shape with -1 for dynamic dims, the profile it was given), read back at build time.
    """

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
    flavor: str = TENSORRT.name
    compute_capabilities: list[str] = field(default_factory=list)
    builder_peak_rss_bytes: int = 0
    inputs: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> EngineEntry:
        known = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
        missing = known - set(data) - optional
        if missing:
            raise ValueError(f"entry lacks {sorted(missing)}")
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if entry.flavor not in FLAVORS:
            raise ValueError(f"unknown flavour {entry.flavor!r}")
        if not entry.compute_capabilities and entry.compute_capability:
            entry.compute_capabilities = [str(entry.compute_capability)]  # schema 1: the build GPU's
        return entry

    @property
    def label(self) -> str:
        return FLAVORS[self.flavor].label


@dataclass
class Manifest:
    """Entries by graph, then flavour."""

    graphs: dict[str, dict[str, EngineEntry]] = field(default_factory=dict)
    schema: int = SCHEMA

    def get(self, graph: str, flavor: str) -> EngineEntry | None:
        return self.graphs.get(graph, {}).get(flavor)

    def put(self, entry: EngineEntry) -> None:
        self.graphs.setdefault(entry.graph, {})[entry.flavor] = entry

    def remove(self, graph: str, flavor: str) -> None:
        self.graphs.get(graph, {}).pop(flavor, None)
        if not self.graphs.get(graph, True):
            del self.graphs[graph]

    def entries(self) -> list[EngineEntry]:
        return [e for _graph, by_flavor in sorted(self.graphs.items()) for _f, e in sorted(by_flavor.items())]

    def to_json(self) -> str:
        graphs = {g: {f: asdict(e) for f, e in sorted(by.items())} for g, by in sorted(self.graphs.items())}
        return json.dumps({"schema": SCHEMA, "graphs": graphs}, indent=2) + "\n"


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
        schema = int(data.get("schema", 1))
        manifest = Manifest()
        for name, value in data.get("graphs", {}).items():
            for entry in ([value] if schema < 2 else value.values()):  # schema 1: one standard entry per graph
                manifest.put(EngineEntry.from_dict(entry))
        return manifest
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise LatentmuseError(f"engine manifest {path} is unreadable ({exc}).",
                              "delete it and run `latentmuse build --force`.") from exc


def save(manifest: Manifest, where: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then rename): a crash never leaves half a file."""
    path = manifest_path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, manifest.to_json().encode())
    return path


@dataclass(frozen=True)
class Target:
    """What a build makes plans with and for: a flavour at a version, and the GPU (standard TensorRT:
    the GPU model the build runs on) or the compute capabilities (TensorRT for RTX: its targets)."""

    flavor: str
    version: str
    gpu_name: str = ""
    compute_capabilities: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return FLAVORS[self.flavor].label


def _capabilities(values) -> str:
    return ", ".join(values) if values else "none"


def entry_is_current(entry: EngineEntry | None, onnx_sha256: str, target: Target) -> tuple[bool, str]:
    """Whether ``entry`` is what a build for ``target`` would make from this ONNX; the reason in words."""
    if entry is None:
        return False, "not built yet"
    if entry.onnx_sha256 != onnx_sha256:
        return False, "onnx changed"
    if entry.flavor != target.flavor:
        return False, f"built with {entry.label}, this build uses {target.label}"
    if entry.tensorrt_version != target.version:
        return False, f"built with {entry.label} {entry.tensorrt_version}, this machine has {target.version}"
    if target.flavor == TENSORRT.name:
        if entry.gpu_name != target.gpu_name:
            return False, f"built for GPU {entry.gpu_name}, this machine has {target.gpu_name}"
        if list(entry.compute_capabilities) != list(target.compute_capabilities):
            return False, (f"built for compute capability {_capabilities(entry.compute_capabilities)}, "
                           f"this GPU has {_capabilities(target.compute_capabilities)}")
    elif sorted(entry.compute_capabilities) != sorted(target.compute_capabilities):
        return False, (f"built for compute capabilities {_capabilities(entry.compute_capabilities)}, "
                       f"asked for {_capabilities(target.compute_capabilities)}")
    return True, "up to date"


def entry_runs_on(entry: EngineEntry, version: str, gpu: GpuInfo) -> tuple[bool, str]:
    """Whether ``entry``'s plan can run here, with ``entry``'s flavour at ``version`` on ``gpu``."""
    if entry.tensorrt_version != version:
        return False, f"built with {entry.label} {entry.tensorrt_version}, this machine has {version}"
    if entry.flavor == TENSORRT_RTX.name:
        if gpu.compute_capability not in entry.compute_capabilities:
            return False, (f"built for compute capabilities {_capabilities(entry.compute_capabilities)}, "
                           f"this GPU ({gpu.name}) has {gpu.compute_capability}")
        return True, f"{entry.plan} built {entry.built_at} for compute capability {gpu.compute_capability}"
    if entry.gpu_name != gpu.name:
        return False, f"built for GPU {entry.gpu_name}, this machine has {gpu.name}"
    if str(entry.compute_capability) != str(gpu.compute_capability):
        return False, f"built for compute capability {entry.compute_capability}, this GPU has {gpu.compute_capability}"
    return True, f"{entry.plan} built {entry.built_at} for {gpu.name}"
