"""Validation of an exported graph: the same fresh seeded inputs through the PyTorch runner and the ONNX
Runtime CPU runner, compared with :mod:`latentmuse.runners.compare`.

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

from ..graphs.spec import GraphSpec
from ..runners.ort_runner import OrtRunner
from . import memory

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


def ort_runner(spec: GraphSpec, path: str | Path) -> OrtRunner:
    """ONNX Runtime CPU over the graph as written (see the module doc)."""
    return OrtRunner(spec.name, path, "cpu", spec, optimization="none", arena=False)


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
