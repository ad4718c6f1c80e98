"""TensorRT engines, standard or for RTX: build (subprocess per graph, incremental, manifest).

Nothing here imports ``tensorrt`` at module import time: the package works without it until an engine
is actually built or loaded.
"""

from ..artifacts.manifest import EngineEntry, Manifest, entry_is_current
from ..system import GpuInfo, gpu_info
from .orchestrate import BuildResult, build_all, engines_unavailable_reason, resolve_flavor

__all__ = [
    "BuildResult", "EngineEntry", "GpuInfo", "Manifest", "build_all", "engines_unavailable_reason",
    "entry_is_current", "gpu_info", "resolve_flavor",
]
