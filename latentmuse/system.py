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


def tensorrt_probe() -> Probe:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install raising anything
        return Probe("tensorrt", False, f"not importable ({type(exc).__name__}); install the 'tensorrt' extra on a GPU machine")
    if not hasattr(trt, "Builder"):
        return Probe("tensorrt", False, "a 'tensorrt' module imports but has no Builder (stub or broken install)")
    return Probe("tensorrt", True, getattr(trt, "__version__", "unknown version"))


def probe_system() -> SystemReport:
    report = SystemReport()
    report.probes.append(python_probe())
    report.probes.extend(torch_probes())
    report.probes.extend(working_ort_providers())
    report.probes.append(tensorrt_probe())
    return report
