"""PyTorch -> ONNX for one :class:`GraphSpec`: export, check, validate against PyTorch, and an fp16 copy.

``export_graph`` writes ``NAME.onnx`` (fp32; ``NAME.onnx.data`` beside it when the weights pass the
external-data threshold, 2 GB by default) and ``NAME.fp16.onnx`` (fp16-typed for strongly typed
TensorRT builds: I/O stays float32, normalisation / softmax / reductions / sinusoids stay float32),
then validates both on fresh seeded random inputs through ONNX Runtime CPU against the PyTorch fp32
wrapper: fp32 by max-abs and relative error against the spec's tolerance, fp16 by cosine similarity
and max-abs (ONNX Runtime CPU runs the fp16 graph; it is a sanity check, the engine gets its own).

The exporter is the dynamo one (``torch.onnx.export(dynamo=True)``, opset 18); only if it fails does
the TorchScript exporter (``dynamo=False``, opset 17) take over, and the result records which ran.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import LatentmuseError
from .spec import GraphSpec

#: Above this many bytes of parameters the weights go to one side file ``NAME.onnx.data``
#: (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2_000_000_000

#: Ops kept in float32 in the fp16 graph: normalisation statistics (GroupNorm exports as
#: InstanceNormalization), softmax, mean/variance reductions, and the timestep sinusoids.
FP16_KEEP_FP32 = (
    "GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
    "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal",
    "Sin", "Cos", "Exp", "Range",
)  # fmt: skip

SMOKE = "smoke"
REPORT_NAME = "export_report.json"


@dataclass
class Validation:
    sizes: dict[str, int]
    max_abs: float
    rel: float  # max |onnx - torch| / max |torch|
    passed: bool


@dataclass
class ExportResult:
    name: str
    file: str
    bytes: int
    external_data: bool
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    seconds: float
    sha256: str
    fp32_max_abs: float
    fp32_rel: float
    fp32_pass: bool
    atol: float
    rtol: float
    validations: list[Validation] = field(default_factory=list)
    fp16_file: str | None = None
    fp16_bytes: int | None = None
    fp16_sha256: str | None = None
    fp16_cosine: float | None = None
    fp16_max_abs: float | None = None
    fp16_pass: bool | None = None
    min_cosine_fp16: float | None = None
    exporter_note: str = ""

    @property
    def passed(self) -> bool:
        return self.fp32_pass and self.fp16_pass is not False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        return data


# --------------------------------------------------------------------------------------------- models


def smoke_model(key: str, seed: int = 0) -> nn.Module:
    """The tiny configuration of model ``key``, seeded (same seed, same weights on every machine)."""
    from ..models.layouts import layout

    module = layout(key).load_module()
    offset = sum(key.encode())  # a per-model offset so two models never share a random stream
    torch.manual_seed(seed + offset)
    return module.build(module.tiny_config()).eval().requires_grad_(False)


def load_graph_model(spec: GraphSpec, weights: str | Path, seed: int = 0) -> nn.Module:
    """The model feeding ``spec``: from a weights folder, or ``"smoke"`` tiny seeded weights."""
    if str(weights) == SMOKE:
        return smoke_model(spec.model_key, seed)
    from ..models.folder import load_model

    return load_model(Path(weights), spec.model_key).eval().requires_grad_(False)


def _plain_attention(model: nn.Module) -> None:
    """Reset custom (xformers, ...) diffusers attention processors to the stock SDPA one."""
    if not hasattr(model, "attn_processors"):
        return
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if any(not isinstance(p, (AttnProcessor, AttnProcessor2_0)) for p in model.attn_processors.values()):
        model.set_attn_processor(AttnProcessor2_0())


# --------------------------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------------------------- export


def parameter_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


def _export_dynamo(wrapper, spec, args, path, opset, external) -> None:
    from torch.export import Dim

    dims = {d.name: Dim(d.name, min=d.min, max=d.max) for d in spec.dynamic}
    dynamic_shapes = None
    if dims:
        dynamic_shapes = tuple(
            {i: dims[s] for i, s in enumerate(t.shape) if isinstance(s, str)} or None for t in spec.inputs
        )
    program = torch.onnx.export(
        wrapper, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
        input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
        verbose=False, report=False,
    )
    program.save(str(path), external_data=external)


def _export_torchscript(wrapper, spec, args, path, opset, external) -> None:
    dynamic_axes = {}
    for t in (*spec.inputs, *spec.outputs):
        axes = {i: s for i, s in enumerate(t.shape) if isinstance(s, str)}
        if axes:
            dynamic_axes[t.name] = axes
    torch.onnx.export(
        wrapper, args, str(path), dynamo=False, opset_version=opset, dynamic_axes=dynamic_axes or None,
        input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
    )
    if external:  # the TorchScript exporter scatters one file per tensor: gather them into one side file
        import onnx

        model = onnx.load(str(path))
        for stale in path.parent.iterdir():
            if stale != path and not stale.suffix == ".onnx" and not stale.name.endswith((".data", ".json")):
                stale.unlink()
        _save_proto(model, path, external=True)


def _save_proto(model, path: Path, external: bool) -> None:
    import onnx

    _remove(path)
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
            location=path.name + ".data", size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def _check(path: Path) -> None:
    import onnx

    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    onnx.checker.check_model(str(path))


def sha256_files(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- validation


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph optimisation: compare the graph as written (ORT fusions are not what TensorRT sees).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, spec: GraphSpec, args: Sequence[torch.Tensor]) -> list[np.ndarray]:
    session = _session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    feeds = {t.name: a.detach().cpu().numpy() for t, a in zip(spec.inputs, args)}
    return session.run([t.name for t in spec.outputs], feeds)


def run_torch(wrapper: nn.Module, args: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrapper(*args)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().cpu().numpy() for o in out]


def compare(onnx_out: Sequence[np.ndarray], torch_out: Sequence[np.ndarray], atol: float, rtol: float) -> tuple[float, float, bool]:
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
    a = np.concatenate([o.astype(np.float64).ravel() for o in onnx_out])
    b = np.concatenate([o.astype(np.float64).ravel() for o in torch_out])
    if not np.isfinite(a).all():
        return float("nan")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


# ---------------------------------------------------------------------------------------------- fp16


def convert_fp16(src: Path, dst: Path, external: bool) -> None:
    """fp16-typed copy of an fp32 graph: I/O float32, :data:`FP16_KEEP_FP32` ops left in float32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" for tiny weights
        # Casts of the fp32 graph (int timestep -> float, ...) stay as written: the converter retypes
        # them to fp16 without fixing the value_info behind them when a blocked op consumes them.
        casts = [n.name for n in model.graph.node if n.op_type == "Cast" and n.name]
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block, node_block_list=casts, disable_shape_infer=external,
        )
    _restore_io_types(model, half)
    _save_proto(half, dst, external)
    _check(dst)


