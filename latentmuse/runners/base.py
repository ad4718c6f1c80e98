"""One interface for running a graph, whatever executes it: PyTorch, ONNX Runtime or TensorRT.

A runner maps a dict of named input tensors to a dict of named output tensors (Polygraphy's
``BaseRunner.infer`` shape, with torch tensors instead of numpy arrays). Its lifecycle is light:
``open()`` loads what it needs (a module, a session, an engine) and is also done by the first call;
``close()`` frees it; ``with runner:`` does both. Every call's inputs are checked against the graph's
:class:`~latentmuse.graphs.spec.GraphSpec` (names, rank, static dimensions), so a wrong tensor is a
:class:`RunnerError` naming the graph, never a crash deep inside a backend.

:class:`RunnerError` is the one error type a runner raises for a call it cannot serve (a shape outside
an engine profile, an engine that fails or returns non-finite values, a provider that did not load);
the generator chain turns it into the window's fallback (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from ..errors import LatentmuseError
from ..graphs.spec import GraphSpec


class RunnerError(LatentmuseError):
    """A runner could not serve a call (or could not open); the message names the graph and the cause."""


@runtime_checkable
class Runner(Protocol):
    name: str
    backend: str
    device: torch.device
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def open(self) -> Runner: ...
    def close(self) -> None: ...
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class BaseRunner:
    """Lifecycle and input checks shared by every backend; subclasses implement ``_open``/``_run``/``_close``.

    ``spec`` may be None for ad-hoc graphs (tests' stand-ins): then only input names are checked.
    """

    backend = "base"

    def __init__(self, name: str, spec: GraphSpec | None, device: str | torch.device,
                 input_names: tuple[str, ...] | None = None, output_names: tuple[str, ...] | None = None) -> None:
        self.name = name
        self.spec = spec
        self.device = torch.device(device)
        self.input_names = tuple(input_names if input_names is not None else (t.name for t in spec.inputs))
        self.output_names = tuple(output_names if output_names is not None else (t.name for t in spec.outputs))
        self.is_open = False

    # lifecycle -------------------------------------------------------------------------------------
    def open(self) -> BaseRunner:
        if not self.is_open:
            try:
                self._open()
            except RunnerError:
                raise
            except LatentmuseError as exc:
                raise RunnerError(exc.message if exc.message.startswith(self.name) else f"{self.name}: {exc.message}",
                                  exc.fix) from exc
            self.is_open = True
        return self

    def close(self) -> None:
        if self.is_open:
            self._close()
            self.is_open = False

    def __enter__(self) -> BaseRunner:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # calls -----------------------------------------------------------------------------------------
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.open()
        self.check_inputs(inputs)
        return self._run(inputs)

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise RunnerError(f"{self.name}: missing inputs {missing} (it takes {list(self.input_names)}).")
        if self.spec is None:
            return
        for t in self.spec.inputs:
            shape = tuple(inputs[t.name].shape)
            if len(shape) != len(t.shape) or any(not isinstance(d, str) and d != s for d, s in zip(t.shape, shape)):
                raise RunnerError(f"{self.name}: input {t.name} has shape {shape}, the graph takes {t.shape}.")

    def max_batch(self, input_name: str) -> int | None:
        """The largest first dimension this runner serves for ``input_name`` (None: no limit)."""
        return None

    # backend hooks ---------------------------------------------------------------------------------
    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.device})"


def output_sizes(spec: GraphSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The dynamic dimension sizes of a call, read off its inputs (``N`` = 6 when ``image`` is (6, 3, ...))."""
    sizes: dict[str, int] = {}
    for t in spec.inputs:
        for dim, size in zip(t.shape, inputs[t.name].shape):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    return sizes


def require_finite_outputs(name: str, outputs: Mapping[str, torch.Tensor]) -> None:
    """An engine's non-finite output is a runner failure (fp16 overflow, a broken plan): the caller falls back."""
    for key, value in outputs.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RunnerError(f"{name}: output {key} has non-finite values.",
                              "rebuild the engine, or use --backend torch for this graph.")


def run_chunked(runner: Runner, inputs: dict[str, torch.Tensor], output_name: str, chunk: int,
                device: torch.device) -> torch.Tensor:
    """``runner`` over ``inputs`` in batches of at most ``chunk`` along dim 0, ``output_name`` as float32 on ``device``.

    Keeps a frame-batched graph inside its engine profile (``runner.max_batch``, a TensorRT profile's
    maximum: the VAE encoder sees masked + reference frames, twice the frame batch) and its activations
    bounded.
    """
    first = next(iter(inputs))
    limit = runner.max_batch(first) if hasattr(runner, "max_batch") else None
    chunk = min(chunk, limit) if limit else chunk
    total = inputs[first].shape[0]
    parts = [runner({k: v[start : start + chunk] for k, v in inputs.items()})[output_name].to(device, torch.float32)
             for start in range(0, total, chunk)]
    return torch.cat(parts) if len(parts) != 1 else parts[0]
