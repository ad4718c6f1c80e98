"""The generator interface and its typed failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..audio import AudioFeatures
from ..contracts import Face


class GeneratorFailure(RuntimeError):
    """A generator could not serve a batch (engine missing or failing, non-finite output, out of memory).

    The pipeline catches it, hands the frames to the fallback (or passes them through) and records
    ``reason`` in the run report; it never changes the output length.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class GenerationBatch:
    """Process frames of consecutive output positions, with everything a generator may need."""

    out_indices: Sequence[int]
    frames: Sequence[np.ndarray]  # BGR uint8 input frames (not modified)
    faces: Sequence[Face]
    audio: AudioFeatures
    n_out: int


@dataclass
class StageClock:
    """Seconds spent per named sub-stage, summed over batches (for the run report)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class Generator(Protocol):
    name: str
    clock: StageClock

    def generate(self, batch: GenerationBatch) -> list[np.ndarray]:
        """Blended output frames (BGR uint8, input size), one per input frame; or raise GeneratorFailure."""
        ...
