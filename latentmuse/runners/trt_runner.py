"""Run a TensorRT engine, of either flavour, behind the runner interface (:mod:`latentmuse.runners.base`).

TensorRT 10/11 name-based API only (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); torch CUDA tensors are the buffers and the engine runs
on torch's current stream, so no cuda-python is needed and results are ordered with later torch work.
A shape outside the engine's optimisation profile, a failed execution and a non-finite output are each a
:class:`~latentmuse.runners.base.RunnerError` (the generator falls back), never a crash.

Both flavours (:data:`latentmuse.system.FLAVORS`) share this code: the runner is told the plan's
flavour (the manifest knows it) and loads it with that flavour's module only; a plan file whose name
says the other flavour is refused before any TensorRT call. A TensorRT for RTX plan compiles its
kernels just in time on the GPU: its execution context gets a runtime cache
(``create_runtime_config``, ``create_runtime_cache``), loaded from ``runtime_cache`` (a file under the
engines folder, one per graph, GPU and version) and written back atomically after a call at new shapes
and on close, so the compilation happens once per GPU, not once per run. A cache that is corrupt or
from another GPU or version is dropped with one warning (the kernels compile again and replace it).

A static graph (no dynamic dimension in its spec: the UNet3D, called ``steps`` times per window with the
same shapes) is captured once into a CUDA graph after a warm-up execution and replayed: each call then
costs one copy of its inputs and one launch instead of TensorRT's per-call enqueue of every kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..files import atomic_write
from ..graphs.spec import GraphSpec
from ..system import FLAVORS, TENSORRT, TENSORRT_RTX, TrtFlavor
from .base import BaseRunner, RunnerError, require_finite_outputs
from .trt_support import deserialize_engine, get_logger, import_tensorrt

_TORCH_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
}


class EngineShapeError(RunnerError):
    """An input shape the engine was not built for."""


def torch_dtype(trt_dtype) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_DTYPES:
        raise RunnerError(f"TensorRT data type {name} has no torch equivalent here.")
    return _TORCH_DTYPES[name]


class TrtRunner(BaseRunner):
    """One engine: ``runner({"latent": t}) -> {"image": t}``; outputs are fresh tensors on ``device``.

    ``plan`` is a path or the serialized bytes; the engine is deserialised on ``open()`` with
    ``flavor``'s module (a name or a :class:`~latentmuse.system.TrtFlavor`). With a ``spec`` the engine's
    input and output names must be the spec's. ``cuda_graph``: None replays a CUDA graph for static
    specs on CUDA; True/False force it. ``runtime_cache`` (TensorRT for RTX): the JIT cache file;
    ``warn`` hears one line when it is dropped or cannot be written.
    """

    backend = "trt"

    def __init__(self, name: str, plan: str | Path | bytes, device: str | torch.device = "cuda",
                 spec: GraphSpec | None = None, cuda_graph: bool | None = None,
                 flavor: str | TrtFlavor = TENSORRT, runtime_cache: str | Path | None = None,
                 warn: Callable[[str], None] = lambda message: None) -> None:
        super().__init__(name, spec, device, input_names=() if spec is None else None,
                         output_names=() if spec is None else None)
        self.plan = plan
        self.flavor = FLAVORS[flavor] if isinstance(flavor, str) else flavor
        self.runtime_cache = Path(runtime_cache) if runtime_cache is not None else None
        self.warn = warn
        static = spec is not None and not spec.dynamic
        self.cuda_graph = (static and self.device.type == "cuda") if cuda_graph is None else cuda_graph
        self.engine = self.context = self._runtime = None
        self._graph = None
        self._cache = self._cache_saved = None
        self._shapes_seen: set = set()

    # lifecycle -------------------------------------------------------------------------------------
    def _open(self) -> None:
        if not isinstance(self.plan, (bytes, bytearray)):
            check_plan_name(Path(self.plan), self.flavor)
        trt = import_tensorrt(self.flavor)
        payload = self.plan if isinstance(self.plan, (bytes, bytearray)) else Path(self.plan).read_bytes()
        with self._on_device():  # TensorRT allocates on the current CUDA device
            self.engine, self._runtime = deserialize_engine(payload, trt.Runtime(get_logger(self.flavor)), self.flavor)
            if self.flavor is TENSORRT_RTX:
                self.context = self.engine.create_execution_context(self._runtime_config())
            else:
                self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunnerError(f"{self.name}: TensorRT could not create an execution context (out of GPU memory?).")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        inputs = tuple(n for n in names if is_input[n])
        outputs = tuple(n for n in names if not is_input[n])
        if self.spec is not None and (set(inputs) != set(self.input_names) or set(outputs) != set(self.output_names)):
            raise RunnerError(f"{self.name}: the engine's tensors {inputs} -> {outputs} are not the graph's "
                              f"{self.input_names} -> {self.output_names}.", "rebuild it: `latentmuse build --force`.")
        self.input_names, self.output_names = inputs, outputs
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.profiles = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)) for n in inputs}

    def _close(self) -> None:
        self._save_cache()
        self._graph = None
        self.context = self.engine = self._runtime = self._cache = None

    # TensorRT for RTX's runtime cache -------------------------------------------------------------
    def _runtime_config(self):
        """A runtime config whose cache holds the kernels compiled for this GPU so far (loaded from disk)."""
        config = self.engine.create_runtime_config()
        self._cache = config.create_runtime_cache()
        path = self.runtime_cache
        if path is not None and path.is_file():
            try:
                blob = path.read_bytes()
                loaded = bool(self._cache.deserialize(blob))
            except Exception:  # noqa: BLE001 - an unreadable file is a cache miss like any other
                loaded, blob = False, None
            if loaded:
                self._cache_saved = blob
            else:
                self.warn(f"{self.name}: runtime cache {path} is corrupt or from another GPU or TensorRT for RTX "
                          "version: dropped, kernels compile again and replace it.")
        config.set_runtime_cache(self._cache)
        return config

    def _save_cache(self) -> None:
        """Write the runtime cache back (atomically) when it holds what the file does not yet."""
        if self._cache is None or self.runtime_cache is None:
            return
        try:
            blob = bytes(memoryview(self._cache.serialize()))
        except Exception:  # noqa: BLE001 - nothing to save is not worth failing a run for
            return
        if not blob or blob == self._cache_saved:
            return
        try:
            self.runtime_cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.runtime_cache, blob)
        except OSError as exc:
            self.warn(f"{self.name}: runtime cache not written to {self.runtime_cache} ({exc.strerror or exc}); "
                      "kernels compile again next run.")
            self.runtime_cache = None  # said once
            return
        self._cache_saved = blob

    def _on_device(self):
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def max_batch(self, input_name: str) -> int | None:
        self.open()
        return int(self.profiles[input_name][2][0])

    # calls -----------------------------------------------------------------------------------------
    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _opt, hi = self.profiles[name]
        if len(shape) != len(lo) or any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
            raise EngineShapeError(f"{self.name}: input {name} has shape {shape}, outside the engine's "
                                   f"profile {lo} .. {hi}.", "use a batch inside the profile or rebuild the engine.")

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bound: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            tensor = inputs[name].to(self.device, self.dtypes[name]).contiguous()
            shape = tuple(tensor.shape)
            self.check_shape(name, shape)
            if not self.context.set_input_shape(name, shape):
                raise EngineShapeError(f"{self.name}: TensorRT rejected shape {shape} for input {name}.")
            bound[name] = tensor
        if self.cuda_graph and self.device.type == "cuda":
            outputs = self._replay(bound)
        else:
            outputs = self._allocate_outputs()
            self._bind(bound, outputs)
            self._execute()
        require_finite_outputs(self.name, outputs)
        shapes = tuple(tuple(t.shape) for t in bound.values())
        if self._cache is not None and shapes not in self._shapes_seen:  # new shapes: kernels compiled just now
            self._shapes_seen.add(shapes)
            self._save_cache()
        return outputs

    def _allocate_outputs(self) -> dict[str, torch.Tensor]:
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"{self.name}: output {name} shape {shape} is unresolved.")
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
        return outputs

    def _bind(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in (*inputs.items(), *outputs.items()):
            self.context.set_tensor_address(name, tensor.data_ptr())

    def _execute(self) -> None:
        with self._on_device():
            stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
            if not self.context.execute_async_v3(stream):
                raise RunnerError(f"{self.name}: TensorRT execution failed.")

    def _replay(self, bound: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CUDA-graph replay: static buffers bound once; the first call at a shape warms up and captures."""
        key = tuple((n, tuple(t.shape), t.dtype) for n, t in bound.items())
        if self._graph is not None and self._graph[0] == key:
            _key, graph, static_in, static_out = self._graph
            for name, tensor in bound.items():
                static_in[name].copy_(tensor)
            graph.replay()
            return {name: t.clone() for name, t in static_out.items()}
        static_in = {name: t.clone() for name, t in bound.items()}
        static_out = self._allocate_outputs()
        self._bind(static_in, static_out)
        self._execute()  # TensorRT needs one execution at these shapes before it can be captured
        result = {name: t.clone() for name, t in static_out.items()}
        try:
            graph = torch.cuda.CUDAGraph()
            with self._on_device(), torch.cuda.graph(graph):
                self._execute()
        except Exception:  # noqa: BLE001 - an engine that cannot be captured still runs, uncaptured
            self.cuda_graph, self._graph = False, None
            torch.cuda.synchronize(self.device)
        else:
            self._graph = (key, graph, static_in, static_out)
        return result

    def __repr__(self) -> str:
        return f"TrtRunner({self.name}, {self.flavor.name}, {self.device})"


def check_plan_name(plan: Path, flavor: TrtFlavor) -> None:
    """A plan named for the other flavour (``x.rtx.plan`` vs ``x.plan``) is never handed to this one's runtime."""
    rtx_name = plan.name.endswith(TENSORRT_RTX.plan_suffix)
    if plan.suffix == ".plan" and rtx_name != (flavor is TENSORRT_RTX):
        other = TENSORRT_RTX if rtx_name else TENSORRT
        raise RunnerError(f"{plan.name} is a {other.label} plan; {flavor.label} cannot load it.",
                          f"load it with {other.label}, or build a {flavor.label} plan.")
