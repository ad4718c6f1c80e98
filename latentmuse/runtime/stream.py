"""The run as one stream: decode -> find faces -> plan windows -> generate -> encode, each frame once.

The video is decoded once, in output order (ping-pong cycles re-read frames, as they must), on its
own thread (:class:`~.overlap.Prefetch`). Each frame then goes through :class:`FaceStage` on a second
thread: input frames whose face is already known (a face-cache entry, an earlier ping-pong cycle)
pass straight on; new ones are detected in small batches (candidates, the tracker's choice, landmarks
of the chosen face, the tracker's confirmation), a bounded distance ahead of the generator that needs
them. :func:`generate_stream` on the caller's thread plans the generator's windows incrementally
from the faces found so far (:class:`~.datagen.WindowPlanner`, equal to the whole-clip plan), runs
each window as soon as it is certain, and yields every output frame in order: generated where a
window kept it, as read otherwise. Memory is bounded by the look-ahead (the queues' depths, a face
batch, the frames a pending window still needs), not by the clip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..progress import Progress
from .audio import AudioFeatures
from .contracts import Face, FaceFrontEnd
from .datagen import FrameJob, Window
from .facecache import FaceTrack
from .generators.base import GenerationBatch
from .generators.chain import GeneratorChain
from .heap import HeapTrimmer
from .tracking import FaceTracker


@dataclass
class FaceStage:
    """The faces of a clip's input frames, found in input order as the stream reaches them.

    ``track`` is the pass so far: empty, or a face-cache entry of any length, whose frames pass on with
    their cached faces (``tracker`` then resumes after its last frame, :meth:`FaceTrack.tracker`).
    Frames past it are detected ``batch_size`` at a time by ``front_end``, confirmed by ``tracker``
    and appended to ``track`` (:meth:`FaceTrack.confirm`); a face ``usable`` rejects (no generator of
    the run can work on it) counts as none. At the end, ``track`` is what the face cache stores.
    """

    front_end: FaceFrontEnd
    tracker: FaceTracker
    usable: Callable[[Face, Sequence[int]], bool]
    batch_size: int
    track: FaceTrack = field(default_factory=FaceTrack)
    heap: HeapTrimmer | None = None
    progress: Progress | None = None
    detected: int = 0  # frames run through the detector
    seconds: float = 0.0  # spent detecting (on the stage's thread)

    def jobs(self, decoded: Iterable[tuple[int, np.ndarray]], schedule: Sequence[int]) -> Iterator[FrameJob]:
        """Each decoded ``(input index, frame)`` of the schedule as a :class:`FrameJob` with its face."""
        pending: list[FrameJob] = []
        faces = self.track.faces
        for out_index, (in_index, frame) in enumerate(decoded):
            if in_index != schedule[out_index]:  # a decoding fault must not silently shift the video
                raise RuntimeError(f"frame source gave frame {in_index} for output {out_index}, expected {schedule[out_index]}")
            if in_index < len(faces) + len(pending):  # found, or waiting in this batch (a ping-pong turn)
                yield from self._detect(pending)
                pending = []
                yield FrameJob(out_index, in_index, frame, faces[in_index])
                continue
            if in_index != len(faces) + len(pending):
                raise RuntimeError(f"input frame {in_index} reached the face stage out of order "
                                   f"({len(faces)} found, {len(pending)} waiting)")
            pending.append(FrameJob(out_index, in_index, frame, None))
            if len(pending) == self.batch_size:
                yield from self._detect(pending)
                pending = []
        yield from self._detect(pending)

    def _detect(self, batch: list[FrameJob]) -> list[FrameJob]:
        """Per batch: every candidate of every frame, the tracker's choice in frame order, landmarks of
        the chosen candidates only, then the tracker's confirmation in frame order (docs/FACES.md)."""
        if not batch:
            return batch
        tic = time.perf_counter()
        frames = [job.frame for job in batch]
        selections = [self.tracker.select(found, frame.shape)
                      for found, frame in zip(self.front_end.candidates(frames), frames)]
        marked = self.front_end.landmarks(frames, [sel.candidate for sel in selections])
        for sel, face, job in zip(selections, marked, batch):
            usable = face if face is not None and self.usable(face, job.frame.shape) else None
            job.face = self.track.confirm(self.tracker, sel, usable)
        self.detected += len(batch)
        self.seconds += time.perf_counter() - tic
        if self.progress is not None:
            self.progress.advance("faces", len(batch))
        if self.heap is not None:
            self.heap.tick(len(batch))
        return batch


@dataclass
class StreamCounts:
    """What :func:`generate_stream` did: windows run, and output frames with no usable face."""

    windows: int = 0
    no_face: int = 0


def generate_stream(jobs: Iterable[FrameJob], chain: GeneratorChain, features: AudioFeatures, n_out: int,
                    progress: Progress, counts: StreamCounts | None = None) -> Iterator[tuple[int, np.ndarray, Face | None]]:
    """Every output frame in order, with its dubbed face (None: none usable): generated where a window
    kept it, as read otherwise.

    Each new input frame's face is shown to the generators once, in input order (``observe``), then
    its tag goes to the planner; a window runs as soon as the planner returns it. Frames are held
    only while a pending window may still need them or they wait for their window.
    """
    counts = counts if counts is not None else StreamCounts()
    planner = chain.planner()
    held: dict[int, FrameJob] = {}
    done: dict[int, np.ndarray] = {}
    observed = next_out = 0

    def run(windows: list[Window]) -> None:
        for window in windows:
            batch_jobs = [held[i] for i in window.frames]
            batch = GenerationBatch([j.out_index for j in batch_jobs], [j.in_index for j in batch_jobs],
                                    [j.frame for j in batch_jobs], [j.face for j in batch_jobs], features, n_out)
            made = chain.generate(batch, window.keep)
            for index in window.keep:  # a window that failed everywhere passes its frames through
                done[index] = made.get(index, held[index].frame)
            counts.windows += 1
            progress.advance("windows")

    def ready() -> Iterator[tuple[int, np.ndarray, Face | None]]:
        nonlocal next_out
        while next_out in held and (held[next_out].face is None or next_out in done):
            yield next_out, done.pop(next_out, held[next_out].frame), held[next_out].face
            next_out += 1

    for job in jobs:
        if job.in_index == observed:
            chain.observe(job.in_index, job.face)
            observed += 1
        held[job.out_index] = job
        counts.no_face += job.face is None
        run(planner.push(job.face is not None))
        yield from ready()
        keep_from = min(next_out, planner.pending_from if planner.pending_from is not None else next_out)
        for index in [i for i in held if i < keep_from]:
            del held[index]
    run(planner.finish())
    yield from ready()
    if next_out != n_out:
        raise RuntimeError(f"only {next_out} of {n_out} output frames were written")
