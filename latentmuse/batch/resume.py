"""Resuming a batch: which jobs are already done, which failed before, which are still to run.

A job's *key* is the sha256 of what decides its output: the video's and the audio's contents (not
their names or dates), its effective per-clip options, the batch's load-time options and this
version of latentmuse. It is stored in the job's report (``job.key``). On a rerun a job is

- ``done`` (skipped) when its report has the same key, says ok or failed_frames (a complete video),
  and its output exists;
- ``failed`` (skipped, its earlier reason repeated) when its report has the same key and says error:
  the same inputs and options would fail the same way; ``--retry-failed`` runs it (and reruns
  failed_frames jobs), e.g. after a driver or disk fault is fixed;
- a low_sync job (a complete video below ``--min-sync-confidence``) counts as done: rerunning it with
  the same seed gives the same video; ``--retry-low-sync`` reruns it (e.g. after changing the
  generator's weights in place), ``--retry-failed`` does not. The gate is not part of the key: a
  done job's recorded score is judged again against the gate of this batch (:func:`rejudge`), so
  raising or lowering ``--min-sync-confidence`` regenerates nothing;
- to run otherwise: new, changed (any input byte or option), interrupted, or its output deleted.
  ``--force`` runs every job.

The weights enter the key by their folder's path, not their content (hashing gigabytes per batch
would cost more than most jobs): after replacing weights in place, use ``--force``.
"""

from __future__ import annotations

import hashlib
import json

from .. import __version__
from ..files import Digests
from ..outcomes import STATUS_ERROR, STATUS_FAILED_FRAMES, STATUS_LOW_SYNC, STATUS_OK
from ..runtime.options import ClipOptions, LoadOptions, options_to_dict
from ..runtime.report import RunReport, finished, gate_sync
from .jobs import Job

RUN, DONE, FAILED_BEFORE = "run", "done", "failed"


def job_key(job: Job, load: LoadOptions, clip: ClipOptions, digests: Digests) -> dict:
    """The job's key and the content hashes behind it (the report's ``job`` entry)."""
    video = digests.sha256(job.video)
    audio = digests.sha256(job.audio) if job.audio is not None else None
    options = {k: v for k, v in options_to_dict(clip).items() if k not in ("cache", "min_sync_confidence")}
    loading = options_to_dict(load)
    text = json.dumps({"video": video, "audio": audio, "clip": options, "load": loading, "version": __version__},
                      sort_keys=True)
    return {"key": hashlib.sha256(text.encode()).hexdigest(), "video_sha256": video, "audio_sha256": audio}


def previous_report(job: Job) -> dict | None:
    """The job's report from an earlier run, or None (absent or unreadable: the job runs)."""
    try:
        return json.loads(job.report_path.read_text())
    except (OSError, ValueError):
        return None


def rejudge(earlier: dict, min_confidence: float | None, allow_failed_frames: bool = False) -> dict | None:
    """An earlier report of a complete video with its lip-sync verdict for ``min_confidence`` (status,
    error, exit code and the ``sync`` block's gate, as :func:`~latentmuse.runtime.report.finished`
    gives them); None when it cannot be judged: a gate is asked for and the report has no score (the
    job runs, and scores or says why it cannot)."""
    sync = earlier.get("sync")
    if sync is None:
        return None if min_confidence is not None else earlier
    report = RunReport(**{k: v for k, v in earlier.items() if k in RunReport.__dataclass_fields__})
    report.sync = gate_sync(sync, min_confidence, lambda message: None)
    finished(report, allow_failed_frames)
    return {**earlier, "status": report.status, "error": report.error, "exit_code": int(report.exit_code),
            "sync": report.sync}


def decide(job: Job, key: str, *, force: bool = False, retry_failed: bool = False,
           retry_low_sync: bool = False, min_sync_confidence: float | None = None,
           allow_failed_frames: bool = False) -> tuple[str, dict | None]:
    """``run``, ``done`` or ``failed`` (see the module docstring), and the earlier report (a complete
    video's judged against ``min_sync_confidence``; ``allow_failed_frames`` is the job's, in its key)."""
    if force:
        return RUN, None
    earlier = previous_report(job)
    if earlier is None or (earlier.get("job") or {}).get("key") != key:
        return RUN, earlier
    if earlier.get("status") in (STATUS_OK, STATUS_FAILED_FRAMES, STATUS_LOW_SYNC):
        judged = rejudge(earlier, min_sync_confidence, allow_failed_frames)
        if judged is None:
            return RUN, earlier
        earlier = judged
    status = earlier.get("status")
    if status in (STATUS_OK, STATUS_FAILED_FRAMES, STATUS_LOW_SYNC) and job.output.is_file():
        if (status == STATUS_FAILED_FRAMES and retry_failed) or (status == STATUS_LOW_SYNC and retry_low_sync):
            return RUN, earlier
        return DONE, earlier
    if status == STATUS_ERROR and not retry_failed:
        return FAILED_BEFORE, earlier
    return RUN, earlier
