"""A CPU test double for the parts of TensorRT 10/11 latentmuse uses (name-based API only).

The "plan" is a small JSON naming the ONNX file; an engine's execution reads its inputs from the raw
addresses given to ``set_tensor_address`` (CPU torch tensors here), runs the ONNX graph with ONNX
Runtime, and writes the outputs to their addresses, as a real engine writes device memory.

It also has what Polygraphy's build loaders (``NetworkFromOnnxPath``, ``CreateConfig``,
``EngineBytesFromNetwork``) touch: ``ILogger``, ``init_libnvinfer_plugins``, ``BuilderFlag`` (TF32 only, set
by default as in TensorRT; plans record the flags), ``DeviceType`` and the config's DLA fields (read when
Polygraphy prints the config), ``is_shape_tensor``, and a network that iterates over its (no) layers.
Optional features Polygraphy probes under ``except AttributeError`` (ProfilingVerbosity, TacticSource,
PreviewFeature, QuantizationFlag, calibrators, memory pool read-back) are left out on purpose.

The same source is also the TensorRT for RTX double (``tests/fake_tensorrt/tensorrt_rtx`` runs it under
the name ``tensorrt_rtx``): its plans record their flavour and each runtime refuses the other's, as the
real libraries do; it adds the compute-capability targets and the JIT runtime cache (a JSON of the
"kernels" compiled so far, one per input shapes; ``compiles`` counts compilations).

Environment knobs (tests only):
  FAKE_TENSORRT_VERSION       the version it reports (default 11.0.0.fake)
  FAKE_TENSORRT_RTX_VERSION   the RTX double's version (default 1.7.0.fake)
  FAKE_TENSORRT_CRASH         builder calls os.abort(): "1" always, else when the ONNX file name contains it
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
from pathlib import Path

import numpy as np

FLAVOR = "tensorrt-rtx" if __name__ == "tensorrt_rtx" else "tensorrt"
__version__ = (os.environ.get("FAKE_TENSORRT_RTX_VERSION", "1.7.0.fake") if FLAVOR == "tensorrt-rtx"
               else os.environ.get("FAKE_TENSORRT_VERSION", "11.0.0.fake"))
_PLAN_MAGIC = "fake-tensorrt-plan"
#: Compilations of "kernels" by the RTX double's execution contexts in this process (tests read it).
compiles: list[str] = []


class ILogger:
    """Base of loggers (Polygraphy subclasses it)."""

    def __init__(self) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity
        self.messages: list[str] = []

    def log(self, severity: int, msg: str) -> None:
        self.messages.append(msg)


def init_libnvinfer_plugins(logger, namespace: str) -> bool:
    return True  # no plugins in the fake


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    TF32 = 6


class DeviceType(enum.Enum):
    GPU = 0
    DLA = 1


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 16: DataType.BF16, 7: DataType.INT64}
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
          DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype
        self.is_shape_tensor = False


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.strongly_typed = bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        self.onnx_path: str | None = None
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i: int) -> ITensor:
        return self._inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self._outputs[i]

    def __iter__(self):
        return iter(())  # the fake keeps the ONNX file, not layers


class ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network = network
        self._errors: list[ParserError] = []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, i: int) -> ParserError:
        return self._errors[i]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path)  # external data resolved relative to the file, as TensorRT does
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(f"cannot read {path}: {exc}"))
            return False
        initializers = {t.name for t in model.graph.initializer}

        def tensor(value) -> ITensor:
            t = value.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            return ITensor(value.name, shape, _FROM_ONNX[t.elem_type])

        self.network._inputs = [tensor(v) for v in model.graph.input if v.name not in initializers]
        self.network._outputs = [tensor(v) for v in model.graph.output]
        self.network.onnx_path = str(Path(path).resolve())
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
        self.shapes[name] = [list(min), list(opt), list(max)]

    def get_shape(self, name: str):
        return self.shapes.get(name)


class IHostMemory(bytes):
    nbytes = property(len)


class ITimingCache:
    def __init__(self, payload: bytes) -> None:
        self.data = json.loads(payload) if payload else {"builds": 0}

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps(self.data).encode())


class ComputeCapability(enum.IntEnum):
    NONE = 0
    CURRENT = 1
    SM75 = 75
    SM80 = 80
    SM86 = 86
    SM89 = 89
    SM120 = 120
    SM121 = 121


class IBuilderConfig:
    def __init__(self) -> None:
        self.compute_capabilities: list[ComputeCapability] = []
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.pool_limits: dict = {}
        self.flags = {BuilderFlag.TF32}  # TensorRT's default
        self.DLA_core = -1
        self.default_device_type = DeviceType.GPU

    num_optimization_profiles = property(lambda self: len(self.profiles))

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_compute_capabilities(self) -> int:
        return len(self.compute_capabilities)

    @num_compute_capabilities.setter
    def num_compute_capabilities(self, n: int) -> None:
        self.compute_capabilities = [ComputeCapability.NONE] * n

    def set_compute_capability(self, capability: ComputeCapability, index: int) -> bool:
        self.compute_capabilities[index] = capability
        return True

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pool_limits[pool] = size

    def create_timing_cache(self, payload: bytes) -> ITimingCache:
        return ITimingCache(bytes(payload))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        crash = os.environ.get("FAKE_TENSORRT_CRASH")
        if crash and (crash == "1" or crash in Path(network.onnx_path or "").name):
            os.abort()
        profile = config.profiles[0].shapes if config.profiles else {}
        for t in network._inputs:
            if any(d < 0 for d in t.shape) and t.name not in profile:
                self.logger.log(Logger.ERROR, f"no profile for dynamic input {t.name}")
                return None
        if config.timing_cache is not None:
            config.timing_cache.data["builds"] = config.timing_cache.data.get("builds", 0) + 1
        plan = {
            "magic": _PLAN_MAGIC, "flavor": FLAVOR, "version": __version__, "onnx": network.onnx_path,
            "compute_capabilities": [c.name for c in config.compute_capabilities],
            "strongly_typed": network.strongly_typed, "flags": sorted(f.name for f in config.flags),
            "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network._inputs],
            "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network._outputs],
            "profile": {t.name: profile.get(t.name, [list(t.shape)] * 3) for t in network._inputs},
        }
        return IHostMemory(json.dumps(plan).encode())


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, payload) -> ICudaEngine | None:
        try:
            plan = json.loads(bytes(payload))
        except ValueError:
            self.logger.log(Logger.ERROR, "not a plan")
            return None
        if not isinstance(plan, dict) or plan.get("magic") != _PLAN_MAGIC or plan.get("flavor") != FLAVOR:
            self.logger.log(Logger.ERROR, "not a plan of this TensorRT flavour")
            return None
        if plan.get("version") != __version__:
            self.logger.log(Logger.ERROR, "plan from another TensorRT version")
            return None
        return ICudaEngine(plan)


class ICudaEngine:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self._io = [(n, tuple(s), DataType[d], TensorIOMode.INPUT) for n, s, d in plan["inputs"]]
        self._io += [(n, tuple(s), DataType[d], TensorIOMode.OUTPUT) for n, s, d in plan["outputs"]]
        self._by_name = {entry[0]: entry for entry in self._io}
        self.num_optimization_profiles = 1

    num_io_tensors = property(lambda self: len(self._io))

    def get_tensor_name(self, i: int) -> str:
        return self._io[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._by_name[name][3] if name in self._by_name else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._by_name[name][2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._by_name[name][1]

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [tuple(s) for s in self.plan["profile"][name]]

    def create_execution_context(self, runtime_config=None) -> IExecutionContext:
        if runtime_config is not None and FLAVOR != "tensorrt-rtx":
            raise TypeError("create_execution_context() takes a runtime config in TensorRT for RTX only")
        return IExecutionContext(self, runtime_config)

    def create_runtime_config(self) -> IRuntimeConfig:
        if FLAVOR != "tensorrt-rtx":
            raise AttributeError("create_runtime_config")
        return IRuntimeConfig()


_CACHE_MAGIC = "fake-runtime-cache"


class IRuntimeCache:
    """The kernels compiled so far, by input shapes; valid only for this flavour's version."""

    def __init__(self) -> None:
        self.kernels: list[str] = []

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps({"magic": _CACHE_MAGIC, "version": __version__,
                                       "kernels": self.kernels}).encode())

    def deserialize(self, blob) -> bool:
        try:
            data = json.loads(bytes(blob))
        except ValueError:
            return False
        if not isinstance(data, dict) or data.get("magic") != _CACHE_MAGIC or data.get("version") != __version__:
            return False
        self.kernels = list(data["kernels"])
        return True


