"""The ONNX Runtime runner: the embedded default for exported graphs (CPU), and CUDA where it really runs.

On the CPU, inputs go in as numpy views of the torch tensors and outputs come back as torch tensors
sharing ONNX Runtime's buffers (no copy either way). On CUDA the session's I/O is bound to torch CUDA
tensors (``IOBinding``): inputs are read where they lie and outputs are written into tensors torch
allocated, so nothing crosses the PCIe bus. A GPU build of ONNX Runtime silently runs on the CPU when
its CUDA libraries are missing; :meth:`OrtRunner.open` checks which provider the session really got and
refuses (with the reason) rather than run a "CUDA" graph on the CPU.

``optimization="all"`` (the runtime's) applies ONNX Runtime's graph fusions; export validation uses
``"none"`` with the memory arena off (see :mod:`latentmuse.export.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..graphs.spec import GraphSpec
from .base import BaseRunner, RunnerError, output_sizes

_NUMPY_OF = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8}
_TORCH_OF = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
             "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(bool)": torch.bool,
             "tensor(uint8)": torch.uint8}
CUDA_PROVIDER = "CUDAExecutionProvider"


class OrtRunner(BaseRunner):
    """One ONNX file as a runner. ``device`` cpu uses the CPU provider, cuda[:k] the CUDA provider on GPU k."""

    backend = "ort"

    def __init__(self, name: str, path: str | Path, device: str | torch.device = "cpu", spec: GraphSpec | None = None,
                 *, optimization: str = "all", arena: bool = True, threads: int | None = None) -> None:
        super().__init__(name, spec, device, input_names=() if spec is None else None,
                         output_names=() if spec is None else None)
        self.path = Path(path)
        self.optimization, self.arena, self.threads = optimization, arena, threads
        self.session = None

    def _open(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise RunnerError(f"{self.name}: ONNX file {self.path} does not exist.", "run `latentmuse export`.")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimization == "all"
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.enable_cpu_mem_arena = self.arena
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.device.type == "cuda":
            providers = [(CUDA_PROVIDER, {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - a file ORT cannot load is this graph's failure
            raise RunnerError(f"{self.name}: ONNX Runtime could not load {self.path}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}.",
                              "re-export it: `latentmuse export`.") from exc
        if self.device.type == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
            raise RunnerError(f"{self.name}: ONNX Runtime's CUDA provider did not load (this onnxruntime has "
                              f"{ort.get_available_providers()}; a GPU build without its CUDA/cuDNN libraries "
                              "silently runs on the CPU).", "install the 'gpu' extra with matching CUDA libraries.")
        inputs = tuple(i.name for i in session.get_inputs())
        outputs = tuple(o.name for o in session.get_outputs())
        if self.spec is not None:
            ranks = {i.name: len(i.shape) for i in session.get_inputs()}
            wrong = set(inputs) != set(self.input_names) or set(outputs) != set(self.output_names) or any(
                ranks[t.name] != len(t.shape) for t in self.spec.inputs)
            if wrong:
                raise RunnerError(f"{self.name}: {self.path} takes {inputs} -> {outputs}, not the graph's "
                                  f"{self.input_names} -> {self.output_names}.", "re-export it: `latentmuse export`.")
        self.input_names, self.output_names = inputs, outputs
        self.input_types = {i.name: i.type for i in session.get_inputs()}
        self.output_types = {o.name: o.type for o in session.get_outputs()}
        self.session = session

    def _close(self) -> None:
        self.session = None

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        try:
            if self.device.type == "cuda":
                return self._run_bound(inputs)
            feeds = {n: inputs[n].detach().to("cpu", _TORCH_OF[self.input_types[n]]).contiguous().numpy()
                     for n in self.input_names}
            results = self.session.run(list(self.output_names), feeds)
        except RunnerError:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for bad shapes, OOM, ...
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunnerError(f"{self.name}: ONNX Runtime failed: {text[:300]}") from exc
        return {n: torch.from_numpy(r) for n, r in zip(self.output_names, results)}

    def _run_bound(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        device_id = self.device.index or 0
        kept = []
        for name in self.input_names:
            tensor = inputs[name].detach().to(self.device, _TORCH_OF[self.input_types[name]]).contiguous()
            kept.append(tensor)
            binding.bind_input(name, "cuda", device_id, _NUMPY_OF[self.input_types[name]], tuple(tensor.shape),
                               tensor.data_ptr())
        outputs = {}
        if self.spec is not None:
            sizes = output_sizes(self.spec, inputs)
            for t in self.spec.outputs:
                out = torch.empty(t.concrete(sizes), dtype=_TORCH_OF[self.output_types[t.name]], device=self.device)
                binding.bind_output(t.name, "cuda", device_id, _NUMPY_OF[self.output_types[t.name]],
                                    tuple(out.shape), out.data_ptr())
                outputs[t.name] = out
        else:
            for name in self.output_names:
                binding.bind_output(name, "cuda", device_id)
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        if self.spec is None:
            outputs = {n: torch.from_numpy(v.numpy()).to(self.device)
                       for n, v in zip(self.output_names, binding.get_outputs())}
        del kept
        return outputs
