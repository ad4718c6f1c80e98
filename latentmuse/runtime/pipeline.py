"""One clip, start to end: checks, the report on every outcome, and the stream that makes the video.

A run (:meth:`~latentmuse.runtime.lipsync.LipSync.run`) is :func:`reporting` around three steps:
:func:`~.checks.check_inputs` (each input file looked at once), the session (loaded once per
``LipSync``, after the inputs check out), and :func:`run_clip`, which wires the stream (runtime/stream.py): the video
decoded once in output order, faces found just ahead of the generator, windows planned as the faces
arrive, every output frame written exactly once, in order, as soon as it is ready. The generator
chain sends a window LatentSync cannot serve to MuseTalk (docs/GENERATORS.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import fields

from ..errors import LatentmuseError
from ..progress import Progress, SilentProgress
from . import media
from .audio import AudioFeatures
from .cachekeys import face_cache_key, latent_session
from .checks import ClipInputs, check_options
from .facecache import FaceCache, FaceTrack
from .heap import HeapTrimmer
from .options import LoadOptions, RunOptions
from .overlap import BackgroundSink, Prefetch
from .report import RunReport, finished, gate_sync, report_faces, stopped, warner
from .runner_set import SMOKE, SMOKE_WARNING
from .session import Session, sync_off_reason
from .stream import FaceStage, StreamCounts, generate_stream
from .sync import ClipScorer, SyncTap
from .tracking import FaceTracker, parse_face_policy

#: Frames the face stage may run ahead of the generator (beyond its current detection batch).
FACE_LOOKAHEAD = 16


@contextlib.contextmanager
def reporting(options: RunOptions, progress: Progress, job: dict | None = None) -> Iterator[RunReport]:
    """The clip's report, filled by the block and written (``options.report``) on every outcome.

    The options and output paths are checked first (:func:`~.checks.check_options`): an error there
    comes before the report's path is known good and writes none. Any later error or interruption
    (:class:`~latentmuse.outcomes.Interrupted`) propagates after the report is written with status
    error or interrupted; a complete video ends ok or failed_frames.
    """
    check_options(options)
    report = RunReport(
        video=str(options.video), audio=str(options.audio_source), output=str(options.output), frames_in=0,
        frames_out=0, weights=str(options.load.weights), seed=options.clip.seed,
        face=str(parse_face_policy(options.clip.face)), min_face_size=options.clip.min_face_size, job=job,
    )
    try:
        yield report
    except BaseException as exc:
        stopped(report, exc)
        if options.report is not None:
            try:
                report.write(options.report)
            except LatentmuseError as write_error:  # the run's own error is the one to show
                progress.note(str(write_error))
        raise
    finished(report, options.clip.allow_failed_frames)
    if options.report is not None:
        report.write(options.report)


def describe_inputs(report: RunReport, inputs: ClipInputs) -> None:
    info = inputs.info
    report.frames_in, report.frames_out = info.frame_count, inputs.n_out
    report.fps = f"{info.fps.numerator}/{info.fps.denominator}"
    report.audio_seconds = round(len(inputs.waveform) / 16_000, 3)


def check_gate(options: RunOptions, scored: bool) -> None:
    """A quality gate needs the score: a gate over clips that are not scored would pass them all silently."""
    if options.clip.min_sync_confidence is not None and not scored:
        raise LatentmuseError(f"--min-sync-confidence {options.clip.min_sync_confidence} needs the lip-sync score, which "
                              f"is off (--sync-score {options.load.sync_score}; {sync_off_reason(options.load)}).",
                              "put syncnet_v2.model in the weights folder (`latentmuse weights download --model syncnet`) "
                              "or drop --min-sync-confidence.")


def check_session(options: RunOptions, session: Session) -> None:
    """The clip's load-time options must be the session's."""
    if session.load != options.load:
        difference = ", ".join(f"{f.name} {getattr(options.load, f.name)} not {getattr(session.load, f.name)}"
                               for f in fields(LoadOptions) if getattr(session.load, f.name) != getattr(options.load, f.name))
        raise LatentmuseError(f"this clip's load-time options differ from the loaded models' ({difference}).",
                              "set them when loading (LipSync.from_weights), or load again.")


def run_clip(options: RunOptions, inputs: ClipInputs, session: Session, report: RunReport, started: float,
             progress: Progress | None = None, sink: media.FrameSink | None = None) -> None:
    """Make the clip's video on ``session``, filling ``report`` as it goes (a stopped run reports how
    far it got). ``started``: the run's start (``time.perf_counter()``), for ``first_frame_seconds``.
    ``sink`` replaces the video writer (tests pass a lossless in-memory sink)."""
    progress = progress or SilentProgress()
    clip, info, stages = options.clip, inputs.info, report.stages
    warn = warner(report, progress)
    check_session(options, session)
    check_gate(options, session.scores_sync)
    if str(options.load.weights) == SMOKE:
        warn(SMOKE_WARNING)
    if info.variable_frame_rate:
        warn(f"variable frame rate input: treated as constant {report.fps} fps (its average rate).")

    # the face pass so far: a cache entry of any length (its frames are not detected again)
    front_end = session.front_end.for_clip(clip.min_face_size, info.width, info.height)
    cache = face_key = known = None
    if clip.cache is not None:
        cache = FaceCache(clip.cache, warn)
        face_key = face_cache_key(clip, session, session.digests.sha256(options.video), front_end.settings)
        known = cache.lookup(face_key)
    n_frames = inputs.n_frames
    report.face_cache = "off" if cache is None else "miss" if known is None else "hit" if len(known) >= n_frames else "partial"
    if known is not None and len(known) >= n_frames:
        known = known.prefix(n_frames)  # a full hit: nothing is detected, the tracker is not needed
        tracker = FaceTracker(clip.face, clip.min_face_size)
    else:  # a partial hit resumes the tracker after the entry's last frame
        tracker = known.tracker() if known is not None else FaceTracker(clip.face, clip.min_face_size)

    def on_step() -> None:
        progress.advance("steps")

    latents = latent_session(clip, session, face_key, n_frames, warn)
    tap = None
    try:
        chain = session.build_chain(clip, latents, progress.note, on_step)
        settings = session.latentsync_settings(clip) if session.kind == "latentsync" else None
        if settings is not None:
            report.steps, report.guidance, report.resolution, report.deepcache = (
                settings.steps, settings.guidance, settings.resolution, settings.deepcache)
            if settings.resolution != session.models.native_resolution:
                warn(f"LatentSync {session.models.latentsync_version} weights were trained at "
                     f"{session.models.native_resolution} px; running them at {settings.resolution} px.")
            if chain.primary is None:
                warn(f"LatentSync unavailable ({chain.unavailable}): every window goes to MuseTalk.")
        report.device, report.face_detector, report.generator = str(session.device), front_end.name, chain.name
        report.backend, report.precision = session.backend, session.precision

        features = AudioFeatures(inputs.waveform, info.fps, session.models["whisper_encoder"], session.models["whisper_post_ln"])
        heap = HeapTrimmer()  # long clips: freed frame buffers go back to the system (runtime/heap.py)
        faces = FaceStage(front_end, tracker, chain.usable, clip.face_batch_size, known or FaceTrack(), heap, progress)
        counts = StreamCounts()
        n_out = inputs.n_out
        progress.start("faces", max(0, n_frames - (len(known) if known is not None else 0)))
        progress.start("generate", n_out)
        progress.start("windows", None)
        if settings is not None and chain.primary is not None:
            progress.start("steps", None)
        if session.scores_sync:
            scorer = ClipScorer(inputs.waveform, info.fps, session.sync_embedder(), clip.sync_min_run)
            tap = SyncTap(scorer)
        tic = time.perf_counter()
        encoder = None
        # Entered as soon as it exists (nothing runs in between): any exception or signal from here on
        # unwinds through the writer's __exit__, which deletes its temporary file. Decoding, face
        # detection and encoding run on their own threads, joined to this one by bounded queues
        # (runtime/overlap.py); they are stopped and joined before the writer's __exit__ runs.
        try:
            with (sink if sink is not None else media.VideoWriter(
                    options.output, info.width, info.height, info.fps, inputs.audio, codec=clip.codec,
                    sample_aspect_ratio=info.sample_aspect_ratio,
                  )) as writer, media.FrameSource(options.video, info) as source, \
                    BackgroundSink(writer if tap is None else tap.over(writer)) as encoder, \
                    Prefetch(source.frames(inputs.schedule)) as decoded, \
                    Prefetch(faces.jobs(decoded, inputs.schedule), depth=FACE_LOOKAHEAD, name="faces") as jobs:
                for _, frame, face in generate_stream(jobs, chain, features, n_out, progress, counts):
                    if tap is not None:
                        tap.expect(face)
                    encoder.write(frame)
                    if report.first_frame_seconds is None:
                        report.first_frame_seconds = round(time.perf_counter() - started, 3)
                    progress.advance("generate")
                    heap.tick()
        finally:
            if encoder is not None:
                report.frames_written = encoder.frames_written  # encoded, not just handed over
            stages["faces"] = faces.seconds
            stages["audio_features"] = features.seconds_spent
            stages["generate_and_write"] = time.perf_counter() - tic
        if tap is not None:
            report.sync = gate_sync(tap.result(), clip.min_sync_confidence, warn)
            stages["sync_score"] = tap.scorer.result.seconds
        if latents is not None:  # the output is whole: what this run encoded is worth keeping
            report.latent_cache = latents.status
            latents.finish()
    finally:
        if latents is not None:
            latents.close()

    track = faces.track
    if cache is not None and faces.detected:
        track.checkpoint(faces.tracker)  # the tracker's state at the end, so a longer run can extend it
        cache.put(face_key, track, options.video)
    report_faces(report, track, inputs.schedule, warn)
    for name, clock in chain.clocks.items():
        for stage, seconds in clock.seconds.items():
            stages[f"generate.{name}.{stage}"] = seconds
    report.runners = session.models.report()  # after the run: says whether the PyTorch fallback UNet was loaded
    report.windows = counts.windows
    report.frames_by_generator = dict(chain.frames_by_generator)
    report.frames_processed = sum(chain.frames_by_generator.values())
    report.frames_no_face = counts.no_face
    report.frames_failed = chain.frames_failed
    report.frames_passthrough = n_out - report.frames_processed
    report.fallbacks = chain.fallbacks
    report.retries = chain.retries
    report.stages = {k: round(v, 3) for k, v in stages.items()}


__all__ = ["RunOptions", "RunReport", "check_gate", "check_session", "describe_inputs", "reporting", "run_clip"]
