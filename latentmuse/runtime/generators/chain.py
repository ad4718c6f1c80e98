"""The generator a run holds: a primary generator, window by window falling back to MuseTalk.

A window that runs out of memory in a frame-batched call (:class:`~.base.BatchOutOfMemory`) is first
run again by the same generator at half the batch, down to one frame (the smaller batch stays for the
rest of the run); each retry is noted and recorded in :attr:`GeneratorChain.retries`. A window the
primary still cannot serve (its weights missing or failing to load, any exception, non-finite output,
out of memory) goes to the fallback generator (MuseTalk on the PyTorch MuseTalk UNet), retried the same
way; if that fails too, or there is none, its frames pass through unchanged and count as failed.
Output length never changes. Each distinct reason is noted once; every fallback is recorded with its
frames. With ``allow_fallback=False`` the first failure is a :class:`~latentmuse.errors.LatentmuseError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import LatentmuseError
from ..contracts import Face
from ..datagen import WindowPlanner
from .base import BatchOutOfMemory, GenerationBatch, Generator, GeneratorFailure, StageClock, is_out_of_memory

PASSTHROUGH = "passthrough"


def describe(exc: BaseException) -> str:
    """One line for the report and the log: the failure's own reason, or the exception's first line."""
    if isinstance(exc, GeneratorFailure):
        return exc.reason
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if is_out_of_memory(exc):
        return f"out of memory ({text or type(exc).__name__})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def frame_ranges(frames: Sequence[int]) -> list[list[int]]:
    """Sorted output indices as inclusive ``[first, last]`` runs: [0, 1, 2, 7] -> [[0, 2], [7, 7]]."""
    runs: list[list[int]] = []
    for f in sorted(set(frames)):
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return runs


@dataclass
class FallbackRecord:
    """All windows that one reason sent from ``generator`` to ``to`` (a generator or "passthrough")."""

    generator: str
    reason: str
    to: str
    frames: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"generator": self.generator, "reason": self.reason, "to": self.to,
                "frames": frame_ranges(self.frames), "count": len(set(self.frames))}


@dataclass
class RetryRecord:
    """A window ``generator`` ran again at ``to_batch`` frames per call after running out of memory at
    ``from_batch`` (the generator keeps the smaller batch, so each step happens once per run)."""

    generator: str
    reason: str
    from_batch: int
    to_batch: int
    frames: list[int]

    def as_dict(self) -> dict:
        return {"generator": self.generator, "reason": self.reason, "batch": [self.from_batch, self.to_batch],
                "frames": frame_ranges(self.frames), "count": len(set(self.frames))}


def release_memory(exc: BaseException) -> None:
    """After running out of CUDA memory: hand the failed call's cached blocks back before the next try."""
    if is_out_of_memory(exc) and torch.cuda.is_available():
        torch.cuda.empty_cache()


