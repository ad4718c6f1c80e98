"""TensorRT engines: build (subprocess per graph, incremental, manifest) and run (name-based API).

Nothing here imports ``tensorrt`` at module import time: the package works without it until an engine
is actually built or loaded.
"""

from .manifest import EngineEntry, Manifest, entry_is_current
from .orchestrate import BuildResult, GpuInfo, build_all, engines_unavailable_reason, gpu_info

__all__ = [
    "BuildResult", "EngineEntry", "GpuInfo", "Manifest", "build_all", "engines_unavailable_reason",
    "entry_is_current", "gpu_info",
]
