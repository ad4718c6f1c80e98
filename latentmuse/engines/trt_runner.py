"""Run a TensorRT engine behind the :class:`latentmuse.runtime.runners.Runner` interface.

TensorRT 10/11 name-based API only (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); torch CUDA tensors are the buffers and the engine runs
on torch's current stream, so no cuda-python is needed and results are ordered with later torch work.
A shape outside the engine's optimisation profile is a clean :class:`EngineShapeError` (the caller
falls back), never a crash.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import LatentmuseError
from .trt_build import deserialize_engine, get_logger, import_tensorrt

_TORCH_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
}


class EngineShapeError(LatentmuseError):
    """An input shape the engine was not built for."""


def torch_dtype(trt_dtype) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_DTYPES:
        raise LatentmuseError(f"TensorRT data type {name} has no torch equivalent here.")
    return _TORCH_DTYPES[name]


class TrtRunner:
    """One engine: ``runner({"latent": t}) -> {"image": t}``; outputs are fresh tensors on ``device``."""

    backend = "tensorrt"

    def __init__(self, name: str, plan: str | Path | bytes, device: str | torch.device = "cuda") -> None:
        trt = import_tensorrt()
        self.name = name
        self.device = torch.device(device)
        payload = plan if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
        with self._on_device():  # TensorRT allocates on the current CUDA device
            try:
                self.engine, self._runtime = deserialize_engine(payload, trt.Runtime(get_logger()))
            except LatentmuseError as exc:
                raise LatentmuseError(f"{name}: {exc.message}", exc.fix) from exc
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise LatentmuseError(f"{name}: TensorRT could not create an execution context (out of GPU memory?).")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.profiles = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0))
                         for n in self.input_names}

    @classmethod
    def from_manifest(cls, engines_dir: str | Path, graph: str, device: str | torch.device = "cuda",
                      gpu=None) -> TrtRunner:
        """The engine for ``graph`` in ``engines_dir``, refused (LatentmuseError, with the reason) when its
        manifest entry does not match this machine's TensorRT and GPU; the caller falls back."""
        from . import manifest as mf
        from .orchestrate import gpu_info

        trt = import_tensorrt()
        entry = mf.load(engines_dir).graphs.get(graph)
        if entry is None:
            raise LatentmuseError(f"{graph}: no engine in {engines_dir}.", "run `latentmuse build`.")
        gpu = gpu or gpu_info()
        if gpu is None:
            raise LatentmuseError(f"{graph}: no CUDA GPU for a TensorRT engine.")
        ok, reason = mf.entry_is_current(entry, entry.onnx_sha256, str(getattr(trt, "__version__", "unknown")),
                                         gpu.name, gpu.compute_capability)
        plan = Path(engines_dir) / entry.plan
        if ok and (not plan.is_file() or plan.stat().st_size != entry.plan_bytes):
            ok, reason = False, f"plan file {plan} missing or changed"
        if not ok:
            raise LatentmuseError(f"{graph}: engine refused: {reason}.", "rebuild it: `latentmuse build`.")
        return cls(graph, plan, device)

    def _on_device(self):
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _opt, hi = self.profiles[name]
        if len(shape) != len(lo) or any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
            raise EngineShapeError(f"{self.name}: input {name} has shape {shape}, outside the engine's "
                                   f"profile {lo} .. {hi}.", "use a batch inside the profile or rebuild the engine.")

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        bound: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            tensor = inputs[name].to(self.device, self.dtypes[name]).contiguous()
            shape = tuple(tensor.shape)
            self.check_shape(name, shape)
            if not self.context.set_input_shape(name, shape):
                raise EngineShapeError(f"{self.name}: TensorRT rejected shape {shape} for input {name}.")
            bound[name] = tensor
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise LatentmuseError(f"{self.name}: output {name} shape {shape} is unresolved.")
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
        for name, tensor in (*bound.items(), *outputs.items()):
            self.context.set_tensor_address(name, tensor.data_ptr())
        with self._on_device():
            stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
            if not self.context.execute_async_v3(stream):
                raise LatentmuseError(f"{self.name}: TensorRT execution failed.")
        # Inputs stay referenced until here; outputs are ordered on the current stream for later torch work.
        del bound
        return outputs

    def __repr__(self) -> str:
        return f"TrtRunner({self.name}, {self.device})"
