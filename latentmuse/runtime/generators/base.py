"""The generator interface, its typed failure, and helpers every generator shares."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..audio import AudioFeatures
from ..contracts import Face
from ..datagen import WindowPlanner


class GeneratorFailure(RuntimeError):
    """A generator could not serve a window (engine missing or failing, non-finite output, ...).

    The generation chain catches it (and any other exception), hands the window to the fallback
    generator or passes its frames through, and records ``reason`` in the run report; it never
    changes the output length.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: How runners other than PyTorch say they ran out of device or host memory: ONNX Runtime ("Failed to
#: allocate memory", std::bad_alloc), CUDA and TensorRT ("out of memory", CUDA_ERROR_OUT_OF_MEMORY).
_OOM_WORDS = ("out of memory", "failed to allocate memory", "bad_alloc", "cuda_error_out_of_memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out (torch's OutOfMemoryError, MemoryError, or a runner's message)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return any(word in str(exc).lower() for word in _OOM_WORDS)


class BatchOutOfMemory(GeneratorFailure):
    """A frame-batched call ran out of memory at ``batch`` frames per call.

    Distinct from other failures because it is the one a retry can cure: the generator chain asks the
    generator for a smaller batch (:meth:`Generator.smaller_batch`) and runs the window again before
    it falls back. Raised only around calls whose memory grows with the batch (the VAE, MuseTalk's
    UNet); an out-of-memory elsewhere (LatentSync's UNet3D, always one 16-frame window) falls back
    at once, since no smaller batch exists for it.
    """

    def __init__(self, what: str, batch: int, cause: BaseException) -> None:
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"out of memory in {what} at batch {batch} ({text})")
        self.what, self.batch = what, batch


@contextlib.contextmanager
def batch_memory(what: str, batch: int) -> Iterator[None]:
    """Turn running out of memory inside the block into :class:`BatchOutOfMemory` for ``batch`` frames."""
    try:
        yield
    except BatchOutOfMemory:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise BatchOutOfMemory(what, batch, exc) from exc
        raise


def halve(batch: int) -> tuple[int, int] | None:
    """``(batch, batch // 2)``, or None at one frame: the steps of an out-of-memory retry."""
    return (batch, batch // 2) if batch > 1 else None


@dataclass
class GenerationBatch:
    """One window's process frames, in the order the generator sees them, with what it may need.

    Entries may repeat an output index (mirror padding of a short run): the generator treats each
    entry as a frame and returns one result per entry.
    """

    out_indices: Sequence[int]
    in_indices: Sequence[int]  # the input frame behind each entry (per-input-frame caches use it)
    frames: Sequence[np.ndarray]  # BGR uint8 input frames (not modified)
    faces: Sequence[Face]
    audio: AudioFeatures
    n_out: int

    def subset(self, positions: Sequence[int]) -> GenerationBatch:
        pick = list(positions)
        return GenerationBatch([self.out_indices[i] for i in pick], [self.in_indices[i] for i in pick],
                               [self.frames[i] for i in pick], [self.faces[i] for i in pick], self.audio, self.n_out)


@dataclass
class StageClock:
    """Seconds spent per named sub-stage, summed over windows (for the run report). Thread-safe: a
    deferred paste (:class:`DeferredFrame`) adds its time from the encoder's thread."""

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class DeferredFrame:
    """An output frame whose last, per-frame CPU step (pasting the generated face into the frame) is
    still to run: ``resolve()`` runs it once. A generator built with ``defer_paste`` returns these, and
    the pipeline's encoder thread resolves them (runtime/overlap.py), so pasting overlaps the next
    window's network calls. The paste is pure array work on shapes the generator already checked."""

    __slots__ = ("_fn", "_args", "_clock", "_stage")

    def __init__(self, fn, args: tuple, clock: StageClock, stage: str) -> None:
        self._fn, self._args, self._clock, self._stage = fn, args, clock, stage

    def resolve(self) -> np.ndarray:
        tic = time.perf_counter()
        frame = self._fn(*self._args)
        self._clock.add(self._stage, time.perf_counter() - tic)
        return frame


def paste_frames(generator, fn, argument_rows, stage: str) -> list:
    """``fn(*row)`` per frame now, or deferred (:class:`DeferredFrame`) when ``generator.defer_paste``."""
    if generator.defer_paste:
        return [DeferredFrame(fn, tuple(row), generator.clock, stage) for row in argument_rows]
    tic = time.perf_counter()
    out = [fn(*row) for row in argument_rows]
    generator.clock.add(stage, time.perf_counter() - tic)
    return out


def resolved(frame):
    """A frame as pixels (resolving a :class:`DeferredFrame`)."""
    return frame.resolve() if isinstance(frame, DeferredFrame) else frame


class Generator(Protocol):
    """A lip-sync model behind one interface (docs/GENERATORS.md).

    Everything a generator needs comes through its constructor (runners, settings, the run's latent
    cache, whether to defer pasting) or the batch it is given; the stream only calls these:

    * ``usable(face, frame_shape)``: whether it can work on this face (MuseTalk needs a crop box);
      the face stage passes frames no generator of the run can use through;
    * ``planner()``: a fresh :class:`~latentmuse.runtime.datagen.WindowPlanner` that groups process
      frames into the windows this model wants, as their faces become known;
    * ``observe(in_index, face)``: each input frame's face once, in input order, as soon as it is
      known (before any window holding it), for per-video state such as smoothed alignments;
    * ``generate(batch)``: one blended BGR uint8 frame per batch entry, or raises
      (:class:`BatchOutOfMemory` when a frame-batched call ran out of memory);
    * ``smaller_batch()``: halves the frames per batched call for the rest of the run (a batch that
      ran out of memory once would again) and returns ``(old, new)``, or None at one frame.

    Batching never changes a frame's result, only how many frames share a call.
    """

    name: str
    clock: StageClock
    audio_layout: str  # which AudioFeatures windows it reads: "musetalk" or "latentsync"

    def usable(self, face: Face, frame_shape: Sequence[int]) -> bool: ...
    def planner(self) -> WindowPlanner: ...
    def observe(self, in_index: int, face: Face | None) -> None: ...
    def generate(self, batch: GenerationBatch) -> list[np.ndarray]: ...
    def smaller_batch(self) -> tuple[int, int] | None: ...


def require_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise GeneratorFailure(f"{what} returned non-finite values")
    return tensor
