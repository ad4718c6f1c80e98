"""Helpers shared by several test modules.

Test modules used to import these from one another (``from .test_pipeline import write_wav``), which
made one test module's edits break another's imports and pulled a whole module's fixtures in for one
function; they live here instead, behaviour unchanged.
"""

from __future__ import annotations

import json
import wave
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from latentmuse.artifacts.onnx_files import onnx_sha256
from latentmuse.graphs.spec import DynamicDim, GraphSpec, TensorSpec
from latentmuse.runtime import media

# ------------------------------------------------------------------------------------------ media


def write_wav(path: Path, seconds: float, rate: int = 22_050, freq: float = 220.0) -> Path:
    """A mono 16-bit sine at 0.3 full scale, ``round(seconds * rate)`` samples."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def level_frame(index: int, size: int = 64) -> np.ndarray:
    """A faceless frame whose gray level encodes its index (robust to H.264 at high quality)."""
    return np.full((size, size, 3), 10 + 15 * index, dtype=np.uint8)


def write_level_video(path: Path, n: int, fps: Fraction, audio: Path | None) -> Path:
    """``n`` lossless level frames (see ``level_frame``) at ``fps``, with ``audio`` muxed when given."""
    with media.VideoWriter(path, 64, 64, fps, audio, crf=0) as writer:
        for i in range(n):
            writer.write(level_frame(i))
    return path


def decode_index(frame: np.ndarray) -> int:
    """The index a ``level_frame`` encodes, read back from its mean gray level."""
    return int(round((float(frame.mean()) - 10) / 15))


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Peak signal-to-noise ratio in dB between two frame lists (inf when identical)."""
    x, y = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ------------------------------------------------------------------------------------ ONNX graphs

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def _write(model, path: Path, validated: bool | None = True) -> Path:
    """Save like the exporter does: the file, then its validation recorded in the folder's report."""
    import onnx

    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    record(path, validated)
    return path


def record(path: Path, passed: bool | None) -> None:
    """Put ``path``'s current sha256 and a validation result (None: not validated) into export_report.json."""
    graph, _, rest = path.name.partition(".")
    sha, check = ("fp16_sha256", "fp16_pass") if rest.startswith("fp16") else ("sha256", "fp32_pass")
    report = path.parent / "export_report.json"
    data = json.loads(report.read_text()) if report.is_file() else {"graphs": {}}
    entry = data["graphs"].setdefault(graph, {"name": graph, "exporter": "dynamo", "opset": 17, "torch": "2.13.0"})
    entry.update({sha: onnx_sha256(path), check: passed})
    report.write_text(json.dumps(data))


def alpha_onnx(path: Path, bias: np.ndarray = B, validated: bool | None = True) -> Path:
    """y = x @ W + b, x: (N, 4)."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "alpha", [x], [y], [numpy_helper.from_array(W, "W"),
                                                         numpy_helper.from_array(bias, "b")])
    return _write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, validated)


def beta_onnx(path: Path) -> Path:
    """Two inputs, two outputs: s = a + b, p = a * b, all (N, 2, 4, 4)."""
    from onnx import TensorProto, helper

    dims = ["N", 2, 4, 4]
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("a", "b"))
    s, p = (helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("s", "p"))
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"])]
    return _write(helper.make_model(helper.make_graph(nodes, "beta", [a, b], [s, p]),
                                    opset_imports=[helper.make_opsetid("", 17)]), path)


def spec(name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> GraphSpec:
    """A test graph spec with one dynamic batch dimension N in 1..4 (opt 2)."""
    return GraphSpec(name=name, model_key="test", make_wrapper=lambda m: m, inputs=inputs, outputs=outputs,
                     dynamic=(DynamicDim("N", 1, 2, 4),))


SPECS = {
    "alpha": spec("alpha", (TensorSpec("x", ("N", 4)),), (TensorSpec("y", ("N", 3)),)),
    "beta": spec("beta", (TensorSpec("a", ("N", 2, 4, 4)), TensorSpec("b", ("N", 2, 4, 4))),
                 (TensorSpec("s", ("N", 2, 4, 4)), TensorSpec("p", ("N", 2, 4, 4)))),
}


# ------------------------------------------------------------------------------ counting av.open


@dataclass
class FileReads:
    """How one input file was read: ``opens`` (``av.open`` for reading), ``demuxed`` (packets read by
    ``container.demux``, without decoding) and ``decoded`` (packets read by ``container.decode``)."""

    opens: int = 0
    demuxed: int = 0
    decoded: int = 0

    @property
    def packets(self) -> int:
        return self.demuxed + self.decoded


class _CountedContainer:
    """An input container that counts the packets read through it (PyAV's containers are extension
    types whose methods cannot be replaced, so this stands in front of one)."""

    def __init__(self, container, reads: FileReads) -> None:
        self._container = container
        self._reads = reads

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def __enter__(self) -> "_CountedContainer":
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()

    def __iter__(self):
        return iter(self._container)

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            if packet.size:
                self._reads.demuxed += 1
            yield packet

    def decode(self, *args, **kwargs):
        # what PyAV's own InputContainer.decode does, with the packets counted
        for packet in self._container.demux(*args, **kwargs):
            if packet.size:
                self._reads.decoded += 1
            yield from packet.decode()


@contextmanager
def count_av(monkeypatch) -> Iterator[dict[Path, FileReads]]:
    """Count, per resolved file path, the ``av.open`` calls that read it and the packets read from it.

    The media modules ``import av`` and call ``av.open``, so replacing the attribute on the module
    catches every open wherever it is made. Writes (``mode="w"``) are passed through uncounted.
    Yields the live ``{path: FileReads}`` table.
    """
    import av

    real_open = av.open
    table: dict[Path, FileReads] = defaultdict(FileReads)

    def counting_open(file, mode="r", *args, **kwargs):
        container = real_open(file, mode, *args, **kwargs)
        if mode != "r" or not isinstance(file, (str, Path)):
            return container
        reads = table[Path(file).resolve()]
        reads.opens += 1
        return _CountedContainer(container, reads)

    monkeypatch.setattr(av, "open", counting_open)
    try:
        yield table
    finally:
        monkeypatch.setattr(av, "open", real_open)
