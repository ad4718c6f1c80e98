"""Validation of an exported graph: the same fresh seeded inputs through PyTorch and ONNX Runtime CPU.

fp32 graphs must agree with the PyTorch wrapper within the spec's tolerance
(``|onnx - torch| <= atol + rtol * |torch|`` element-wise, Optimum's criterion); fp16 graphs are
compared with PyTorch *fp32* by cosine similarity and max-abs (ONNX Runtime CPU is no reference for an
fp16 engine: it is the sanity check that the conversion kept the function).

Sessions run the graph as written (no ORT graph optimisation: its fusions are not what TensorRT sees)
and without ORT's memory arena, which can hold up to twice the live set on big graphs. Before a session
is made, :func:`memory_shortfall` says whether the machine has the memory to run it at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import memory
from .spec import GraphSpec

GB = 1e9


def trace_sizes(spec: GraphSpec) -> dict[str, int]:
    """Sizes to trace at: the dynamo exporter specialises a dimension traced at 0 or 1, so >= 2."""
    return {d.name: max(2, d.min) for d in spec.dynamic}


def validation_sizes(spec: GraphSpec) -> list[dict[str, int]]:
    """Two sizes per dynamic graph, neither the traced one: the minimum and one above the trace."""
    if not spec.dynamic:
        return [{}]
    traced = trace_sizes(spec)
    low = {d.name: d.min for d in spec.dynamic}
    high = {d.name: min(d.max, traced[d.name] + 1) for d in spec.dynamic}
    return [low, high] if low != high else [low]


def random_inputs(spec: GraphSpec, sizes: Mapping[str, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Fresh seeded inputs: float tensors N(0, 1), integer tensors (timesteps) in [0, 1000)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in spec.inputs:
        shape = t.concrete(sizes)
        if t.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g, dtype=torch.float32).to(t.dtype))
        else:
            out.append(torch.randint(0, 1000, shape, generator=g, dtype=t.dtype))
    return tuple(out)


def session(path: str | Path):
    """An ONNX Runtime CPU session over the graph as written (see the module doc)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, spec: GraphSpec, args: Sequence[torch.Tensor]) -> list[np.ndarray]:
    sess = session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    feeds = {t.name: a.detach().cpu().numpy() for t, a in zip(spec.inputs, args)}
    return sess.run([t.name for t in spec.outputs], feeds)


def run_torch(wrapper: nn.Module, args: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrapper(*args)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().cpu().numpy() for o in out]


def compare(onnx_out: Sequence[np.ndarray], torch_out: Sequence[np.ndarray], atol: float,
            rtol: float) -> tuple[float, float, bool]:
    """(max-abs error, max-abs error / max |torch|, every element within atol + rtol * |torch| and finite)."""
    max_abs, scale, ok = 0.0, 0.0, True
    for a, b in zip(onnx_out, torch_out):
        if a.shape != b.shape:
            return float("inf"), float("inf"), False
        a, b = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(a - b)
        ok &= bool(np.isfinite(a).all()) and bool((diff <= atol + rtol * np.abs(b)).all())
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        scale = max(scale, float(np.abs(b).max(initial=0.0)))
    return max_abs, max_abs / scale if scale > 0 else max_abs, ok


def cosine(onnx_out: Sequence[np.ndarray], torch_out: Sequence[np.ndarray]) -> float:
    """Cosine similarity of all outputs flattened together; NaN when the ONNX side is not finite."""
    a = np.concatenate([o.astype(np.float64).ravel() for o in onnx_out])
    b = np.concatenate([o.astype(np.float64).ravel() for o in torch_out])
    if not np.isfinite(a).all():
        return float("nan")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def max_abs_error(onnx_out: Sequence[np.ndarray], torch_out: Sequence[np.ndarray]) -> float:
    return max(float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) for a, b in zip(onnx_out, torch_out))


def memory_shortfall(path: str | Path, sizes: Sequence[Mapping[str, int]],
                     available_bytes: int | None = None) -> tuple[memory.MemoryEstimate, str | None]:
    """The largest memory estimate of running ``path`` at any of ``sizes``, and a sentence saying why it
    cannot run here (None when it fits, or when the available memory is unknown)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # the header: a few MB even for the UNets
    need = max((memory.estimate(model, s) for s in sizes), key=lambda e: e.total_bytes)
    available = memory.available_memory_bytes() if available_bytes is None else available_bytes
    if available is None or need.total_bytes <= available:
        return need, None
    return need, (f"ONNX Runtime CPU would need about {need.total_bytes / GB:.1f} GB "
                  f"({need.activations_bytes / GB:.1f} GB of activations, peak at {need.peak_node}) "
                  f"and {available / GB:.1f} GB are available")
