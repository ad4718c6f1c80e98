"""Build one TensorRT engine, of either flavour, from an ONNX path with Polygraphy's loaders.

The build is Polygraphy's loader chain::

    network = NetworkFromOnnxPath("unet.fp16.onnx", strongly_typed=True)
    config = CreateConfig(profiles=[Profile().add("x", min, opt, max)], load_timing_cache=..., ...)
    # TensorRT for RTX: CreateConfigRTX(profiles=..., compute_capabilities=[(8, 6), (8, 9)])
    plan = EngineBytesFromNetwork(network, config)()

Strongly typed networks only (TensorRT 11 has no ``BuilderFlag.FP16``; fp16 comes from an fp16-typed
ONNX), parsing by path (external data), one optimisation profile with min/opt/max per input.

The flavour (:data:`latentmuse.system.FLAVORS`) is chosen per process: Polygraphy reads
``polygraphy.config.USE_TENSORRT_RTX`` when its TensorRT backend is first imported, so the builder
sets it before importing the loaders, and a process builds one flavour only (the orchestrator starts
one builder per graph anyway). TensorRT for RTX builds ahead of time, without a GPU: it has no timing
cache (deprecated there, a no-op) and its plans cannot be deserialised without a GPU, so the smoke
load happens only when the orchestrator says a GPU that the plan targets is present.

What stays ours, and why:

* ``check_profiles``: Polygraphy does not check that a profile fits the network (rank, static dims,
  min <= opt <= max); TensorRT's own complaint comes late and is obscure.
* errors: Polygraphy raises ``PolygraphyException`` with generic texts ("Could not parse ONNX
  correctly"); they become :class:`LatentmuseError` naming the ONNX file, with the parser's or
  builder's error lines (collected from Polygraphy's logger).
* the timing cache write-back: ``EngineBytesFromNetwork(save_timing_cache=)`` rewrites the file in
  place (``open(path, "wb")``: a build killed mid-write leaves a truncated cache), leaves a ``.lock``
  file beside it, and merges the old file with ``ignore_mismatch=True``. The cache is loaded by
  ``CreateConfig(load_timing_cache=)`` (from an open file, so no ``.lock`` file) and written back here
  with :func:`latentmuse.files.atomic_write`.
* the plan write: Polygraphy's ``SaveBytes`` is not atomic either; :func:`atomic_write` is.
* the smoke load: :func:`latentmuse.runners.trt_support.deserialize_engine` (a clear error).
* what the network is: each input's name, dtype and shape, and the profile the real builder accepted
  for it (read back from TensorRT's own ``IOptimizationProfile``), go into the result and the manifest.
* TF32: Polygraphy's ``CreateConfig`` clears ``BuilderFlag.TF32`` unless ``tf32=True``; TensorRT sets
  it by default, so it is asked for where the flag exists (the engine is what TensorRT would build).

Neither TensorRT nor Polygraphy is imported at module import time: only when a build is attempted.
Polygraphy prints to stdout by default; here its messages (warnings and worse) go to stderr, so stdout
carries only the result line. Because TensorRT can crash the process on a machine without a working
GPU, the orchestrator runs this module in a subprocess:
``python -m latentmuse.engines.trt_build --onnx ... --plan ... --profiles ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

from ..errors import LatentmuseError
from ..files import atomic_write
from ..runners.trt_support import deserialize_engine, import_tensorrt, module_version
from ..system import FLAVORS, TENSORRT, TENSORRT_RTX, TrtFlavor

Shape = Sequence[int]
Profiles = Mapping[str, tuple[Shape, Shape, Shape]]


def import_polygraphy(flavor: TrtFlavor = TENSORRT) -> SimpleNamespace:
    """Polygraphy's TensorRT loaders for ``flavor`` (``CreateConfigRTX`` for RTX), its logger and its
    exception type; a clean error when missing, or when this process already loaded the other flavour."""
    try:
        import polygraphy  # noqa: F401 - first, so a missing or blocked top-level package fails here
        from polygraphy import config as polygraphy_config

        rtx = flavor is TENSORRT_RTX
        loaded = sys.modules.get("polygraphy.backend.trt")
        if loaded is not None and bool(polygraphy_config.USE_TENSORRT_RTX) != rtx:
            raise LatentmuseError(f"Polygraphy's TensorRT backend was already imported for the other flavour; "
                                  f"{flavor.label} builds run in a process of their own.")
        polygraphy_config.USE_TENSORRT_RTX = rtx  # read when the backend first imports its TensorRT module
        from polygraphy.backend import trt as loaders
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER

        create_config = loaders.CreateConfig
        if rtx:
            from polygraphy.backend.tensorrt_rtx import CreateConfigRTX as create_config
    except LatentmuseError:
        raise
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install raising anything
        raise LatentmuseError(f"polygraphy is not importable ({type(exc).__name__}: {exc}); building TensorRT "
                              "engines needs it.", f"install the '{flavor.extra}' extra of latentmuse.") from exc
    return SimpleNamespace(loaders=loaders, PolygraphyException=PolygraphyException, G_LOGGER=G_LOGGER,
                           create_config=create_config)


class _Relay(logging.Handler):
    """Polygraphy's warnings and errors to stderr; the errors also kept for our error message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.CRITICAL:
            return  # Polygraphy raises it as PolygraphyException, which we turn into a LatentmuseError
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors.append(text.removeprefix("[E] ").strip())
        print(text, file=sys.stderr)

    def details(self, exc: Exception) -> str:
        """The errors logged so far (TensorRT may log one twice), else the exception's text, on one line."""
        lines = [" ".join(e.split()) for e in dict.fromkeys(self.errors)] or [" ".join(str(exc).split())]
        return "; ".join(lines)


