"""Which input frame feeds each output frame, and which frames a model ever sees.

The output follows the audio: n_out = floor(audio seconds x fps). A longer audio cycles the video
ping-pong (0..N-1, N-1..0, ...), a shorter one cuts it. Frames without a usable face are
*passthrough*: written unchanged, never sent to a model, never dropped (MuseTalk's ``continue`` on
such frames shifted every later frame and truncated the video). Which process frames a model sees
together is its generator's choice: :func:`frame_windows` (MuseTalk) and :func:`clip_windows`
(LatentSync), described in docs/GENERATORS.md, "Windows".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Window:
    """One generator call: which output frames it is fed and which of its results are written.

    ``frames`` are output indices in the order the generator sees them; they may repeat (mirror
    padding of a short run). ``keep`` are the output indices this window writes: across a plan every
    process frame is kept by exactly one window, and no passthrough frame ever appears.
    """

    frames: tuple[int, ...]
    keep: tuple[int, ...]

    @property
    def first(self) -> int:
        return min(self.frames)

    @property
    def last(self) -> int:
        return max(self.frames)


def process_runs(tags: Sequence[bool]) -> list[range]:
    """Maximal runs of consecutive process frames (``tags[i]`` true) in output order."""
    runs, start = [], None
    for i, tag in enumerate(tags):
        if tag and start is None:
            start = i
        elif not tag and start is not None:
            runs.append(range(start, i))
            start = None
    if start is not None:
        runs.append(range(start, len(tags)))
    return runs


def frame_windows(tags: Sequence[bool], size: int, max_span: int | None = None) -> list[Window]:
    """Windows of up to ``size`` process frames for a generator whose frames are independent (MuseTalk).

    Frames are taken in output order and may sit on both sides of passthrough frames, but a window
    never spans more than ``max_span`` output frames (default ``2 size``): output is written in order,
    so a window waiting for its last frame holds every frame of its span in memory.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    span = 2 * size if max_span is None else max_span
    windows, current = [], []
    for i, tag in enumerate(tags):
        if not tag:
            continue
        if current and (len(current) == size or i - current[0] >= span):
            windows.append(Window(tuple(current), tuple(current)))
            current = []
        current.append(i)
    if current:
        windows.append(Window(tuple(current), tuple(current)))
    return windows


def mirror_indices(run: range, size: int) -> tuple[int, ...]:
    """``size`` indices of a run shorter than ``size``, reflected at both ends without repeating an
    edge (0 1 2 1 0 1 2 ...); a one-frame run repeats its frame."""
    n = len(run)
    if n == 0:
        raise ValueError("empty run")
    if n == 1:
        return (run[0],) * size
    period = 2 * n - 2
    return tuple(run[k if k < n else period - k] for k in (j % period for j in range(size)))


def clip_windows(tags: Sequence[bool], size: int = 16) -> list[Window]:
    """Windows of exactly ``size`` consecutive process frames for a temporal generator (LatentSync).

    Policy (docs/GENERATORS.md, "Windows"): a window never crosses a passthrough frame and nothing is
    zero-padded. A run of at least ``size`` frames is cut into consecutive windows; its tail, if any,
    is served by an overlapping last window (the run's final ``size`` frames, writing only the frames
    not yet written), so every window shows the model real, consecutive frames. A run shorter than
    ``size`` is mirror-padded within itself (:func:`mirror_indices`) and writes each frame once.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    windows = []
    for run in process_runs(tags):
        if len(run) < size:
            windows.append(Window(mirror_indices(run, size), tuple(run)))
            continue
        full = len(run) // size * size
        for start in range(run.start, run.start + full, size):
            frames = tuple(range(start, start + size))
            windows.append(Window(frames, frames))
        if full < len(run):
            windows.append(Window(tuple(range(run.stop - size, run.stop)), tuple(range(run.start + full, run.stop))))
    return windows
