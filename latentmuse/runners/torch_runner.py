"""The PyTorch runner: the reference every other backend is compared with.

It runs a graph wrapper (:mod:`latentmuse.graphs.wrappers`) eagerly under ``inference_mode`` on its own
device and dtype: fp32 on the CPU, fp16 on CUDA by default (``precision``), float64 in the tests
(where a tensor that bypassed its runner fails on dtype exactly as it would on device). The module can
be given ready or as a zero-argument loader, built on ``open()``: a run that takes a graph from an
engine never loads its PyTorch weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..choices import PRECISIONS
from ..errors import LatentmuseError
from ..graphs.spec import GraphSpec
from .base import BaseRunner, RunnerError


def torch_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA (what the engines run), fp32 on the CPU (fp16 there is slow and inexact)."""
    if precision not in PRECISIONS:
        raise LatentmuseError(f"--precision {precision} is not known.", f"use one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" or (precision == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise LatentmuseError("--precision fp16 needs a CUDA device (fp16 on the CPU is slow and inexact).",
                                  "use --precision fp32 or auto.")
        return torch.float16
    return torch.float32


class TorchRunner(BaseRunner):
    """``graph`` is a graph wrapper, or a loader returning one (called on ``open``)."""

    backend = "torch"

    def __init__(self, name: str, graph: nn.Module | Callable[[], nn.Module], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, spec: GraphSpec | None = None) -> None:
        self._loader = graph if not isinstance(graph, nn.Module) else None
        module = graph if isinstance(graph, nn.Module) else None
        super().__init__(name, spec, device,
                         input_names=None if spec is not None else tuple(module.input_names),
                         output_names=None if spec is not None else tuple(module.output_names))
        self.dtype = dtype
        self.graph: nn.Module | None = None
        if module is not None:
            self._prepare(module)
            self.is_open = True

    def _prepare(self, module: nn.Module) -> None:
        self.graph = module.to(self.device, self.dtype).eval().requires_grad_(False)

    def _open(self) -> None:
        if self.graph is None:
            if self._loader is None:
                raise RunnerError(f"{self.name}: closed, and it has no loader to reopen from.")
            self._prepare(self._loader())

    def _close(self) -> None:
        if self._loader is not None:  # a module given ready stays (closing would lose it)
            self.graph = None

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [inputs[n].to(self.device, self.dtype if inputs[n].is_floating_point() else None)
                for n in self.input_names]
        with torch.inference_mode():
            out = self.graph(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return f"TorchRunner({self.name}, {self.device}, {self.dtype})"
