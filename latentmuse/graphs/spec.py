"""The declaration of one exportable graph (Optimum-style): written once, read by every tool.

Export, validation, TensorRT optimisation profiles and every runner's input checks read the same
:class:`GraphSpec`, so a shape or a dynamic range is written down exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DynamicDim:
    """A named dynamic dimension with its TensorRT profile range (min <= opt <= max)."""

    name: str
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class TensorSpec:
    """A named graph input or output; a ``str`` entry in ``shape`` names a :class:`DynamicDim`."""

    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype = torch.float32

    def concrete(self, sizes: Mapping[str, int]) -> Shape:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    """One graph: which weights, which wrapper, named I/O, dynamic dims, tolerances, precision policy."""

    name: str
    model_key: str  # key in latentmuse.models.layouts (which weights feed this graph)
    make_wrapper: Callable[[nn.Module], nn.Module]  # loaded model -> plain-tensor-I/O module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic: tuple[DynamicDim, ...] = ()
    atol: float = 1e-5  # fp32 ONNX Runtime vs PyTorch
    rtol: float = 1e-5
    min_cosine_fp16: float = 0.999  # fp16 graph vs PyTorch fp32
    config_overrides: Mapping[str, object] = field(default_factory=dict)  # e.g. resolution variants

    def sizes(self, which: str = "opt") -> dict[str, int]:
        return {d.name: getattr(d, which) for d in self.dynamic}

    def random_feeds(self, sizes: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Fresh seeded inputs in input order: float tensors N(0, 1), integer tensors (timesteps) in [0, 1000)."""
        g = torch.Generator().manual_seed(seed)
        feeds = {}
        for t in self.inputs:
            shape = t.concrete(sizes)
            if t.dtype.is_floating_point:
                feeds[t.name] = torch.randn(shape, generator=g, dtype=torch.float32).to(t.dtype)
            else:
                feeds[t.name] = torch.randint(0, 1000, shape, generator=g, dtype=t.dtype)
        return feeds

    def profiles(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        """TensorRT optimisation profile per input: (min, opt, max) shapes."""
        return {
            t.name: (t.concrete(self.sizes("min")), t.concrete(self.sizes("opt")), t.concrete(self.sizes("max")))
            for t in self.inputs
        }
