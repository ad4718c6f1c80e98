"""How much memory ONNX Runtime needs at least to run a graph: decided before a session is created.

Validating an export means running it on ONNX Runtime CPU, which materialises every intermediate
tensor. Most graphs need little, but the opset-18 graphs spell attention as MatMul -> Softmax ->
MatMul, so ``unet3d_512`` holds (2 x 16 x 8 heads) score matrices of 4096 x 4096 floats twice over:
tens of GB. A machine without that memory would be killed by the OOM killer mid-validation, losing
the run; instead the exporter compares this lower bound with the memory available and records the
graph as *unvalidated*, with the numbers, before trying.

The bound is a liveness simulation of the graph in its (topological) node order: a tensor is allocated
by its producer and freed after its last consumer; graph outputs live to the end; view-like ops
(Reshape, Squeeze, ...) share their input's buffer; initializers are resident throughout. It is exact
for static graphs up to ONNX Runtime's own buffer reuse and arena overhead (which only add), and a
lower bound for dynamic ones: a named dynamic dimension takes its given size, an unnamed one
(``unk__N``, an expression the exporter could not name) counts as 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Ops whose output ONNX Runtime may place in its input's buffer (no new allocation).
ALIAS_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int  # initializers (and constants), resident for the whole run
    activations_bytes: int  # the largest set of intermediate tensors alive at one time
    peak_node: str  # the node at which that peak occurs (name or op type)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activations_bytes


def _elem_size(elem_type: int) -> int:
    from onnx import helper

    try:
        return max(1, helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4  # unknown/undefined types: count as float32


def _tensor_type_bytes(type_proto, sizes: Mapping[str, int]) -> int:
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return 0  # unknown rank: nothing we can claim
    count = 1
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            count *= d.dim_value
        elif d.HasField("dim_param"):
            count *= int(sizes.get(d.dim_param, 1))
    return count * _elem_size(t.elem_type)


def _initializer_bytes(tensor) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count * _elem_size(tensor.data_type)


def estimate(model, sizes: Mapping[str, int] | None = None) -> MemoryEstimate:
    """Lower bound of ONNX Runtime's CPU memory for ``model`` (an ``onnx.ModelProto`` whose value_info
    carries inferred shapes; its external data need not be loaded) at the dynamic ``sizes``."""
    sizes = dict(sizes or {})
    graph = model.graph
    weights = {t.name: _initializer_bytes(t) for t in graph.initializer}
    known = {v.name: _tensor_type_bytes(v.type, sizes) for v in (*graph.input, *graph.value_info, *graph.output)}
    outputs = {o.name for o in graph.output}

    # Constants are weights too: they are folded into initializers when the session loads.
    constant_bytes = 0
    buffer_of: dict[str, str] = {}  # tensor -> the tensor that owns its buffer
    size: dict[str, int] = {}  # owning tensor -> bytes
    for v in graph.input:
        if v.name not in weights:
            buffer_of[v.name] = v.name
            size[v.name] = known.get(v.name, 0)

    nodes = list(graph.node)
    last_use: dict[str, int] = {}  # buffer -> index of the last node reading any tensor in it
    for i, node in enumerate(nodes):
        if node.op_type == "Constant":
            constant_bytes += sum(known.get(o, 0) for o in node.output)
            continue
        for name in node.input:
            if name in buffer_of:
                last_use[buffer_of[name]] = i
        for j, name in enumerate(node.output):
            if not name:
                continue
            first = node.input[0] if node.input else ""
            if j == 0 and node.op_type in ALIAS_OPS and first in buffer_of:
                buffer_of[name] = buffer_of[first]
            else:
                buffer_of[name] = name
                size[name] = known.get(name, 0)
    end = len(nodes)
    for name in outputs:
        if name in buffer_of:
            last_use[buffer_of[name]] = end
    live, current, peak, peak_at = set(), 0, 0, ""
    for v in graph.input:
        if v.name in size:
            live.add(v.name)
            current += size[v.name]
    peak = current
    freeing: dict[int, list[str]] = {}
    for owner, i in last_use.items():
        freeing.setdefault(i, []).append(owner)
    for i, node in enumerate(nodes):
        if node.op_type == "Constant":
            continue
        for name in node.output:
            owner = buffer_of.get(name)
            if owner == name and owner not in live:
                live.add(owner)
                current += size[owner]
        if current > peak:
            peak, peak_at = current, node.name or node.op_type
        for owner in freeing.get(i, ()):
            if owner in live:
                live.discard(owner)
                current -= size[owner]
        for name in node.output:  # outputs nobody reads are freed at once
            owner = buffer_of.get(name)
            if owner == name and owner not in last_use and owner in live:
                live.discard(owner)
                current -= size[owner]
    return MemoryEstimate(sum(weights.values()) + constant_bytes, peak, peak_at)


def available_memory_bytes() -> int | None:
    """Memory a new allocation can still get without swapping (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
