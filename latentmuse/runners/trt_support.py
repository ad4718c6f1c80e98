"""TensorRT loading shared by the builder (:mod:`latentmuse.engines.trt_build`) and the runner.

``tensorrt`` is imported lazily, when first needed, so the package works without it; a broken or stub
install is a :class:`~latentmuse.errors.LatentmuseError` saying so.
"""

from __future__ import annotations

from ..errors import LatentmuseError


def import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install raising anything
        raise LatentmuseError(f"TensorRT is not importable ({type(exc).__name__}: {exc}).",
                              "install the 'tensorrt' extra on a GPU machine.") from exc
    if not hasattr(trt, "Builder"):
        raise LatentmuseError("the 'tensorrt' module has no Builder (stub or broken install).")
    return trt


_LOGGER = None


def get_logger():
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def deserialize_engine(plan: bytes, runtime=None):
    """``Runtime.deserialize_cuda_engine`` returns None on failure instead of raising: turn that into an error."""
    trt = import_tensorrt()
    runtime = runtime or trt.Runtime(get_logger())
    engine = runtime.deserialize_cuda_engine(bytes(plan))
    if engine is None:
        raise LatentmuseError("TensorRT could not deserialize the engine (wrong TensorRT version or GPU, "
                              "or a damaged plan file).", "rebuild it: `latentmuse build --force`.")
    return engine, runtime
