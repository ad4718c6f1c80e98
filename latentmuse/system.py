"""What this machine can run: Python, torch and CUDA, ONNX Runtime providers, TensorRT.

``latentmuse doctor`` prints it; later the runtime uses the same probes to choose backends. Each probe
reports what *works*, not what is installed: an ONNX Runtime provider counts only if a one-node graph
runs on it, and TensorRT only if its module has a ``Builder`` (an empty stub package imports too).
"""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    detail: str


@dataclass
class SystemReport:
    probes: list[Probe] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.probes.append(Probe(name, ok, detail))


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def gpu_info() -> GpuInfo | None:
    """The CUDA GPU torch sees (device 0), or None. Tests replace this function."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return GpuInfo(props.name, f"{props.major}.{props.minor}")
    except Exception:  # noqa: BLE001 - a broken CUDA install means no GPU for us
        return None


def python_probe() -> Probe:
    return Probe("python", sys.version_info >= (3, 10), f"{platform.python_version()} ({sys.executable})")


def torch_probes() -> list[Probe]:
    import torch

    probes = [Probe("torch", True, torch.__version__)]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            probes.append(Probe(
                f"cuda:{i}", True,
                f"{props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB",
            ))
    else:
        probes.append(Probe("cuda", False, "no CUDA device visible to torch (CPU only)"))
    return probes


def working_ort_providers() -> list[Probe]:
    """Run a one-node ONNX graph on every provider ONNX Runtime lists; report which really ran it."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as exc:
        return [Probe("onnxruntime", False, f"not importable: {exc}")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    payload = model.SerializeToString()
    probes = [Probe("onnxruntime", True, ort.__version__)]
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # Azure's provider forwards to a remote endpoint; it is not a local compute device.
    for provider in (p for p in ort.get_available_providers() if p != "AzureExecutionProvider"):
        try:
            session = ort.InferenceSession(payload, options, providers=[provider])
            (out,) = session.run(None, {"x": np.array([1.0, 2.0], dtype=np.float32)})
            ok = session.get_providers()[0] == provider and bool(np.allclose(out, [2.0, 4.0]))
            probes.append(Probe(f"ort:{provider}", ok, "runs" if ok else "listed but fell back to another provider"))
        except Exception as exc:  # noqa: BLE001 - a provider failing in any way is the finding
            probes.append(Probe(f"ort:{provider}", False, f"fails: {str(exc).splitlines()[0][:120]}"))
    return probes


@dataclass(frozen=True)
class TrtFlavor:
    """One of the two TensorRT flavours latentmuse builds and runs (docs/ENGINES.md).

    Standard TensorRT builds on the GPU the plan will run on (a plan is tied to that GPU model);
    TensorRT for RTX builds ahead of time on any machine, for a list of compute capabilities, and
    compiles its kernels just in time on the GPU at first run.
    """

    name: str  # "tensorrt" | "tensorrt-rtx": --flavor, the manifest
    module: str  # the Python module: "tensorrt" | "tensorrt_rtx"
    label: str  # for people: "TensorRT" | "TensorRT for RTX"
    plan_suffix: str  # "vae_encoder.plan" | "vae_encoder.rtx.plan": both kinds sit in one engines folder
    extra: str  # the latentmuse extra that installs it
    needs_gpu_to_build: bool


TENSORRT = TrtFlavor("tensorrt", "tensorrt", "TensorRT", ".plan", "gpu", True)
TENSORRT_RTX = TrtFlavor("tensorrt-rtx", "tensorrt_rtx", "TensorRT for RTX", ".rtx.plan", "trt-rtx", False)
#: By name, in the order ``--flavor auto`` and ``--backend auto`` prefer them.
FLAVORS: dict[str, TrtFlavor] = {f.name: f for f in (TENSORRT, TENSORRT_RTX)}

#: Compute capabilities TensorRT for RTX can target (its ``ComputeCapability`` enum in 1.x): Turing,
#: Ampere, Ada, consumer and RTX PRO Blackwell. Not 9.0 (Hopper) or 10.0 (B200): those need standard TensorRT.
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
#: What an RTX plan targets unless told otherwise: TensorRT for RTX's own default set (7.5 only when
#: asked for, as NVIDIA advises). Named explicitly so the manifest records what a plan runs on.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


def tensorrt_probe(flavor: TrtFlavor = TENSORRT) -> Probe:
    """Whether ``flavor``'s module imports and has a Builder; its version, or why not."""
    try:
        trt = importlib.import_module(flavor.module)
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install raising anything
        where = ("from NVIDIA's index on a GPU machine" if flavor is TENSORRT else "from PyPI")
        return Probe(flavor.name, False, f"{flavor.module} not importable ({type(exc).__name__}); "
                                         f"install the '{flavor.extra}' extra ({where})")
    if not hasattr(trt, "Builder"):
        return Probe(flavor.name, False, f"a '{flavor.module}' module imports but has no Builder (stub or broken install)")
    return Probe(flavor.name, True, str(getattr(trt, "__version__", "unknown version")))


def can_build(flavor: TrtFlavor, gpu: GpuInfo | None) -> str | None:
    """Why ``flavor`` cannot build engines on this machine (None: it can), given its module imports."""
    if flavor.needs_gpu_to_build and gpu is None:
        return "it builds on the GPU the plans will run on, and no CUDA GPU is visible to torch"
    return None


def can_run(flavor: TrtFlavor, gpu: GpuInfo | None) -> str | None:
    """Why ``flavor``'s plans cannot run on this machine's GPU (None: they can)."""
    if gpu is None:
        return "no CUDA GPU visible to torch"
    if flavor is TENSORRT_RTX and gpu.compute_capability not in RTX_COMPUTE_CAPABILITIES:
        return (f"{gpu.name} has compute capability {gpu.compute_capability}, which TensorRT for RTX does not "
                f"support (it runs on {', '.join(RTX_COMPUTE_CAPABILITIES)}; Hopper and B200 need standard TensorRT)")
    return None


def probe_system() -> SystemReport:
    report = SystemReport()
    report.probes.append(python_probe())
    report.probes.extend(torch_probes())
    report.probes.extend(working_ort_providers())
    report.probes.extend(tensorrt_probe(f) for f in FLAVORS.values())
    return report
