"""Backend choice per graph: TensorRT, else ONNX Runtime, else PyTorch, each skip with its reason.

An engines folder (``make engines``) holds ``manifest.json`` and the TensorRT plans beside it, and
``onnx/`` with the ONNX files and ``export_report.json``. ``--backend auto`` takes, per graph:

1. TensorRT when the device is CUDA and a plan of either flavour fits: standard TensorRT when
   ``tensorrt`` imports and the manifest has the graph built with this version on this GPU model and
   compute capability, else TensorRT for RTX when ``tensorrt_rtx`` imports and the manifest has the
   graph built with this version for a list of compute capabilities that holds this GPU's; in both
   cases from these weights, the plan file the one recorded, and it deserialises. An RTX plan runs with
   a runtime cache under ``runtime-cache/`` (:class:`~latentmuse.runners.trt_runner.TrtRunner`);
2. else ONNX Runtime when the export report lists the graph's file (this sha256, these weights and
   seed) as validated against PyTorch and a session opens on the device (CUDA: the fp16 file if it
   validated; the provider must really be CUDA);
3. else PyTorch, from the weights folder (or smoke weights), loaded only when first called.

``--backend trt|ort`` asks for that backend for every exported graph and is an error naming the graph,
the reason and the fix when one cannot have it; graphs no engine runs (DeepCache's pair) stay on
PyTorch. ``--backend torch`` never looks at the engines folder. Every graph's :class:`Choice` records
the runner used, why, and each option skipped with its reason; the run report lists them.

Nothing here imports diffusers or transformers: only a PyTorch runner's first call does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..artifacts import manifest as mf
from ..choices import BACKENDS
from ..artifacts.export_report import REPORT_NAME, read_report, validated_entry
from ..artifacts.onnx_files import onnx_sha256, unchanged_since
from ..errors import LatentmuseError
from ..files import slug
from ..graphs.registry import ALL_GRAPHS, GRAPHS
from ..graphs.spec import GraphSpec
from ..models.smoke import SMOKE
from ..system import FLAVORS, TENSORRT_RTX, GpuInfo, TrtFlavor, can_run, gpu_info
from .base import Runner, RunnerError
from .ort_runner import OrtRunner
from .torch_runner import TorchRunner

NAMES = {"trt": "TensorRT", "ort": "ONNX Runtime", "torch": "PyTorch"}
DEFAULT_ENGINES = Path("engines")


@dataclass
class Choice:
    """The runner a graph got, why, and every option skipped on the way with its reason."""

    graph: str
    backend: str
    reason: str
    skipped: list[str] = field(default_factory=list)
    flavor: str | None = None  # the TensorRT flavour of a "trt" choice

    def as_dict(self) -> dict:
        out = {"backend": self.backend, "reason": self.reason, "skipped": list(self.skipped)}
        if self.flavor:
            out["flavor"] = self.flavor
        return out


class TorchModels:
    """PyTorch modules by model key, each loaded once on first use and shared by its graphs (the VAE's
    encoder and decoder, Whisper's encoder and final LayerNorm, the UNet3D and its DeepCache pair)."""

    def __init__(self, weights: str | Path, seed: int = 0, trust_torchscript: str | Path | None = None) -> None:
        self.weights, self.seed = weights, seed
        self.trust_torchscript = trust_torchscript  # the one TorchScript archive the user vouched for
        self._modules: dict[str, nn.Module] = {}

    def module(self, key: str) -> nn.Module:
        if key not in self._modules:
            from ..models.smoke import model_for

            self._modules[key] = model_for(key, self.weights, self.seed, self.trust_torchscript)
        return self._modules[key]

    def require(self, key: str) -> None:
        """Fail now, naming the file, when the weights folder lacks model ``key`` (loading is lazy)."""
        if str(self.weights) != SMOKE:
            from ..models.folder import require_file

            require_file(self.weights, key)

    def runner(self, spec: GraphSpec, device: torch.device, dtype: torch.dtype) -> TorchRunner:
        return TorchRunner(spec.name, lambda: spec.make_wrapper(self.module(spec.model_key)), device, dtype, spec)

    @property
    def loaded(self) -> list[str]:
        return sorted(self._modules)


class EngineStore:
    """What an engines folder offers for these weights: plans by the manifest, ONNX by the export report."""

    def __init__(self, root: str | Path, weights: str | Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.onnx_dir = self.root / "onnx"
        self.weights, self.seed = weights, seed
        self._report: dict | None = None
        self._manifest: mf.Manifest | None = None
        self._manifest_error: str | None = None
        self._sha: dict[Path, str] = {}

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    def report(self) -> dict:
        if self._report is None:
            self._report = read_report(self.onnx_dir / REPORT_NAME)
        return self._report

    def manifest(self) -> tuple[mf.Manifest | None, str | None]:
        if self._manifest is None and self._manifest_error is None:
            try:
                self._manifest = mf.load(self.root)
            except LatentmuseError as exc:
                self._manifest_error = exc.message
        return self._manifest, self._manifest_error

    def same_weights(self, record: dict) -> str | None:
        """None when ``record`` (an export entry) was made from this run's weights, else why not."""
        made_from = record.get("weights")
        if made_from is None:
            return None  # older records do not say; the sha256 still ties file to report
        smoke = str(self.weights) == SMOKE
        if smoke != (str(made_from) == SMOKE):
            return f"exported from {'smoke weights' if made_from == SMOKE else made_from}, this run uses {self.weights}"
        if smoke and int(record.get("seed", self.seed)) != self.seed:
            return f"exported from smoke weights of seed {record.get('seed')}, this run uses seed {self.seed}"
        if not smoke and Path(str(made_from)).resolve() != Path(self.weights).resolve():
            return f"exported from {made_from}, this run uses {self.weights}"
        return None

    def sha256(self, path: Path, graph: str, precision: str) -> str:
        """The file's sha256: the report's own when the file's names, sizes and mtimes are those recorded
        at export (hashing a 3.4 GB UNet takes ~15 s on a CPU), else computed."""
        if path not in self._sha:
            entry = self.report().get(graph) or {}
            recorded = entry.get("stat" if precision == "fp32" else "fp16_stat")
            key = "sha256" if precision == "fp32" else "fp16_sha256"
            if entry.get(key) and unchanged_since(path, recorded):
                self._sha[path] = entry[key]
            else:
                self._sha[path] = onnx_sha256(path)
        return self._sha[path]

    def onnx(self, graph: str, precision: str) -> tuple[Path | None, str]:
        """The validated ONNX file of ``graph`` at ``precision`` ("fp32"/"fp16"), or None and why not."""
        path = self.onnx_dir / (f"{graph}.onnx" if precision == "fp32" else f"{graph}.fp16.onnx")
        if not path.is_file():
            return None, f"no {path}"
        try:
            digest = self.sha256(path, graph, precision)
        except LatentmuseError as exc:  # a side file missing or unreadable: this file is no option
            return None, exc.message
        entry, why = validated_entry(self.report(), graph, precision, digest)
        if entry is None:
            return None, f"{path.name}: {why}"
        other = self.same_weights(entry)
        if other:
            return None, f"{path.name}: {other}"
        error = entry.get("fp32_max_abs" if precision == "fp32" else "fp16_max_abs")
        return path, f"{path.name} validated against PyTorch (max-abs {error})"

    def plan(self, graph: str, flavor: TrtFlavor, version: str, gpu: GpuInfo) -> tuple[Path | None, str]:
        """``flavor``'s plan for ``graph`` usable on ``gpu`` with ``version``, or None and why not."""
        manifest, error = self.manifest()
        if manifest is None:
            return None, error or "no manifest"
        entry = manifest.get(graph, flavor.name)
        if entry is None:
            return None, f"no engine in {mf.manifest_path(self.root)}"
        ok, reason = mf.entry_runs_on(entry, version, gpu)
        if not ok:
            return None, reason
        other = self.same_weights(entry.export)
        if other:
            return None, other
        plan = self.root / entry.plan
        if not plan.is_file() or plan.stat().st_size != entry.plan_bytes:
            return None, f"plan file {plan} missing or changed since it was built"
        return plan, reason

    def has_plan(self, graph: str, flavor: TrtFlavor) -> bool:
        manifest, _error = self.manifest()
        return manifest is not None and manifest.get(graph, flavor.name) is not None

    def runtime_cache(self, graph: str, version: str, gpu: GpuInfo) -> Path:
        """Where TensorRT for RTX keeps ``graph``'s kernels compiled for ``gpu`` (one file per graph, GPU
        model and version: a cache is only valid for those)."""
        name = slug(f"{graph}-{gpu.name}-sm{gpu.compute_capability}-rtx{version}")
        return self.root / RUNTIME_CACHE_DIR / f"{name}.cache"


#: Under the engines folder: TensorRT for RTX's runtime caches (written by runs, not by the build).
RUNTIME_CACHE_DIR = "runtime-cache"


@dataclass
class Selector:
    """Chooses and opens one runner per graph (see the module doc).

    ``gpu`` and ``trt_versions`` (flavour name -> version) default to this machine's; a ``gpu`` given is
    trusted even on a CPU device (the tests' TensorRT doubles run there). ``note`` hears one line per
    skipped option worth a user's attention.
    """

    backend: str
    device: torch.device
    dtype: torch.dtype
    store: EngineStore | None
    torch_models: TorchModels
    note: Callable[[str], None] = lambda message: None
    gpu: GpuInfo | None = None
    trt_versions: dict[str, str] | None = None
    choices: dict[str, Choice] = field(default_factory=dict)
    _trt_unavailable: str | None = None
    _flavor_unavailable: dict[str, str] = field(default_factory=dict)
    _said: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LatentmuseError(f"--backend {self.backend} is not known.", f"use one of {', '.join(BACKENDS)}.")
        if self.backend in ("trt", "ort") and (self.store is None or not self.store.exists):
            where = self.store.root if self.store is not None else DEFAULT_ENGINES
            raise LatentmuseError(f"--backend {self.backend} needs an engines folder and {where} does not exist.",
                                  "run `make engines` (or `latentmuse export`), pass --engines DIR, or use --backend auto.")
        if self.backend in ("auto", "trt"):
            self._trt_unavailable = self._why_no_trt()
        if self.backend == "trt" and self._trt_unavailable:
            raise LatentmuseError(f"--backend trt: TensorRT cannot run here: {self._trt_unavailable}.",
                                  "run on a CUDA GPU with TensorRT (the 'gpu' extra) or TensorRT for RTX (the "
                                  "'trt-rtx' extra) installed, or use --backend auto (ONNX Runtime or PyTorch "
                                  "where no plan is usable).")

    def _why_no_trt(self) -> str | None:
        """Why no TensorRT flavour can run here at all (None: one can); each flavour's reason is kept."""
        self.gpu = self.gpu or trt_gpu(self.device)
        if self.gpu is None:
            return "the device is not CUDA" if self.device.type != "cuda" else "no CUDA GPU visible to torch"
        from .trt_support import import_tensorrt, module_version

        versions = dict(self.trt_versions or {})
        for flavor in FLAVORS.values():
            if flavor.name in versions:
                continue
            try:
                versions[flavor.name] = module_version(import_tensorrt(flavor))
            except LatentmuseError as exc:
                self._flavor_unavailable[flavor.name] = exc.message.rstrip(".")
                continue
            why = can_run(flavor, self.gpu)
            if why:
                del versions[flavor.name]
                self._flavor_unavailable[flavor.name] = why
        self.trt_versions = versions
        if not versions:
            return "; ".join(why.rstrip(".") for why in self._flavor_unavailable.values())  # each names its flavour
        return None

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.note(message)

    def select(self, graph: str) -> Runner:
        """The opened runner for ``graph`` (its :class:`Choice` lands in ``choices``)."""
        spec = ALL_GRAPHS[graph]
        skipped: list[str] = []
        if graph not in GRAPHS or self.backend == "torch":
            why = "--backend torch" if self.backend == "torch" else "no engine runs it (PyTorch only)"
            return self._chose(graph, self._torch(spec), "torch", why, skipped)
        if self.backend == "auto" and not self.store.exists:
            self._say_once("no-store", f"no engines folder {self.store.root}: every graph runs on PyTorch "
                                       "(build engines with `make engines`, or pass --engines DIR)")
            return self._chose(graph, self._torch(spec), "torch", f"no engines folder {self.store.root}", [])
        for backend in (("trt", "ort") if self.backend == "auto" else (self.backend,)):
            runner, why = self._try(backend, spec)
            if runner is not None:
                return self._chose(graph, runner, backend, why, skipped)
            skipped.append(_labelled(backend, why))
            if self.backend != "auto":
                raise LatentmuseError(f"{graph} cannot run on {_labelled(backend, why)}.",
                                      "run `make engines` for these weights, or use --backend auto "
                                      "(PyTorch where no engine is usable).")
            if backend == "trt" and why == self._trt_unavailable:
                self._say_once("no-trt", f"TensorRT skipped for every graph: {why}")
            else:
                self.note(f"{graph}: {NAMES[backend]} skipped: {why}")
        return self._chose(graph, self._torch(spec), "torch", "no usable engine", skipped)

    def _torch(self, spec: GraphSpec) -> Runner:
        return self.torch_models.runner(spec, self.device, self.dtype)

    def _try(self, backend: str, spec: GraphSpec) -> tuple[Runner | None, str]:
        if backend == "trt":
            return self._try_trt(spec)
        precisions = ("fp16", "fp32") if self.device.type == "cuda" else ("fp32",)
        reasons = []
        for precision in precisions:
            path, why = self.store.onnx(spec.name, precision)
            if path is None:
                reasons.append(why)
                continue
            runner, why = self._open(OrtRunner(spec.name, path, self.device, spec), why)
            if runner is not None:
                return runner, why
            reasons.append(why)
        return None, "; ".join(reasons)

    def _try_trt(self, spec: GraphSpec) -> tuple[Runner | None, str]:
        """The first flavour whose plan fits this GPU and opens: standard TensorRT (built for exactly this
        GPU model), else TensorRT for RTX. The reason gives each flavour tried or holding a plan, those
        of TensorRT for RTX after its name (see :func:`_labelled`)."""
        if self._trt_unavailable:
            return None, self._trt_unavailable
        from .trt_runner import TrtRunner

        reasons = []
        for flavor in FLAVORS.values():
            version = self.trt_versions.get(flavor.name)
            if version is None:
                if self.store.has_plan(spec.name, flavor):  # a plan this machine cannot use: say why
                    reasons.append(_flavored(flavor, self._flavor_unavailable[flavor.name]))
                continue
            plan, why = self.store.plan(spec.name, flavor, version, self.gpu)
            if plan is not None:
                cache = self.store.runtime_cache(spec.name, version, self.gpu) if flavor is TENSORRT_RTX else None
                runner = TrtRunner(spec.name, plan, self.device, spec, flavor=flavor, runtime_cache=cache,
                                   warn=self.note)
                runner, why = self._open(runner, _flavored(flavor, why))
                if runner is not None:
                    return runner, why
                reasons.append(_flavored(flavor, why))
                continue
            reasons.append(_flavored(flavor, why))
        return None, "; ".join(reasons) or "no engine"

    @staticmethod
    def _open(runner: Runner, why: str) -> tuple[Runner | None, str]:
        try:
            runner.open()
        except RunnerError as exc:
            return None, exc.message
        return runner, why

    def _chose(self, graph: str, runner: Runner, backend: str, why: str, skipped: list[str]) -> Runner:
        flavor = getattr(runner, "flavor", None) if backend == "trt" else None
        self.choices[graph] = Choice(graph, backend, why, skipped, getattr(flavor, "name", None))
        return runner

    def select_all(self, graphs: Iterable[str]) -> dict[str, Runner]:
        return {graph: self.select(graph) for graph in graphs}


def _flavored(flavor: TrtFlavor, why: str) -> str:
    """A TensorRT for RTX reason after the flavour's name; a standard TensorRT one as it is."""
    return f"{flavor.label}: {why}" if flavor is TENSORRT_RTX else why


def _labelled(backend: str, why: str) -> str:
    """``why`` after the backend's name ("ONNX Runtime: ...", "TensorRT: ..."), unless it begins with one
    (a reason of TensorRT for RTX alone)."""
    return why if why.startswith(f"{TENSORRT_RTX.label}:") else f"{NAMES[backend]}: {why}"


def trt_gpu(device: torch.device) -> GpuInfo | None:
    """The GPU a TensorRT engine would run on for ``device`` (None off CUDA). Tests replace it: the
    TensorRT double runs on the CPU."""
    return gpu_info() if device.type == "cuda" else None


def engines_dir(value: str | Path | None) -> Path:
    """``--engines``: the flag, else ``$LATENTMUSE_ENGINES``, else ``engines/``."""
    if value is not None:
        return Path(value)
    return Path(os.environ.get("LATENTMUSE_ENGINES", DEFAULT_ENGINES))
