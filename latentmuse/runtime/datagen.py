"""Which input frame feeds each output frame, and which frames a model ever sees.

The output follows the audio: n_out = floor(audio seconds x fps). A longer audio cycles the video
ping-pong (0..N-1, N-1..0, ...), a shorter one cuts it. Frames without a usable face are
*passthrough*: written unchanged, never sent to a model, never dropped (MuseTalk's ``continue`` on
such frames shifted every later frame and truncated the video).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from .contracts import Face

Tag = Literal["process", "passthrough"]


def output_frame_count(n_samples: int, fps: Fraction, sample_rate: int = 16_000) -> int:
    """floor(duration x fps), computed exactly (no float drift at 30000/1001)."""
    return math.floor(Fraction(n_samples, sample_rate) * Fraction(fps))


def ping_pong_schedule(n_in: int, n_out: int) -> list[int]:
    """Input frame index for each output frame: 0..N-1, N-1..0, 0..N-1, ... cut at n_out."""
    if n_in <= 0:
        raise ValueError("the video has no frames")
    if n_in == 1:
        return [0] * n_out
    period = 2 * n_in
    return [k if k < n_in else period - 1 - k for k in (j % period for j in range(n_out))]


@dataclass
class FrameJob:
    """One output frame on its way through the pipeline."""

    out_index: int
    in_index: int
    frame: np.ndarray
    face: Face | None

    @property
    def tag(self) -> Tag:
        return "process" if self.face is not None else "passthrough"


def batched(jobs: Iterable[FrameJob], size: int) -> Iterator[list[FrameJob]]:
    """Consecutive output frames in groups of ``size`` (mixed tags; the generator sees process ones)."""
    batch: list[FrameJob] = []
    for job in jobs:
        batch.append(job)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def process_jobs(batch: Sequence[FrameJob]) -> list[FrameJob]:
    return [job for job in batch if job.face is not None]