def _restore_io_types(fp32, half) -> None:
    """Cast back any graph output the converter left in fp16 (it does when a blocked op feeds it)."""
    from onnx import helper

    wanted = {o.name: o.type.tensor_type.elem_type for o in fp32.graph.output}
    for out in half.graph.output:
        want = wanted.get(out.name)
        if want is None or out.type.tensor_type.elem_type == want:
            continue
        inner = f"{out.name}__fp16"
        for node in half.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        for vi in half.graph.value_info:
            if vi.name == out.name:
                vi.name = inner
        half.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=want, name=f"{out.name}__to_fp32"))
        out.type.tensor_type.elem_type = want
    for inp in half.graph.input:
        if inp.name in {i.name for i in fp32.graph.input}:
            original = next(i for i in fp32.graph.input if i.name == inp.name)
            if inp.type.tensor_type.elem_type != original.type.tensor_type.elem_type:
                raise LatentmuseError(f"fp16 conversion changed the type of input {inp.name!r}.")


# ---------------------------------------------------------------------------------------------- main


class _NoDynamo(Exception):
    pass


def export_graph(
    spec: GraphSpec,
    model: nn.Module,
    out_dir: str | Path,
    *,
    sizes: Mapping[str, int] | None = None,
    opset: int = 18,
    fp16: bool = True,
    seed: int = 0,
    external_data_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD,
    dynamo: bool = True,
) -> ExportResult:
    """Export ``spec``'s graph of ``model`` into ``out_dir`` and validate it (see the module doc)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().requires_grad_(False)
    _plain_attention(model)
    wrapper = spec.make_wrapper(model).eval()
    traced = dict(trace_sizes(spec))
    traced.update(sizes or {})
    small = [name for name, v in traced.items() if v < 2]
    if small:
        raise LatentmuseError(f"{spec.name}: dynamic dims {small} traced below 2.", "trace at size 2 or more.")
    args = random_inputs(spec, traced, seed)
    external = parameter_bytes(model) > external_data_threshold_bytes
    path = out_dir / f"{spec.name}.onnx"
    _remove(path)

    start = time.perf_counter()
    exporter, used_opset, note = "dynamo", opset, ""
    try:
        if not dynamo:
            raise _NoDynamo
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export_dynamo(wrapper, spec, args, path, opset, external)
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back once
        if isinstance(exc, _NoDynamo):
            note = "dynamo=False requested"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            note = f"dynamo failed: {type(exc).__name__}: {first}"
        exporter, used_opset = "torchscript", min(opset, 17)
        _remove(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export_torchscript(wrapper, spec, args, path, used_opset, external)
        except Exception as exc2:  # noqa: BLE001
            raise LatentmuseError(
                f"{spec.name}: export failed with both exporters ({note}; torchscript: {exc2}).",
                "run with LATENTMUSE_DEBUG=1 for the traceback.",
            ) from exc2
    _check(path)
    seconds = time.perf_counter() - start
    data = path.with_name(path.name + ".data")
    has_data = data.is_file()

    # fp32: ONNX Runtime CPU vs PyTorch on fresh inputs at every validation size.
    session = _session(path)
    validations, references = [], []
    for i, vs in enumerate(validation_sizes(spec)):
        fresh = random_inputs(spec, vs, seed + 1000 + i)
        ref = run_torch(wrapper, fresh)
        got = run_onnx(session, spec, fresh)
        m, r, ok = compare(got, ref, spec.atol, spec.rtol)
        validations.append(Validation(vs, m, r, ok))
        references.append((fresh, ref))
    del session

    result = ExportResult(
        name=spec.name, file=str(path), bytes=path.stat().st_size + (data.stat().st_size if has_data else 0),
        external_data=has_data, exporter=exporter, opset=used_opset, seconds=round(seconds, 2),
        sha256=sha256_files(path, data), fp32_max_abs=max(v.max_abs for v in validations),
        fp32_rel=max(v.rel for v in validations), fp32_pass=all(v.passed for v in validations),
        atol=spec.atol, rtol=spec.rtol, validations=validations, exporter_note=note,
    )
    if fp16:
        half = out_dir / f"{spec.name}.fp16.onnx"
        try:
            convert_fp16(path, half, external=parameter_bytes(model) // 2 > external_data_threshold_bytes)
        except Exception as exc:  # noqa: BLE001 - reported as a failed fp16 graph, the fp32 one stands
            result.fp16_pass = False
            result.exporter_note = (result.exporter_note + f"; fp16 conversion failed: {type(exc).__name__}: {str(exc)[:200]}").lstrip("; ")
            return result
        half_data = half.with_name(half.name + ".data")
        fresh, ref = references[0]
        got = run_onnx(half, spec, fresh)
        cos = cosine(got, ref)
        max_abs = max(float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) for a, b in zip(got, ref))
        result.fp16_file = str(half)
        result.fp16_bytes = half.stat().st_size + (half_data.stat().st_size if half_data.is_file() else 0)
        result.fp16_sha256 = sha256_files(half, half_data)
        result.fp16_cosine = cos
        result.fp16_max_abs = max_abs
        result.fp16_pass = bool(np.isfinite(cos) and cos >= spec.min_cosine_fp16)
        result.min_cosine_fp16 = spec.min_cosine_fp16
    return result


def write_report(results: Sequence[ExportResult], path: str | Path, **meta: object) -> Path:
    """``export_report.json``: settings plus one entry per graph."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "torch": torch.__version__,
        **meta,
        "graphs": {r.name: r.to_dict() for r in results},
        "passed": all(r.passed for r in results),
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def export_many(
    names: Sequence[str],
    weights: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool = True,
    seed: int = 0,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[ExportResult], None] | None = None,
) -> list[ExportResult]:
    """Export several graphs from one weights source (models loaded once per model key)."""
    from .specs import GRAPHS

    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise LatentmuseError(f"unknown graph {unknown[0]!r}.", f"use some of {', '.join(GRAPHS)}.")
    models: dict[str, nn.Module] = {}
    results = []
    for name in names:
        spec = GRAPHS[name]
        if on_start:
            on_start(name)
        if spec.model_key not in models:
            models = {spec.model_key: load_graph_model(spec, weights, seed)}  # keep one model in memory
        result = export_graph(spec, models[spec.model_key], out_dir, fp16=fp16, seed=seed)
        results.append(result)
        if on_done:
            on_done(result)
    return results