class GeneratorChain:
    """``primary`` with ``fallback`` behind it; ``primary`` may be None with ``unavailable`` saying why.
    It is itself a generator to the stream: it plans, observes and judges faces for both."""

    def __init__(self, primary: Generator | None, fallback: Generator | None, *, unavailable: str | None = None,
                 primary_name: str | None = None, allow_fallback: bool = True,
                 note: Callable[[str], None] = lambda message: None) -> None:
        if primary is None and fallback is None:
            raise ValueError("a generator chain needs a primary or a fallback generator")
        if primary is None and (unavailable is None or primary_name is None):
            raise ValueError("name the unavailable primary generator and say why it is unavailable")
        self.primary, self.fallback = primary, fallback
        self.primary_name = primary.name if primary is not None else primary_name
        self.unavailable = unavailable
        self.allow_fallback = allow_fallback
        self.note = note
        self.frames_by_generator: Counter[str] = Counter()
        self.frames_failed = 0
        self.records: dict[tuple[str, str, str], FallbackRecord] = {}
        self.retry_records: list[RetryRecord] = []

    @property
    def name(self) -> str:
        return self.primary_name

    @property
    def generators(self) -> list[Generator]:
        return [g for g in (self.primary, self.fallback) if g is not None]

    @property
    def planning(self) -> Generator:
        """The generator whose windows the run uses: the primary, else the fallback."""
        return self.primary if self.primary is not None else self.fallback  # type: ignore[return-value]

    @property
    def clocks(self) -> dict[str, StageClock]:
        return {g.name: g.clock for g in self.generators}

    def usable(self, face: Face, frame_shape: Sequence[int]) -> bool:
        """A face every generator of the chain can work on (a window may end up on either)."""
        return all(g.usable(face, frame_shape) for g in self.generators)

    def planner(self) -> WindowPlanner:
        """Windows planned the primary's way (the fallback's when there is no primary), so a run's
        windows do not depend on which windows later fail."""
        return self.planning.planner()

    def observe(self, in_index: int, face: Face | None) -> None:
        for generator in self.generators:
            generator.observe(in_index, face)

    def generate(self, batch: GenerationBatch, keep: Sequence[int]) -> dict[int, np.ndarray]:
        """Blended frames for the window's ``keep`` output indices (each from its first batch entry)."""
        positions = _first_positions(batch.out_indices, keep)
        if self.primary is not None:
            try:
                frames = self._attempt(self.primary, batch)
            except Exception as exc:  # noqa: BLE001 - any failure of a window is that window's fallback
                reason = describe(exc)
                release_memory(exc)
            else:
                self.frames_by_generator[self.primary.name] += len(positions)
                return {index: frames[i] for index, i in positions.items()}
        else:
            reason = self.unavailable or "unavailable"
        return self._fall_back(batch, positions, self.primary_name, reason)

    def _fall_back(self, batch: GenerationBatch, positions: dict[int, int], failed: str, reason: str) -> dict[int, np.ndarray]:
        frames = sorted(positions)
        fallback = self.fallback
        if not self.allow_fallback:
            then = f"hand such windows to {fallback.name}" if fallback is not None and failed != fallback.name \
                else "pass such frames through unchanged"
            raise LatentmuseError(
                f"the {failed} generator failed on frames {_span(frames)}: {reason}.",
                f"fix the cause, or run without --no-fallback to {then}.",
            )
        if fallback is not None and failed != fallback.name:
            subset = batch.subset([positions[i] for i in frames])
            try:
                made = self._attempt(fallback, subset)
            except Exception as exc:  # noqa: BLE001
                release_memory(exc)
                self._record(failed, reason, fallback.name, frames)
                return self._fall_back(subset, {i: k for k, i in enumerate(frames)}, fallback.name, describe(exc))
            self._record(failed, reason, fallback.name, frames)
            self.frames_by_generator[fallback.name] += len(frames)
            return dict(zip(frames, made))
        self._record(failed, reason, PASSTHROUGH, frames)
        self.frames_failed += len(frames)
        return {}

    def _attempt(self, generator: Generator, batch: GenerationBatch) -> list[np.ndarray]:
        """``generator.generate(batch)``, run again at half the batch each time a batched call runs out
        of memory, until it succeeds or the batch is one frame (then the last error propagates)."""
        while True:
            try:
                return generator.generate(batch)
            except BatchOutOfMemory as exc:
                release_memory(exc)
                sizes = generator.smaller_batch()
                if sizes is None:
                    raise
                self.retry_records.append(RetryRecord(generator.name, exc.reason, *sizes, list(batch.out_indices)))
                self.note(f"{generator.name} ran {exc.reason}: frames {_span(batch.out_indices)} run again at batch "
                          f"{sizes[1]}, which later windows keep")

    def _record(self, generator: str, reason: str, to: str, frames: list[int]) -> None:
        key = (generator, reason, to)
        if key not in self.records:
            self.records[key] = FallbackRecord(generator, reason, to)
            target = "passed through unchanged" if to == PASSTHROUGH else f"sent to {to}"
            if reason != self.unavailable:  # an unavailable primary was announced when the run began
                self.note(f"{generator} failed ({reason}): frames {_span(frames)} {target}; "
                          "later windows with this reason are counted in the report")
        self.records[key].frames.extend(frames)

    @property
    def fallbacks(self) -> list[dict]:
        return [record.as_dict() for record in self.records.values()]

    @property
    def retries(self) -> list[dict]:
        return [record.as_dict() for record in self.retry_records]


def _first_positions(out_indices: Sequence[int], keep: Sequence[int]) -> dict[int, int]:
    wanted, positions = set(keep), {}
    for position, index in enumerate(out_indices):
        if index in wanted and index not in positions:
            positions[index] = position
    if len(positions) != len(wanted):
        raise ValueError(f"window keeps frames {sorted(wanted - set(positions))} it is not fed")
    return positions


def _span(frames: Sequence[int]) -> str:
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in frame_ranges(frames))
