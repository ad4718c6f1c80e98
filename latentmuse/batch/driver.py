"""Running a job list: plan (resume), execute each job on a loaded ``LipSync``, summarise.

The same three steps serve a local batch (one process, one load, jobs one after another) and a Ray
batch (:mod:`latentmuse.batch.ray_backend`: the plan and the summary on the driver, :func:`execute` inside
each actor). One failing job never stops the others: its error is its result. An interruption
(SIGINT / SIGTERM) stops the batch after the running job's writer has cleaned up; the summary is
still written, the jobs not reached marked ``not_run``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import LatentmuseError
from ..files import Digests, atomic_write
from ..outcomes import STATUS_FAILED_FRAMES, STATUS_LOW_SYNC, ExitCode, Interrupted
from ..runtime.options import ClipOptions, LoadOptions
from .jobs import Job
from .resume import DONE, FAILED_BEFORE, RUN, decide, job_key

#: a batch job's end: done (this run, or an earlier one: skipped), failed, or not reached
DONE_NOW, SKIPPED, FAILED, NOT_RUN = "done", "skipped", "failed", "not_run"


@dataclass
class JobResult:
    """One job's line in the summary."""

    where: str
    video: str
    audio: str | None
    output: str
    report: str
    status: str  # done | skipped | failed | not_run
    outcome: str = ""  # the run report's status: ok | failed_frames | low_sync | error | interrupted (skipped: the earlier one)
    reason: str | None = None
    frames: int = 0
    frames_failed: int = 0
    seconds: float = 0.0
    face_cache: str = ""
    latent_cache: str = ""
    worker: str | None = None
    exit_code: int = ExitCode.OK
    #: the lip-sync score (LSE-C, LSE-D) of the video, when scored
    sync_confidence: float | None = None
    sync_distance: float | None = None


@dataclass
class Planned:
    job: Job
    clip: ClipOptions
    key: dict | None  # None: the key could not be computed (a missing input); the run says why
    decision: str
    earlier: dict | None = None


@dataclass
class BatchSummary:
    source: str
    mode: str  # local | ray
    workers: int
    jobs: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0
    load_seconds: float = 0.0
    interrupted: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Jobs by end; ``low_sync`` counts the complete videos (done now or earlier) below the gate."""
        out = dict.fromkeys((DONE_NOW, SKIPPED, FAILED, NOT_RUN), 0)
        for result in self.jobs:
            out[result.status] += 1
        out[STATUS_LOW_SYNC] = sum(r.outcome == STATUS_LOW_SYNC and r.status in (DONE_NOW, SKIPPED) for r in self.jobs)
        return out

    @property
    def exit_code(self) -> int:
        """1 when a job failed, else 3 when a video has frames that failed every generator (unless
        allowed), else 4 when a video is below the lip-sync gate, 130/143 when interrupted, else 0."""
        if self.interrupted:
            return ExitCode.SIGTERM if "SIGTERM" in self.interrupted else ExitCode.SIGINT
        if any(r.status in (FAILED, NOT_RUN) for r in self.jobs):
            return ExitCode.ERROR
        if any(r.exit_code == ExitCode.FAILED_FRAMES for r in self.jobs):
            return ExitCode.FAILED_FRAMES
        if any(r.exit_code == ExitCode.LOW_SYNC for r in self.jobs):
            return ExitCode.LOW_SYNC
        return ExitCode.OK

    def to_dict(self) -> dict:
        frames = sum(r.frames for r in self.jobs if r.status == DONE_NOW)
        return {"source": self.source, "mode": self.mode, "workers": self.workers, "counts": self.counts,
                "exit_code": int(self.exit_code), "interrupted": self.interrupted, "seconds": round(self.seconds, 3),
                "load_seconds": round(self.load_seconds, 3), "frames_generated_now": frames,
                "jobs_per_minute": round(60 * self.counts[DONE_NOW] / self.seconds, 3) if self.seconds > 0 else None,
                "jobs": [asdict(r) for r in self.jobs]}

    def write(self, path: Path) -> None:
        try:
            atomic_write(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        except OSError as exc:
            raise LatentmuseError(f"cannot write the batch summary {path} ({exc.strerror or exc}).",
                                  "check free disk space and the folder's permissions, or pass --summary.") from None


def plan(jobs: Iterable[Job], load: LoadOptions, clip: ClipOptions, digests: Digests, *, force: bool = False,
         retry_failed: bool = False, retry_low_sync: bool = False) -> list[Planned]:
    """Each job's options, key and decision (the inputs are hashed here, each file once)."""
    planned = []
    for job in jobs:
        options = job.clip_options(clip)
        try:
            key = job_key(job, load, options, digests)
        except OSError:
            planned.append(Planned(job, options, None, RUN))
            continue
        decision, earlier = decide(job, key["key"], force=force, retry_failed=retry_failed, retry_low_sync=retry_low_sync,
                                   min_sync_confidence=options.min_sync_confidence,
                                   allow_failed_frames=options.allow_failed_frames)
        planned.append(Planned(job, options, key, decision, earlier))
    return planned


