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
from typing import Literal, Protocol

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


class WindowPlanner(Protocol):
    """Plans a generator's windows incrementally, one output frame's tag at a time.

    The stream (runtime/stream.py) learns whether output frame i has a usable face just before the
    generator needs it, so it cannot plan the whole clip first. ``push(process)`` takes the next
    frame's tag and returns the windows that became certain with it (each exactly as the whole-clip
    plan has it, in the order of their last frame); ``finish()`` returns the rest at the end of the
    clip. ``pending_from`` is the first output index a window not yet returned may still contain
    (None when none is pending): frames before it, once written, are never needed again.
    """

    def push(self, process: bool) -> list[Window]: ...
    def finish(self) -> list[Window]: ...
    @property
    def pending_from(self) -> int | None: ...


def plan_windows(planner: WindowPlanner, tags: Sequence[bool]) -> list[Window]:
    """The whole-clip plan: every tag pushed, then finished."""
    windows = [w for tag in tags for w in planner.push(bool(tag))]
    return windows + planner.finish()


class FrameWindowPlanner:
    """Windows of up to ``size`` process frames for a generator whose frames are independent (MuseTalk).

    Frames are taken in output order and may sit on both sides of passthrough frames, but a window
    never spans more than ``max_span`` output frames (default ``2 size``): output is written in order,
    so a window waiting for its last frame holds every frame of its span in memory. A window is
    returned as soon as it is full or no later frame can join it (its span is reached).
    """

    def __init__(self, size: int, max_span: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.span = 2 * size if max_span is None else max_span
        self._current: list[int] = []
        self._next = 0

    @property
    def pending_from(self) -> int | None:
        return self._current[0] if self._current else None

    def push(self, process: bool) -> list[Window]:
        i, self._next = self._next, self._next + 1
        out = []
        if self._current and i - self._current[0] >= self.span:  # frame i and later cannot join it
            out.append(self._close())
        if process:
            self._current.append(i)
            if len(self._current) == self.size:
                out.append(self._close())
        return out

    def finish(self) -> list[Window]:
        return [self._close()] if self._current else []

    def _close(self) -> Window:
        frames, self._current = tuple(self._current), []
        return Window(frames, frames)


def frame_windows(tags: Sequence[bool], size: int, max_span: int | None = None) -> list[Window]:
    """The whole-clip plan of :class:`FrameWindowPlanner`."""
    return plan_windows(FrameWindowPlanner(size, max_span), tags)


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


class ClipWindowPlanner:
    """Windows of exactly ``size`` consecutive process frames for a temporal generator (LatentSync).

    Policy (docs/GENERATORS.md, "Windows"): a window never crosses a passthrough frame and nothing is
    zero-padded. A run of at least ``size`` frames is cut into consecutive windows, each returned as
    soon as its last frame is pushed; the run's tail, if any, is served by an overlapping last window
    (the run's final ``size`` frames, writing only the frames not yet written), so every window shows
    the model real, consecutive frames. A run shorter than ``size`` is mirror-padded within itself
    (:func:`mirror_indices`) and writes each frame once. Tails and short runs are known when the run
    ends (a passthrough frame, or the end of the clip).
    """

    def __init__(self, size: int = 16) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self._start: int | None = None  # the open run's first output index
        self._written = 0  # frames of the open run already returned in full windows
        self._next = 0

    @property
    def pending_from(self) -> int | None:
        if self._start is None:
            return None
        if self._written == 0:
            return self._start
        return self._start + self._written - self.size + 1  # the earliest frame an overlapping tail can start at

    def push(self, process: bool) -> list[Window]:
        i, self._next = self._next, self._next + 1
        if not process:
            return self._close(i)
        if self._start is None:
            self._start, self._written = i, 0
        if i + 1 - (self._start + self._written) == self.size:
            first = self._start + self._written
            self._written += self.size
            frames = tuple(range(first, first + self.size))
            return [Window(frames, frames)]
        return []

    def finish(self) -> list[Window]:
        return self._close(self._next)

    def _close(self, stop: int) -> list[Window]:
        if self._start is None:
            return []
        run, written = range(self._start, stop), self._written
        self._start, self._written = None, 0
        if len(run) < self.size:
            return [Window(mirror_indices(run, self.size), tuple(run))]
        if written < len(run):
            return [Window(tuple(range(run.stop - self.size, run.stop)), tuple(range(run.start + written, run.stop)))]
        return []


def clip_windows(tags: Sequence[bool], size: int = 16) -> list[Window]:
    """The whole-clip plan of :class:`ClipWindowPlanner`."""
    return plan_windows(ClipWindowPlanner(size), tags)
