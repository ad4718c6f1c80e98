"""One interface for running a graph, whatever executes it (PyTorch now; ONNX Runtime, TensorRT later).

A runner maps a dict of named input tensors to a dict of named output tensors. The pipeline only
ever holds runners, so swapping PyTorch for an engine changes no stage code.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Runner(Protocol):
    name: str
    device: torch.device

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class TorchRunner:
    """Runs a graph module (see :mod:`.graphs`) eagerly under ``inference_mode``."""

    backend = "torch"

    def __init__(self, name: str, graph: nn.Module, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.graph = graph.to(self.device, dtype).eval().requires_grad_(False)
        self.input_names: tuple[str, ...] = tuple(graph.input_names)
        self.output_names: tuple[str, ...] = tuple(graph.output_names)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        args = [inputs[n].to(self.device, self.dtype if inputs[n].is_floating_point() else None)
                for n in self.input_names]
        with torch.inference_mode():
            out = self.graph(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return f"TorchRunner({self.name}, {self.device}, {self.dtype})"
