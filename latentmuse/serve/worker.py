"""The service's worker: one loaded ``LipSync``, one job at a time, its progress streamed back.

Ray Serve runs it as a deployment with one replica per GPU (``max_ongoing_requests=1``: a replica
takes its next job only when the last one ended; Serve holds the others in its queue and routes each
to the first free replica). :meth:`JobWorker.run` is an async generator: the job runs in the
replica's one job thread exactly as a batch job does (batch/driver.py: the resume key decides,
``execute`` runs it), while the generator yields what the ingress records: ``started``, then
``progress`` (frames written of frames to write) at most every :data:`PROGRESS_EVERY_S`, then the
``result``. A cancelled request (``DELETE /v1/jobs/ID``) arrives as ``asyncio.CancelledError``: the
job is told to stop at its next frame (its writer deletes its temporary files); the ingress deletes
the job's folder.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from ..batch.driver import StopCheck, execute, plan, skipped_result
from ..batch.jobs import Job
from ..batch.resume import RUN, previous_report
from ..files import Digests
from ..runtime.options import ClipOptions, LoadOptions, options_from_dict
from .intake import remove_folder

#: the longest a running job goes without a progress event
PROGRESS_EVERY_S = 0.5


class FrameProgress(StopCheck):
    """A job's progress: the frames of its ``generate`` stage (each written frame), and the stop flag."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(stop)
        self.done, self.total = 0, None

    def start(self, stage: str, total: int | None) -> None:
        super().start(stage, total)
        if stage == "generate":
            self.done, self.total = 0, total

    def advance(self, stage: str, amount: int = 1) -> None:
        super().advance(stage, amount)
        if stage == "generate":
            self.done += amount


class JobWorker:
    """A loaded ``LipSync`` (of ``load``, a :class:`LoadOptions` as a dict) serving jobs one at a time.
    ``cpu_threads``: torch's threads on a CPU replica (one core each); ``lipsync``: an already loaded
    one (tests)."""

    def __init__(self, load: dict, cpu_threads: int | None = None, lipsync=None) -> None:
        self.cpu_threads = cpu_threads
        self._threads()
        from ..runtime.lipsync import LipSync

        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.load = options_from_dict(LoadOptions, load)
        self.digests = Digests()
        self.lipsync = lipsync if lipsync is not None else LipSync(self.load, digests=self.digests)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="latentmuse-job")

    async def run(self, job: dict, clip: dict):
        """One job (``Job.to_dict()``, its effective ``ClipOptions`` as a dict): yields ``started``,
        ``progress`` events and the ``result`` (the batch summary's line for it, and its run report)."""
        stop = threading.Event()
        progress = FrameProgress(stop)
        the_job = Job.from_dict(job)
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, self._run, the_job, options_from_dict(ClipOptions, clip), progress)
        try:
            yield {"event": "started", "worker": self.name}  # inside: a cancel may arrive at any yield
            last = None
            while not future.done():
                await asyncio.wait({future}, timeout=PROGRESS_EVERY_S)
                now = (progress.done, progress.total)
                if now != last and not future.done():
                    last = now
                    yield {"event": "progress", "frames_done": progress.done, "frames_total": progress.total}
            result, report = future.result()
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait({future})  # the job stops at its next frame; its writer cleans up
            future.exception()
            if not the_job.video.exists():
                # DELETE removed the job with its uploads while it started here: what it wrote since goes too.
                # (A stop of the service keeps everything: the job resumes at the next start.)
                remove_folder(the_job.output.parent)
            raise
        yield {"event": "result", "result": result, "report": report}

    def _run(self, job: Job, clip: ClipOptions, progress: FrameProgress) -> tuple[dict, dict | None]:
        """The batch's steps for one job: its key decides (a complete earlier result is kept, not redone:
        a job requeued after its video was written), else it runs; its result and report."""
        self._threads()  # this thread's own: torch's thread count is set per calling thread
        item = plan([job], self.load, clip, self.digests, retry_failed=True)[0]
        if item.decision == RUN:
            result = execute(self.lipsync, job, item.clip, item.key, progress, self.name)
        else:
            result = skipped_result(item)
            result.worker = self.name
        return asdict(result), previous_report(job)

    def _threads(self) -> None:
        if self.cpu_threads:
            import torch

            torch.set_num_threads(self.cpu_threads)

    def check_health(self) -> None:
        """Ray Serve's health check: a closed ``LipSync`` cannot serve."""
        self.lipsync.session()

    def __del__(self) -> None:
        lipsync = getattr(self, "lipsync", None)
        if lipsync is not None:
            lipsync.close()
