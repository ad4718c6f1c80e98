"""latentmuse: production lip-sync (MuseTalk 1.5 front end + LatentSync UNet3D) with ONNX/TensorRT engines.

``from latentmuse import LipSync`` is the Python API (:mod:`latentmuse.runtime.lipsync`); it is imported
on first use, so ``import latentmuse`` (and the CLI's ``--help``) loads no torch. ``score_video`` scores
any video's lip sync (:mod:`latentmuse.runtime.score`, docs/QUALITY.md).
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "LipSync": "latentmuse.runtime.lipsync",
    "LoadOptions": "latentmuse.runtime.options",
    "ClipOptions": "latentmuse.runtime.options",
    "RunReport": "latentmuse.runtime.report",
    "ScoreOptions": "latentmuse.runtime.score",
    "score_video": "latentmuse.runtime.score",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentmuse' has no attribute {name!r}")
