"""The generator interface, its typed failure, and helpers every generator shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..audio import AudioFeatures
from ..contracts import Face
from ..datagen import Window


class GeneratorFailure(RuntimeError):
    """A generator could not serve a window (engine missing or failing, non-finite output, ...).

    The generation chain catches it (and any other exception), hands the window to the fallback
    generator or passes its frames through, and records ``reason`` in the run report; it never
    changes the output length.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    """Seconds spent per named sub-stage, summed over windows (for the run report)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class Generator(Protocol):
    """A lip-sync model behind one interface (docs/GENERATORS.md).

    ``plan`` groups the process frames (``tags[i]`` true for output frame i) into the windows this
    model wants; ``prepare`` sees every input frame's face once before generation (for per-video
    caches such as smoothed alignments); ``generate`` returns one blended BGR uint8 frame per batch
    entry, or raises.
    """

    name: str
    clock: StageClock
    audio_layout: str  # which AudioFeatures states it reads: "musetalk" or "latentsync"

    def plan(self, tags: Sequence[bool]) -> list[Window]: ...
    def prepare(self, faces: Sequence[Face | None]) -> None: ...
    def generate(self, batch: GenerationBatch) -> list[np.ndarray]: ...


def require_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise GeneratorFailure(f"{what} returned non-finite values")
    return tensor
