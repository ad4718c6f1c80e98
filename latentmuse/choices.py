"""The fixed value sets of the options, defined once: the runtime validates against these tuples and the
command line offers them as choices.

This module imports nothing but the standard library, so ``latentmuse --help`` can list every choice
without importing torch (``tests/test_backends.py`` checks it), and the runtime's own checks
(:func:`latentmuse.runtime.checks.check_options`, the backend selector, the PyTorch runner's precision)
cannot drift from what the command line accepts. :func:`choice_enum` turns a tuple into the
``str`` enum typer needs for ``--help`` to list the values and for click to reject any other value
with a usage error (exit 2) before anything loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

#: Generators a run can ask for (``auto``: LatentSync when the weights have a UNet3D, else MuseTalk).
GENERATORS = ("auto", "musetalk", "latentsync")
#: Backends a graph can run on, the reference first (the order ``latentmuse bench`` shows them in).
RUNNER_BACKENDS = ("torch", "ort", "trt")
#: ``--backend``: ``auto`` (per graph, the first that fits in the order TensorRT, ONNX Runtime,
#: PyTorch), or one backend for every exported graph.
BACKENDS = ("auto", *reversed(RUNNER_BACKENDS))
#: PyTorch runners' precision (``auto``: fp16 on CUDA, fp32 on the CPU).
PRECISIONS = ("auto", "fp32", "fp16")
#: Face front ends (``auto``: S3FD + FAN when their weights exist, else dlib).
FACE_DETECTORS = ("auto", "s3fd", "dlib")
#: LatentSync's working resolution (``auto``: what the weights' version was trained at).
RESOLUTIONS = ("auto", "256", "512")
#: ``latentmuse build --precision``: which exported file an engine is built from (``auto``: the fp16
#: graph unless only fp32 validated).
ENGINE_PRECISIONS = ("auto", "fp16", "fp32")
#: ``latentmuse build --flavor``: which TensorRT builds the plans (``auto``: standard TensorRT when it
#: imports and a GPU is visible, else TensorRT for RTX; see :mod:`latentmuse.engines.orchestrate`).
TRT_FLAVORS = ("auto", "tensorrt", "tensorrt-rtx")
#: Sizes ``latentmuse weights random`` writes: test configurations or the released architectures.
RANDOM_SIZES = ("tiny", "full")
#: ``--sync-score``: the lip-sync score in the run (``auto``: when the weights folder has SyncNet).
SYNC_SCORES = ("auto", "on", "off")
#: ``latentmuse run --codec``: the output's video codec (``auto``: its container's default; which
#: container takes which is :mod:`latentmuse.runtime.media.formats`).
CODECS = ("auto", "h264", "hevc", "vp9", "mpeg4", "mjpeg", "prores")


class Choice(str, Enum):
    """A command-line choice: a ``str`` (so it compares equal to its value) whose ``str()`` is its value
    (a plain ``str`` enum formats as ``Class.member`` in f-strings)."""

    def __str__(self) -> str:
        return str(self.value)


def choice_enum(name: str, values: Iterable[str]) -> type[Choice]:
    """A :class:`Choice` enum whose members are ``values``, in order (member name = value)."""
    return Choice(name, [(value, value) for value in values])  # type: ignore[return-value]


Generator = choice_enum("Generator", GENERATORS)
Backend = choice_enum("Backend", BACKENDS)
Precision = choice_enum("Precision", PRECISIONS)
FaceDetector = choice_enum("FaceDetector", FACE_DETECTORS)
Resolution = choice_enum("Resolution", RESOLUTIONS)
EnginePrecision = choice_enum("EnginePrecision", ENGINE_PRECISIONS)
TrtFlavorChoice = choice_enum("TrtFlavorChoice", TRT_FLAVORS)
RandomSize = choice_enum("RandomSize", RANDOM_SIZES)
Codec = choice_enum("Codec", CODECS)
SyncScoring = choice_enum("SyncScoring", SYNC_SCORES)