@contextlib.contextmanager
def quiet_polygraphy(G_LOGGER) -> Iterator[_Relay]:  # noqa: N803 - Polygraphy's name
    """Polygraphy's logger at WARNING, through Python logging to stderr, no colours; restored afterwards."""
    logger = logging.getLogger("Polygraphy")
    saved = (G_LOGGER.module_severity, G_LOGGER.colors, G_LOGGER.use_python_logging_system, logger.propagate,
             logger.level)
    relay = _Relay()
    G_LOGGER.module_severity = G_LOGGER.WARNING
    G_LOGGER.colors = False  # else it prints "'colored' module is not installed" on stdout
    G_LOGGER.use_python_logging_system = True
    logger.addHandler(relay)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield relay
    finally:
        logger.removeHandler(relay)
        G_LOGGER.module_severity, G_LOGGER.colors, G_LOGGER.use_python_logging_system = saved[:3]
        logger.propagate, logger.level = saved[3], saved[4]


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


class _Network:
    """``NetworkFromOnnxPath`` with our errors: a missing file, or parser errors naming the file."""

    def __init__(self, poly: SimpleNamespace, path: Path, relay: _Relay) -> None:
        self.poly, self.path, self.relay = poly, path, relay
        self.loader = poly.loaders.NetworkFromOnnxPath(str(path), strongly_typed=True)

    def __call__(self):
        if not self.path.is_file():
            raise LatentmuseError(f"ONNX file {self.path} does not exist.", "run the export first.")
        try:
            return self.loader()
        except self.poly.PolygraphyException as exc:
            raise LatentmuseError(f"TensorRT could not parse {self.path}: {self.relay.details(exc)}") from exc


class _Config:
    """``CreateConfig`` (``CreateConfigRTX``) for the parsed network: our profile check, then one Polygraphy
    ``Profile``.

    Static inputs get their own shape as min = opt = max (what Polygraphy would fill in, without its
    warning); profiles naming inputs the network does not have are ignored, as before. The created
    ``IBuilderConfig`` is kept (its timing cache is written back after the build), and so is what the
    network says of each input, with the profile as TensorRT's own ``IOptimizationProfile`` holds it.
    """

    def __init__(self, poly: SimpleNamespace, trt, flavor: TrtFlavor, profiles: Profiles,
                 timing_cache: Path | None, workspace_bytes: int | None,
                 compute_capabilities: Sequence[str] = ()) -> None:
        self.poly, self.trt, self.flavor, self.profiles = poly, trt, flavor, profiles
        self.timing_cache, self.workspace_bytes = timing_cache, workspace_bytes
        self.compute_capabilities = tuple(compute_capabilities)
        self.config = None
        self.inputs: dict[str, dict] = {}

    def __call__(self, builder, network):
        inputs = network_inputs(network)
        check_profiles(inputs, self.profiles)
        profile = self.poly.loaders.Profile()
        for name, shape in inputs:
            lo, opt, hi = self.profiles[name] if name in self.profiles else (shape, shape, shape)
            profile.add(name, *(tuple(int(d) for d in s) for s in (lo, opt, hi)))
        self.inputs = _read_back(network, profile.to_trt(builder, network))
        trt = self.trt
        options = {
            "profiles": [profile],
            "memory_pool_limits": ({trt.MemoryPoolType.WORKSPACE: int(self.workspace_bytes)}
                                   if self.workspace_bytes else None),
        }
        if self.flavor is TENSORRT_RTX:  # always strongly typed; no TF32 flag, no timing cache
            options["compute_capabilities"] = [tuple(int(p) for p in c.split(".")) for c in self.compute_capabilities]
        else:  # TensorRT's default; Polygraphy's is off
            options["tf32"] = hasattr(getattr(trt, "BuilderFlag", None), "TF32")
        with contextlib.ExitStack() as stack:
            if self.timing_cache is not None and self.timing_cache.is_file():  # None for RTX (build_plan)
                options["load_timing_cache"] = stack.enter_context(open(self.timing_cache, "rb"))
            self.config = self.poly.create_config(**options)(builder, network)
        return self.config


