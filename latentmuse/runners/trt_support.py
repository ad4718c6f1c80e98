"""TensorRT loading shared by the builder (:mod:`latentmuse.engines.trt_build`) and the runner.

Both flavours (:data:`latentmuse.system.FLAVORS`: standard ``tensorrt`` and ``tensorrt_rtx``) have the
same Python API for everything latentmuse touches; each is imported lazily, when first needed, so the
package works without either. A missing, broken or stub install is a
:class:`~latentmuse.errors.LatentmuseError` naming the flavour and the extra that installs it.
"""

from __future__ import annotations

import importlib

from ..errors import LatentmuseError
from ..system import TENSORRT, TrtFlavor


def import_tensorrt(flavor: TrtFlavor = TENSORRT):
    """``flavor``'s module (``tensorrt`` or ``tensorrt_rtx``)."""
    try:
        trt = importlib.import_module(flavor.module)
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install raising anything
        where = "on a GPU machine" if flavor is TENSORRT else "(pip install 'latentmuse[trt-rtx]')"
        raise LatentmuseError(f"{flavor.label} is not importable ({type(exc).__name__}: {exc}).",
                              f"install the '{flavor.extra}' extra {where}.") from exc
    if not hasattr(trt, "Builder"):
        raise LatentmuseError(f"the '{flavor.module}' module has no Builder (stub or broken install).")
    return trt


def module_version(trt) -> str:
    return str(getattr(trt, "__version__", "unknown"))


#: One logger per flavour module (TensorRT keeps the logger it was given for the process's lifetime).
_LOGGERS: dict[str, object] = {}


def get_logger(flavor: TrtFlavor = TENSORRT):
    if flavor.module not in _LOGGERS:
        trt = import_tensorrt(flavor)
        _LOGGERS[flavor.module] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[flavor.module]


def deserialize_engine(plan: bytes, runtime=None, flavor: TrtFlavor = TENSORRT):
    """``Runtime.deserialize_cuda_engine`` returns None on failure instead of raising: turn that into an error."""
    trt = import_tensorrt(flavor)
    runtime = runtime or trt.Runtime(get_logger(flavor))
    engine = runtime.deserialize_cuda_engine(bytes(plan))
    if engine is None:
        raise LatentmuseError(f"{flavor.label} could not deserialize the engine (a plan of another flavour or "
                              "TensorRT version, built for another GPU, or a damaged plan file).",
                              "rebuild it: `latentmuse build --force`.")
    return engine, runtime