def skipped_result(item: Planned) -> JobResult:
    """The summary line of a job not run now: done earlier, or failed earlier with that reason."""
    earlier = item.earlier or {}
    status = SKIPPED if item.decision == DONE else FAILED
    reason = "done earlier (same inputs and options; --force redoes it)" if item.decision == DONE else \
        f"failed earlier: {earlier.get('error')} (--retry-failed reruns it)"
    if earlier.get("status") == STATUS_LOW_SYNC:
        reason = f"done earlier, {earlier.get('error')} (--retry-low-sync reruns it)"
    return _result(item.job, status, outcome=earlier.get("status", ""), reason=reason,
                   frames=earlier.get("frames_out", 0), frames_failed=earlier.get("frames_failed", 0),
                   exit_code=ExitCode.ERROR if item.decision == FAILED_BEFORE else earlier.get("exit_code", 0),
                   **sync_figures(earlier.get("sync")))


def sync_figures(sync: dict | None) -> dict:
    """A report's ``sync`` block as the summary's two columns (None where not scored)."""
    sync = sync or {}
    return {"sync_confidence": sync.get("confidence"), "sync_distance": sync.get("distance")}


def execute(lipsync, job: Job, clip: ClipOptions, key: dict | None, progress=None, worker: str | None = None) -> JobResult:
    """Run one job on ``lipsync``; its result whatever happens (an interruption propagates)."""
    from ..runtime.generators.chain import describe

    tic = time.perf_counter()
    try:
        for folder in {job.output.parent, job.report_path.parent}:
            try:
                folder.mkdir(parents=True, exist_ok=True)  # a batch writes a tree of outputs
            except OSError as exc:
                raise LatentmuseError(f"cannot create the output folder {folder} ({exc.strerror or exc}).",
                                      "choose an output path in a writable folder.") from None
        report = lipsync(job.video, job.output, job.audio, job.report_path, clip, progress=progress, job=key)
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - one job's failure is its result, never the batch's end
        reason = str(exc) if isinstance(exc, LatentmuseError) else describe(exc)
        return failed_result(job, reason, seconds=time.perf_counter() - tic, worker=worker)
    flagged = report.status in (STATUS_FAILED_FRAMES, STATUS_LOW_SYNC)
    return _result(job, DONE_NOW, outcome=report.status, reason=report.error if flagged else None,
                   frames=report.frames_out, frames_failed=report.frames_failed, seconds=time.perf_counter() - tic,
                   face_cache=report.face_cache, latent_cache=report.latent_cache, worker=worker, exit_code=report.exit_code,
                   **sync_figures(report.sync))


def _result(job: Job, status: str, **values) -> JobResult:
    return JobResult(job.where, str(job.video), None if job.audio is None else str(job.audio), str(job.output),
                     str(job.report_path), status, **values)


def failed_result(job: Job, reason: str, **values) -> JobResult:
    """A job that ended in an error (in its run, or its worker lost past Ray's retries)."""
    return _result(job, FAILED, outcome="error", reason=reason, exit_code=ExitCode.ERROR, **values)


def not_run(job: Job) -> JobResult:
    return _result(job, NOT_RUN, reason="not reached: the batch was interrupted")


class StopCheck:
    """The progress a worker's job reports to (a Ray actor's, a service worker's): no display, but each
    step raises :class:`~latentmuse.outcomes.Interrupted` once ``stop`` is set, so the job stops at its
    next frame and its writer deletes its temporary files, as in a local interrupt."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def check(self) -> None:
        if self.stop.is_set():
            raise Interrupted(15)

    def start(self, stage: str, total: int | None) -> None:
        self.check()

    def advance(self, stage: str, amount: int = 1) -> None:
        self.check()

    def status(self, text: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def run_local(planned: list[Planned], summary: BatchSummary, make_lipsync: Callable[[], object], progress,
              on_result: Callable[[JobResult], None] = lambda result: None) -> BatchSummary:
    """Every job in order on one ``LipSync`` (made only if some job runs), filling ``summary``."""
    tic = time.perf_counter()
    progress.start("jobs", len(planned))
    lipsync = None
    results: dict[int, JobResult] = {}
    try:
        for index, item in enumerate(planned):
            if item.decision != RUN:
                results[index] = skipped_result(item)
            else:
                if lipsync is None:
                    load_tic = time.perf_counter()
                    lipsync = make_lipsync()
                    summary.load_seconds = time.perf_counter() - load_tic
                progress.note(f"job {index + 1}/{len(planned)}: {item.job.where}")
                results[index] = execute(lipsync, item.job, item.clip, item.key, progress)
            on_result(results[index])
            progress.advance("jobs")
    except (Interrupted, KeyboardInterrupt) as exc:
        summary.interrupted = str(exc) or "interrupted by SIGINT"
    finally:
        if lipsync is not None:
            lipsync.close()
        summary.jobs = [results.get(i) or not_run(item.job) for i, item in enumerate(planned)]
        summary.seconds = time.perf_counter() - tic
    return summary