def _read_back(network, trt_profile) -> dict[str, dict]:
    """Each network input's dtype and shape, and the min/opt/max TensorRT's profile object holds for it."""
    out = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = trt_profile.get_shape(tensor.name)
        out[tensor.name] = {"dtype": getattr(tensor.dtype, "name", str(tensor.dtype)),
                            "shape": [int(d) for d in tensor.shape],
                            "profile": [[int(d) for d in s] for s in shapes]}
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started, in bytes.

    Linux's ``VmHWM`` (the high-water mark of this process image): ``getrusage``'s ``ru_maxrss`` would
    carry over the parent's resident set from before ``exec`` (a builder started by a 10 GB test process
    would report 10 GB). Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS) is the best there is."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def build_plan(onnx: str | Path, plan: str | Path, profiles: Profiles, timing_cache: str | Path | None = None,
               workspace_bytes: int | None = None, flavor: TrtFlavor = TENSORRT,
               compute_capabilities: Sequence[str] = (), smoke_load: bool = True) -> dict:
    """Build, save and (``smoke_load``) deserialise one engine; return what the manifest needs.

    ``timing_cache`` (standard TensorRT only): a file loaded when present and written back after the
    build (reuse it only on the same GPU model and TensorRT version: the orchestrator names it so).
    ``compute_capabilities`` (TensorRT for RTX only): the targets, e.g. ``["8.6", "8.9"]``.
    """
    trt = import_tensorrt(flavor)
    poly = import_polygraphy(flavor)
    onnx, plan = Path(onnx), Path(plan)
    cache = Path(timing_cache) if timing_cache and flavor is TENSORRT else None
    start = time.perf_counter()
    with quiet_polygraphy(poly.G_LOGGER) as relay:
        config = _Config(poly, trt, flavor, profiles, cache, workspace_bytes, compute_capabilities)
        build = poly.loaders.EngineBytesFromNetwork(_Network(poly, onnx, relay), config=config)
        try:
            payload = bytes(memoryview(build()))
        except poly.PolygraphyException as exc:
            details = relay.details(exc)  # one line: the orchestrator reports the last line of stderr
            if config.config is None:  # CreateConfig failed (say, an option this TensorRT lacks)
                raise LatentmuseError(f"Polygraphy could not configure the build of {onnx}: {details}") from exc
            raise LatentmuseError(f"{flavor.label} failed to build the engine from {onnx}: {details}") from exc
    if cache is not None:
        atomic_write(cache, bytes(memoryview(config.config.get_timing_cache().serialize())))
    plan.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(plan, payload)
    if smoke_load:
        deserialize_engine(payload, flavor=flavor)  # a plan that does not load is no engine
    return {"plan": str(plan), "plan_bytes": len(payload), "build_seconds": round(time.perf_counter() - start, 3),
            "tensorrt_version": module_version(trt), "inputs": config.inputs, "peak_rss_bytes": peak_rss_bytes()}


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry point. Prints one JSON line (the result) on stdout; errors go to stderr, exit 1."""
    parser = argparse.ArgumentParser(prog="python -m latentmuse.engines.trt_build")
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--profiles", required=True, help='JSON: {"input": [min, opt, max], ...}')
    parser.add_argument("--flavor", choices=sorted(FLAVORS), default=TENSORRT.name)
    parser.add_argument("--compute-capabilities", default="", help="TensorRT for RTX targets, e.g. 8.6,8.9")
    parser.add_argument("--no-smoke-load", action="store_true", help="do not deserialise the plan (no GPU here)")
    parser.add_argument("--timing-cache")
    parser.add_argument("--workspace-bytes", type=int)
    args = parser.parse_args(argv)
    targets = [c for c in args.compute_capabilities.split(",") if c]
    try:
        result = build_plan(args.onnx, args.plan, json.loads(args.profiles), args.timing_cache, args.workspace_bytes,
                            FLAVORS[args.flavor], targets, smoke_load=not args.no_smoke_load)
    except LatentmuseError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
