"""Build one TensorRT engine from an ONNX path: small composable loaders in Polygraphy's style.

Each loader is a callable; wrapping one in another composes the build::

    network = network_from_onnx_path("unet.fp16.onnx")
    plan = engine_bytes_from_network(network, profiles, timing_cache="engines/timing.cache")
    save_bytes(plan, "engines/unet.plan")()

TensorRT is imported lazily (when a loader is called), and only the TensorRT 10/11 name-based API is
used: strongly typed networks (TensorRT 11 has no ``BuilderFlag.FP16``; fp16 comes from an fp16-typed
ONNX), parsing by path (external data), one optimisation profile with min/opt/max per input.
Because TensorRT can crash the process on a machine without a working GPU, the orchestrator runs this
module in a subprocess: ``python -m latentmuse.engines.trt_build --onnx ... --plan ... --profiles ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import LatentmuseError
from ..files import atomic_write
from ..runners.trt_support import deserialize_engine, get_logger, import_tensorrt

Shape = Sequence[int]
Profiles = Mapping[str, tuple[Shape, Shape, Shape]]


def network_flags(trt) -> int:
    """STRONGLY_TYPED always; EXPLICIT_BATCH too where it still exists (TensorRT 10; gone in 11)."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:
        flags |= 1 << int(explicit)
    return flags


class network_from_onnx_path:  # noqa: N801 - a loader reads like a function (Polygraphy's convention)
    """Loader: ``() -> (builder, network, parser)``; the parser must outlive the network (it owns weights)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self):
        trt = import_tensorrt()
        if not self.path.is_file():
            raise LatentmuseError(f"ONNX file {self.path} does not exist.", "run the export first.")
        logger = get_logger()
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.path)):
            errors = [_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
            raise LatentmuseError(f"TensorRT could not parse {self.path}: {'; '.join(errors) or 'no details'}.")
        return builder, network, parser


def _error_text(error) -> str:
    desc = getattr(error, "desc", None)
    return str(desc() if callable(desc) else error)


def network_inputs(network) -> list[tuple[str, tuple[int, ...]]]:
    return [(t.name, tuple(t.shape)) for t in (network.get_input(i) for i in range(network.num_inputs))]


def check_profiles(inputs: Sequence[tuple[str, tuple[int, ...]]], profiles: Profiles) -> None:
    """Every dynamic input has a (min, opt, max) whose rank and static dims agree with the network."""
    for name, shape in inputs:
        if name not in profiles:
            if any(d < 0 for d in shape):
                raise LatentmuseError(f"input {name} has dynamic shape {shape} but no optimisation profile.")
            continue
        lo, opt, hi = (tuple(int(d) for d in s) for s in profiles[name])
        for label, s in (("min", lo), ("opt", opt), ("max", hi)):
            if len(s) != len(shape) or any(d >= 0 and d != v for d, v in zip(shape, s)):
                raise LatentmuseError(f"profile {label} shape {s} of input {name} does not fit the network's {shape}.")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise LatentmuseError(f"profile of input {name} is not min <= opt <= max: {lo}, {opt}, {hi}.")


class engine_bytes_from_network:  # noqa: N801
    """Loader: ``() -> bytes`` of a serialized engine (plan) with one optimisation profile.

    ``timing_cache``: a file loaded when present and written back after the build (reuse it only on
    the same GPU model and TensorRT version: the orchestrator names it so).
    """

    def __init__(self, network_loader: Callable, profiles: Profiles, timing_cache: str | Path | None = None,
                 workspace_bytes: int | None = None) -> None:
        self.network_loader = network_loader
        self.profiles = profiles
        self.timing_cache = Path(timing_cache) if timing_cache else None
        self.workspace_bytes = workspace_bytes

    def __call__(self) -> bytes:
        trt = import_tensorrt()
        builder, network, _parser = self.network_loader()
        check_profiles(network_inputs(network), self.profiles)
        config = builder.create_builder_config()
        if self.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_bytes))
        profile = builder.create_optimization_profile()
        for name, _shape in network_inputs(network):
            if name in self.profiles:
                lo, opt, hi = (tuple(int(d) for d in s) for s in self.profiles[name])
                profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        if self.timing_cache is not None:
            previous = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
            cache = config.create_timing_cache(previous)
            config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise LatentmuseError("TensorRT failed to build the engine (build_serialized_network returned None).")
        if self.timing_cache is not None:
            atomic_write(self.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
        return bytes(memoryview(plan))


class save_bytes:  # noqa: N801
    """Loader: ``() -> Path``; writes what ``obj`` (bytes or a loader of bytes) gives, atomically."""

    def __init__(self, obj: bytes | Callable[[], bytes], path: str | Path) -> None:
        self.obj = obj
        self.path = Path(path)

    def __call__(self) -> Path:
        payload = self.obj() if callable(self.obj) else self.obj
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, bytes(payload))
        return self.path


def build_plan(onnx: str | Path, plan: str | Path, profiles: Profiles, timing_cache: str | Path | None = None,
               workspace_bytes: int | None = None) -> dict:
    """Build, save and smoke-load one engine; return what the manifest needs."""
    trt = import_tensorrt()
    start = time.perf_counter()
    loader = engine_bytes_from_network(network_from_onnx_path(onnx), profiles, timing_cache, workspace_bytes)
    payload = loader()
    path = save_bytes(payload, plan)()
    deserialize_engine(payload)  # smoke load: a plan that does not load is no engine
    return {"plan": str(path), "plan_bytes": len(payload), "build_seconds": round(time.perf_counter() - start, 3),
            "tensorrt_version": str(getattr(trt, "__version__", "unknown"))}


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry point. Prints one JSON line (the result) on stdout; errors go to stderr, exit 1."""
    parser = argparse.ArgumentParser(prog="python -m latentmuse.engines.trt_build")
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--profiles", required=True, help='JSON: {"input": [min, opt, max], ...}')
    parser.add_argument("--timing-cache")
    parser.add_argument("--workspace-bytes", type=int)
    args = parser.parse_args(argv)
    try:
        result = build_plan(args.onnx, args.plan, json.loads(args.profiles), args.timing_cache, args.workspace_bytes)
    except LatentmuseError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
