"""The run report: what a clip's run did, written on every outcome once its path is known good (the
README lists its fields)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import LatentmuseError
from ..files import atomic_write
from ..outcomes import (STATUS_ERROR, STATUS_FAILED_FRAMES, STATUS_INTERRUPTED, STATUS_LOW_SYNC, STATUS_OK, ExitCode,
                        Interrupted)
from ..progress import Progress
from .facecache import FaceTrack
from .generators.chain import PASSTHROUGH, describe
from .runner_set import SMOKE
from .tracking import DEFAULT_MIN_FACE_SIZE, DUBBED, LOST, OVERLAP, TOO_SMALL


@dataclass
class RunReport:
    """What a run did, written as JSON (``--report``) on every outcome once the report path is known
    good: ``status`` is ok | failed_frames | low_sync | error | interrupted, ``error`` its one line (None when
    ok), ``exit_code`` the code the CLI exits with (:class:`~latentmuse.outcomes.ExitCode`), and
    ``frames_written`` the frames encoded so far (all of ``frames_out`` unless the run stopped early;
    a stopped run's output is deleted, so they exist nowhere)."""

    video: str
    audio: str
    output: str
    frames_in: int
    frames_out: int
    status: str = STATUS_OK
    error: str | None = None
    exit_code: int = ExitCode.OK
    frames_written: int = 0
    frames_processed: int = 0
    frames_passthrough: int = 0
    frames_no_face: int = 0
    frames_failed: int = 0
    face: str = "largest"  # the --face policy
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    dubbed_face: dict | None = None  # policy, first_frame (input index), box, score; None: no face was dubbed
    faces_seen: int = 0  # faces tracked (every distinct face in view, and detector false positives)
    frames_face_lost: int = 0  # after the choice, the dubbed face not found or overlapping another
    frames_face_too_small: int = 0  # faces below min_face_size
    face_passthrough: dict[str, int] = field(default_factory=dict)  # reason -> frames; sums to frames_no_face
    face_cache: str = "off"  # hit | miss | off (runtime/facecache.py)
    latent_cache: str = "off"  # MuseTalk's VAE latents: hit | partial | miss | unused | off (runtime/latentcache.py)
    frames_by_generator: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    fps: str = ""
    audio_seconds: float = 0.0
    generator: str = "musetalk"
    backend: str = "torch"  # one backend name, or "mixed" (see runners)
    precision: str = "fp32"
    face_detector: str = ""
    device: str = "cpu"
    weights: str = SMOKE
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    deepcache: bool | None = None
    seed: int = 0
    fallbacks: list[dict] = field(default_factory=list)
    retries: list[dict] = field(default_factory=list)  # windows retried with a smaller batch after running out of memory
    runners: dict[str, dict] = field(default_factory=dict)  # role -> graph, backend, reason, skipped
    #: Seconds from the start of the run (the clip's checks; the load too when it is the first clip of a
    #: lazy load) to the first frame handed to the encoder; None when no frame was.
    first_frame_seconds: float | None = None
    #: Seconds per stage. Stages overlap (faces are detected on their own thread while earlier frames
    #: are generated, decoding and encoding run on theirs), so they do not add up to the run's time.
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: The lip-sync score of the written frames (runtime/sync.py, docs/QUALITY.md); None when not scored
    #: (``--sync-score off``, or ``auto`` without SyncNet weights).
    sync: dict | None = None
    job: dict | None = None  # in a batch: the job's key and its inputs' sha256 (batch/resume.py)

    def write(self, path: Path) -> None:
        """Atomically, through a uniquely named temporary file beside ``path``: a reader (or a second
        run writing the same report) never sees half a file, and a crash leaves no fragment."""
        try:
            atomic_write(path, (json.dumps(asdict(self), indent=2) + "\n").encode())
        except OSError as exc:
            raise LatentmuseError(f"cannot write the report {path} ({exc.strerror or exc}).",
                                  "check free disk space and the folder's permissions.") from None


def stopped(report: RunReport, exc: BaseException) -> None:
    """Fill in how a run that raised ended: interrupted (by which signal) or error, with its one line."""
    if isinstance(exc, Interrupted):
        report.status, report.error, report.exit_code = STATUS_INTERRUPTED, str(exc), exc.exit_code
    elif isinstance(exc, KeyboardInterrupt):  # a caller without signals_as_interrupts
        report.status, report.error, report.exit_code = STATUS_INTERRUPTED, "interrupted by SIGINT", ExitCode.SIGINT
    else:
        line = str(exc) if isinstance(exc, LatentmuseError) else describe(exc)
        report.status, report.error, report.exit_code = STATUS_ERROR, line, ExitCode.ERROR
    report.stages = {k: round(v, 3) for k, v in report.stages.items()}


def finished(report: RunReport, allow_failed_frames: bool) -> None:
    """A complete video: ok; failed_frames (exit 3 unless accepted) with how many and why; or low_sync
    (exit 4) when its lip-sync confidence is below the gate (failed frames not accepted come first)."""
    low_sync = report.sync is not None and report.sync.get("passed") is False
    if report.frames_failed and (not allow_failed_frames or not low_sync):
        report.status = STATUS_FAILED_FRAMES
        report.error = failed_frames_line(report)
        report.exit_code = ExitCode.OK if allow_failed_frames else ExitCode.FAILED_FRAMES
    elif low_sync:
        report.status, report.error, report.exit_code = STATUS_LOW_SYNC, low_sync_line(report.sync), ExitCode.LOW_SYNC
    else:
        report.status, report.error, report.exit_code = STATUS_OK, None, ExitCode.OK


def gate_sync(sync: dict, min_confidence: float | None, warn: Callable[[str], None]) -> dict:
    """The ``sync`` block with the gate's verdict: ``passed`` True / False, or None when not gated (no
    gate, or nothing scored: a clip with no scorable run says so and is not gated)."""
    sync = {**sync, "min_confidence": min_confidence, "passed": None}
    if sync["status"] == "error":
        warn(f"lip-sync score failed ({sync['error']}): the video is written, not scored"
             + (", so not gated." if min_confidence is not None else "."))
    elif sync["status"] != "scored":
        if min_confidence is not None:
            warn(f"lip sync not scored: no run of the dubbed face of {sync['min_run']} frames or more "
                 f"({sync['runs_too_short']} shorter); not gated by --min-sync-confidence.")
    elif min_confidence is not None:
        sync["passed"] = sync["confidence"] >= min_confidence
    return sync


def low_sync_line(sync: dict) -> str:
    """One line: the clip's lip-sync confidence against the gate, and where it is weakest."""
    weakest = sync.get("weakest") or {}
    where = (f"; weakest at frames {weakest['first_frame']}-{weakest['last_frame']} (LSE-C {weakest['confidence']:.2f})"
             if weakest else "")
    return (f"lip-sync confidence (LSE-C) {sync['confidence']:.2f} is below --min-sync-confidence "
            f"{sync['min_confidence']:g} (LSE-D {sync['distance']:.2f}, offset {sync['offset_frames']:+d} frames, "
            f"{sync['frames_scored']} frames scored{where})")


def failed_frames_line(report: RunReport) -> str:
    """One line: how many process frames every generator failed on, and each reason with its count."""
    reasons = "; ".join(f"{f['generator']}: {f['reason']} ({f['count']} frames)" for f in report.fallbacks
                        if f["to"] == PASSTHROUGH)
    return (f"{report.frames_failed} of {report.frames_out} frames failed every generator and were passed "
            f"through unchanged ({reasons or 'no reason recorded'})")


def warner(report: RunReport, progress: Progress):
    def warn(message: str) -> None:
        report.warnings.append(message)
        progress.note(message)

    return warn


def report_faces(report: RunReport, track: FaceTrack, schedule, warn: Callable[[str], None]) -> None:
    """Which face was dubbed and why every other frame passed through, counted in output frames."""
    counts = track.counts(schedule)
    report.dubbed_face = track.dubbed.to_dict() if track.dubbed is not None else None
    report.faces_seen = track.faces_seen
    report.frames_face_lost = counts[LOST] + counts[OVERLAP]
    report.frames_face_too_small = counts[TOO_SMALL]
    report.face_passthrough = {status: n for status, n in counts.items() if status != DUBBED and n}
    if track.dubbed is not None and track.dubbed.note:
        warn(f"{track.dubbed.note} (at {report.dubbed_face['box']}, input frame {track.dubbed.first_frame}).")
    if report.frames_face_too_small:
        warn(f"{report.frames_face_too_small} frames passed through: the face is smaller than --min-face-size "
             f"{report.min_face_size} px (detector box height); lower it to dub them.")