class IRuntimeConfig:
    def __init__(self) -> None:
        self.cache: IRuntimeCache | None = None

    def create_runtime_cache(self) -> IRuntimeCache:
        return IRuntimeCache()

    def set_runtime_cache(self, cache: IRuntimeCache) -> bool:
        self.cache = cache
        return True

    def get_runtime_cache(self) -> IRuntimeCache | None:
        return self.cache


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, runtime_config: IRuntimeConfig | None = None) -> None:
        import onnxruntime as ort

        self.engine = engine
        self.runtime_config = runtime_config
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(engine.plan["onnx"], options, providers=["CPUExecutionProvider"])
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        lo, _opt, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or any(not (a <= s <= b) for a, s, b in zip(lo, shape, hi)):
            return False  # TensorRT logs an error and returns False
        self.shapes[name] = shape
        return True

    def _inputs_set(self) -> bool:
        return all(n in self.shapes for n, _s, _d, m in self.engine._io if m == TensorIOMode.INPUT)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        if not self._inputs_set():
            return self.engine.get_tensor_shape(name)
        key = tuple(sorted(self.shapes.items()))
        if key not in self._output_shapes:  # shape inference by running zeros (tiny test graphs only)
            feeds = {n: np.zeros(self.shapes[n], _NUMPY[d]) for n, _s, d, m in self.engine._io
                     if m == TensorIOMode.INPUT}
            names = [o.name for o in self.session.get_outputs()]
            self._output_shapes[key] = dict(zip(names, (tuple(a.shape) for a in self.session.run(names, feeds))))
        return self._output_shapes[key][name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def infer_shapes(self) -> list[str]:
        return [n for n, _s, _d, m in self.engine._io if m == TensorIOMode.INPUT and n not in self.shapes]

    def execute_async_v3(self, stream_handle: int) -> bool:
        io = self.engine._io
        if not self._inputs_set() or any(n not in self.addresses for n, *_ in io):
            return False
        if FLAVOR == "tensorrt-rtx":  # kernels are compiled just in time, once per shape unless cached
            cache = self.runtime_config.cache if self.runtime_config is not None else None
            kernel = f"{Path(self.engine.plan['onnx']).name}:{sorted(self.shapes.items())}"
            if cache is None or kernel not in cache.kernels:
                compiles.append(kernel)
                if cache is not None:
                    cache.kernels.append(kernel)
        feeds = {n: _view(self.addresses[n], self.shapes[n], d).copy() for n, _s, d, m in io if m == TensorIOMode.INPUT}
        names = [n for n, _s, _d, m in io if m == TensorIOMode.OUTPUT]
        for name, value, (_n, _s, dtype, _m) in zip(names, self.session.run(names, feeds),
                                                    (self.engine._by_name[n] for n in names)):
            target = _view(self.addresses[name], value.shape, dtype)
            target[...] = value.astype(_NUMPY[dtype])
        return True


def _view(address: int, shape, dtype: DataType) -> np.ndarray:
    np_dtype = np.dtype(_NUMPY[dtype])
    count = int(np.prod(shape, dtype=np.int64))
    buffer = (ctypes.c_char * (count * np_dtype.itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=np_dtype, count=count).reshape(shape)
