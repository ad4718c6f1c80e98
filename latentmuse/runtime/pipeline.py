"""The staged pipeline: validate, load, audio features, faces, generate + write, report.

Memory is bounded by a window of frames, not by the video: faces are found in one streaming pass
that keeps only landmarks, and generation streams the frames again in output order (ping-pong runs
included) through the generator into the encoder. Every output frame is written exactly once, in
order: process frames blended, passthrough frames as read.

The generator decides which process frames it sees together (its windows) and how; the run holds a
:class:`~.generators.chain.GeneratorChain` that sends a window LatentSync cannot serve to MuseTalk
(docs/GENERATORS.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..choices import BACKENDS, FACE_DETECTORS, GENERATORS, PRECISIONS, RESOLUTIONS  # noqa: F401 - re-exported
from ..errors import LatentmuseError
from ..files import Digests, atomic_write
from ..outcomes import STATUS_ERROR, STATUS_FAILED_FRAMES, STATUS_INTERRUPTED, STATUS_OK, ExitCode, Interrupted
from . import media
from .audio import AudioFeatures
from .blending import FaceParser
from .contracts import Face, VideoInfo
from .datagen import FrameJob, Window, output_frame_count, ping_pong_schedule
from .faces import front_end_kind, make_front_end
from .generators.base import GenerationBatch
from .generators.chain import PASSTHROUGH, GeneratorChain, describe
from .generators.latentsync import LatentSyncGenerator, LatentSyncSettings
from .generators.musetalk import CROP, EXTRA_MARGIN, MuseTalkGenerator, crop_box
from .heap import HeapTrimmer
from .overlap import BackgroundSink, Prefetch
from .options import LoadOptions, RunOptions  # noqa: F401 - RunOptions re-exported
from ..models.layouts import LATENTSYNC_RESOLUTION, layout
from ..artifacts.manifest import MANIFEST_NAME
from ..runners.select import engines_dir
from ..runners.torch_runner import torch_dtype
from .models import SMOKE, SMOKE_WARNING, ModelSet, load_models, resolve_device, run_graphs, unet3d_weights, weights_version
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, uses_guidance
from .facecache import CacheKey, FaceCache, FaceTrack
from .latentcache import LatentCache, LatentKey, LatentSession
from .tracking import DEFAULT_MIN_FACE_SIZE, DUBBED, LOST, OVERLAP, TOO_SMALL, FaceTracker, TrackerSettings, parse_face_policy

#: Smoke weights are always drawn with this seed (``--seed`` is the sampling seed), so graphs exported
#: from ``smoke`` hold the very weights a smoke run computes with.
SMOKE_SEED = 0
PRECISION_NAMES = {torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


class Progress(Protocol):
    """What the pipeline reports while it works; the CLI shows it as rich progress bars."""

    def start(self, stage: str, total: int | None) -> None: ...
    def advance(self, stage: str, amount: int = 1) -> None: ...
    def note(self, message: str) -> None: ...


class SilentProgress:
    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass
class RunReport:
    """What a run did, written as JSON (``--report``) on every outcome once the report path is known
    good: ``status`` is ok | failed_frames | error | interrupted, ``error`` its one line (None when
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
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    job: dict | None = None  # in a batch: the job's key and its inputs' sha256 (batch/resume.py)

    def write(self, path: Path) -> None:
        """Atomically, through a uniquely named temporary file beside ``path``: a reader (or a second
        run writing the same report) never sees half a file, and a crash leaves no fragment."""
        try:
            atomic_write(path, (json.dumps(asdict(self), indent=2) + "\n").encode())
        except OSError as exc:
            raise LatentmuseError(f"cannot write the report {path} ({exc.strerror or exc}).",
                                  "check free disk space and the folder's permissions.") from None


def validate(options: RunOptions) -> tuple[VideoInfo, Path, np.ndarray]:
    """Every check that needs no model: fails fast, before anything heavy is loaded.

    :func:`run` makes the same checks in two steps (:func:`check_options`, then :func:`check_inputs`)
    so that it can write the report for any error after the report's path is known to be writable.
    """
    check_options(options)
    return check_inputs(options)


def check_options(options: RunOptions) -> None:
    """The options' values, then the output's and the report's paths (nothing is read or loaded)."""
    if options.batch_size < 1:
        raise LatentmuseError(f"--batch-size {options.batch_size} is not positive.", "use --batch-size 8.")
    check_load_options(options.load_options())
    _check_face_options(options)
    if not 1 <= options.steps <= 1000:
        raise LatentmuseError(f"--steps {options.steps} is outside 1..1000.", f"use --steps {DEFAULT_STEPS} (LatentSync's default).")
    inputs = [options.video] + ([options.audio] if options.audio is not None else [])
    media.check_output_path(options.output, inputs, extensions=media.OUTPUT_FORMATS)
    media.choose_codec(options.output, options.codec)  # the container takes it; its encoder exists
    if options.report is not None:
        media.check_output_path(options.report, inputs + [options.output])


def check_inputs(options: RunOptions) -> tuple[VideoInfo, Path, np.ndarray]:
    """The video's header and the whole audio track (decoded once, here): (info, audio path, samples)."""
    info = media.probe(options.video)
    parse_face_policy(options.face).check_frame(info.width, info.height)
    media.choose_codec(options.output, options.codec, (info.width, info.height))  # it can code this size
    audio_path = options.audio if options.audio is not None else options.video
    audio = media.load_audio(audio_path, what="video" if options.audio is None else "audio file")
    if output_frame_count(len(audio), info.fps) == 0:
        raise LatentmuseError(f"the audio in {audio_path} is shorter than one video frame.", "use a longer audio track.")
    return info, audio_path, audio


def choose_generator(options: RunOptions) -> str:
    """``auto``: LatentSync whenever the weights have a UNet3D (smoke weights do), else MuseTalk."""
    if options.generator != "auto":
        return options.generator
    return "latentsync" if unet3d_weights(options.weights) is not None else "musetalk"


def build_chain(options: RunOptions, kind: str, models: ModelSet, progress: Progress,
                on_step: Callable[[], None] | None = None) -> GeneratorChain:
    """The run's generator: MuseTalk alone, or LatentSync with MuseTalk as its window-level fallback
    (on the PyTorch MuseTalk UNet, loaded only if a window falls back)."""
    parser = FaceParser(models["bisenet"])
    unet = models.runners.get("musetalk_unet") or models.pytorch_runner("musetalk_unet")
    musetalk = MuseTalkGenerator(models["vae_encoder"], models["vae_decoder"], unet, parser,
                                 batch_size=options.batch_size)
    musetalk.defer_paste = True  # pasting runs in the encoder's thread (runtime/overlap.py)
    if kind == "musetalk":
        return GeneratorChain(musetalk, None, allow_fallback=options.fallback, note=progress.note)
    if not models.has_unet3d and not options.fallback:
        raise LatentmuseError(
            f"the LatentSync generator is unavailable: {models.unet3d_unavailable or 'no UNet3D runner was loaded'}.",
            "put latentsync_unet.pt into the weights folder (`latentmuse weights download`), "
            "or run without --no-fallback to use MuseTalk instead.",
        )
    primary = None
    if models.has_unet3d:
        primary = LatentSyncGenerator(models.runners, latentsync_settings(options, models.latentsync_version),
                                      on_step=on_step)
        primary.defer_paste = True
    unavailable = None if primary is not None else models.unet3d_unavailable or "no UNet3D runner was loaded"
    return GeneratorChain(primary, musetalk, unavailable=unavailable, primary_name="latentsync",
                          allow_fallback=options.fallback, note=progress.note)


def latentsync_settings(options: RunOptions, version: str) -> LatentSyncSettings:
    return LatentSyncSettings(resolution=resolution_for(options, version), steps=options.steps, guidance=options.guidance,
                              seed=options.seed, deepcache=options.deepcache, vae_batch=max(2 * options.batch_size, 16))


def resolution_for(options: LoadOptions | RunOptions, version: str) -> int:
    """The LatentSync crop size: the weights' native one for ``auto``."""
    return LATENTSYNC_RESOLUTION[version] if str(options.resolution) == "auto" else int(options.resolution)


def load_run_models(options: LoadOptions | RunOptions, kind: str, face_kind: str, device,
                    note: Callable[[str], None]) -> ModelSet:
    """The runners a load needs, each graph on the backend ``options.backend`` chooses for it."""
    roles = run_graphs(kind, resolution=resolution_for(options, weights_version(options.weights)),
                       guided=uses_guidance(options.guidance), deepcache=options.deepcache, face_detector=face_kind)
    return load_models(options.weights, device, roles, seed=SMOKE_SEED, backend=options.backend,
                       engines=options.engines, precision=options.precision, note=note,
                       trust_torchscript=options.trust_torchscript)


@dataclass
class Session:
    """Everything loaded once and shared by the clips of a load: the runners, the face front end,
    the generator kind and the device (:class:`~latentmuse.runtime.lipsync.LipSync` holds one).

    ``owned``: the session loaded its models and closes them; models handed in (tests, the bench)
    belong to the caller.
    """

    load: LoadOptions
    models: ModelSet
    kind: str
    device: torch.device
    front_end: object
    seconds: float = 0.0
    owned: bool = True
    digests: Digests = field(default_factory=Digests)  # content hashes of the clips' files, computed once

    def close(self) -> None:
        if self.owned:
            self.models.close()


def check_load_options(load: LoadOptions) -> None:
    """Load-time values, before anything is loaded."""
    for value, allowed, flag in ((load.generator, GENERATORS, "--generator"), (load.backend, BACKENDS, "--backend"),
                                 (load.face_detector, FACE_DETECTORS, "--face-detector"),
                                 (load.precision, PRECISIONS, "--precision"),
                                 (str(load.resolution), RESOLUTIONS, "--resolution")):
        if value not in allowed:
            raise LatentmuseError(f"{flag} {value} is not known.", f"use one of {', '.join(allowed)}.")
    if not (math.isfinite(load.guidance) and load.guidance >= 1.0):
        raise LatentmuseError(
            f"--guidance {load.guidance} is below 1.",
            f"use --guidance 1 to turn classifier-free guidance off, or {DEFAULT_GUIDANCE} (LatentSync's default).",
        )


def open_session(load: LoadOptions, note: Callable[[str], None], models: ModelSet | None = None) -> Session:
    """Load what every clip of ``load`` needs (``models`` instead of loading them: not owned)."""
    tic = time.perf_counter()
    check_load_options(load)
    device = resolve_device(load.device)
    torch_dtype(load.precision, device)  # a precision this device cannot run fails before any loading
    kind = choose_generator(load)
    weights_root = None if str(load.weights) == SMOKE else Path(load.weights)
    face_kind = front_end_kind(load.face_detector, weights_root if weights_root and weights_root.is_dir() else None)
    owned = models is None
    if models is None:
        models = load_run_models(load, kind, face_kind, device, note)
    front_end = make_front_end(face_kind, models.weights_root, device, models.runners)
    return Session(load, models, kind, device, front_end, time.perf_counter() - tic, owned)


def backend_summary(models: ModelSet) -> str:
    """One backend name when every selected graph got it, else ``mixed`` (the report's ``runners`` say which)."""
    used = {c.backend for c in models.choices.values()}
    return used.pop() if len(used) == 1 else "mixed" if used else "torch"


def run(options: RunOptions, progress: Progress | None = None, sink: media.FrameSink | None = None,
        models: ModelSet | None = None) -> RunReport:
    """Lip-sync ``options.video`` to its audio (or ``options.audio``) and write ``options.output``:
    one clip, loading its models after the inputs check out (and closing them after).

    ``sink`` replaces the video writer (tests pass a lossless in-memory sink); ``models`` replaces
    loading from ``options.weights`` (already loaded models, or the tests' stand-in runners). For
    many clips on one load, use :class:`~latentmuse.runtime.lipsync.LipSync`.

    Returns the report, whose ``status`` is ok or failed_frames (the video is complete either way;
    failed frames are passed through). Any error or interruption (:class:`~latentmuse.outcomes.Interrupted`)
    propagates after the report is written with status error or interrupted; the writer has then
    deleted its temporary files, so nothing is left at ``options.output``. Errors in the options or
    the output paths (:func:`check_options`) come before the report can be written and write none.
    """
    holder: list[Session] = []

    def session(note: Callable[[str], None]) -> Session:
        if not holder:
            holder.append(open_session(options.load_options(), note, models))
        return holder[0]

    try:
        return run_clip(options, session, progress, sink)
    finally:
        if holder:
            holder[0].close()


def run_clip(options: RunOptions, session: Callable[[Callable[[str], None]], Session],
             progress: Progress | None = None, sink: media.FrameSink | None = None, job: dict | None = None) -> RunReport:
    """One clip on the session ``session(note)`` returns (asked for once the clip's inputs check out,
    so a bad input costs no load); see :func:`run` for the outcomes. ``job``: the batch's key for
    this clip, kept in the report (batch/resume.py)."""
    progress = progress or SilentProgress()
    tic = time.perf_counter()
    check_options(options)
    report = RunReport(
        video=str(options.video), audio=str(options.audio if options.audio is not None else options.video),
        output=str(options.output), frames_in=0, frames_out=0, weights=str(options.weights), seed=options.seed,
        face=str(parse_face_policy(options.face)), min_face_size=options.min_face_size, job=job,
    )
    try:
        _run(options, report, progress, sink, session, tic)
    except BaseException as exc:
        _stopped(report, exc)
        if options.report is not None:
            try:
                report.write(options.report)
            except LatentmuseError as write_error:  # the run's own error is the one to show
                progress.note(str(write_error))
        raise
    _finished(report, options.allow_failed_frames)
    if options.report is not None:
        report.write(options.report)
    return report


def _stopped(report: RunReport, exc: BaseException) -> None:
    """Fill in how a run that raised ended: interrupted (by which signal) or error, with its one line."""
    if isinstance(exc, Interrupted):
        report.status, report.error, report.exit_code = STATUS_INTERRUPTED, str(exc), exc.exit_code
    elif isinstance(exc, KeyboardInterrupt):  # a caller without signals_as_interrupts
        report.status, report.error, report.exit_code = STATUS_INTERRUPTED, "interrupted by SIGINT", ExitCode.SIGINT
    else:
        line = str(exc) if isinstance(exc, LatentmuseError) else describe(exc)
        report.status, report.error, report.exit_code = STATUS_ERROR, line, ExitCode.ERROR
    report.stages = {k: round(v, 3) for k, v in report.stages.items()}


def _finished(report: RunReport, allow_failed_frames: bool) -> None:
    """A complete video: ok, or failed_frames (exit 3 unless accepted) with how many and why."""
    if not report.frames_failed:
        report.status, report.error, report.exit_code = STATUS_OK, None, ExitCode.OK
        return
    report.status = STATUS_FAILED_FRAMES
    report.error = failed_frames_line(report)
    report.exit_code = ExitCode.OK if allow_failed_frames else ExitCode.FAILED_FRAMES


def failed_frames_line(report: RunReport) -> str:
    """One line: how many process frames every generator failed on, and each reason with its count."""
    reasons = "; ".join(f"{f['generator']}: {f['reason']} ({f['count']} frames)" for f in report.fallbacks
                        if f["to"] == PASSTHROUGH)
    return (f"{report.frames_failed} of {report.frames_out} frames failed every generator and were passed "
            f"through unchanged ({reasons or 'no reason recorded'})")


def _run(options: RunOptions, report: RunReport, progress: Progress, sink: media.FrameSink | None,
         session: Callable[[Callable[[str], None]], Session], tic: float) -> None:
    """The stages of :func:`run`, filling ``report`` as they go (so a stopped run reports how far it got)."""
    stages = report.stages
    info, audio_path, audio = check_inputs(options)
    n_out = output_frame_count(len(audio), info.fps)
    schedule = ping_pong_schedule(info.frame_count, n_out)
    report.frames_in, report.frames_out = info.frame_count, n_out
    report.fps, report.audio_seconds = f"{info.fps.numerator}/{info.fps.denominator}", round(len(audio) / 16_000, 3)
    warn = _warner(report, progress)
    if str(options.weights) == SMOKE:
        warn(SMOKE_WARNING)
    if media.is_variable_frame_rate(options.video):
        warn(f"variable frame rate input: treated as constant {report.fps} fps (its average rate).")
    stages["validate"] = time.perf_counter() - tic

    tic = time.perf_counter()
    loaded = session(progress.note)
    models, kind, device, front_end = loaded.models, loaded.kind, loaded.device, loaded.front_end
    if loaded.load != options.load_options():
        raise LatentmuseError("this clip's load-time options differ from the loaded models' "
                              f"({_load_difference(loaded.load, options.load_options())}).",
                              "set them when loading (LipSync.from_weights), or load again.")
    steps_done = [0]

    def on_step() -> None:
        steps_done[0] += 1
        progress.advance("steps")

    chain = build_chain(options, kind, models, progress, on_step)
    if kind == "latentsync":
        settings = chain.primary.settings if chain.primary is not None else latentsync_settings(options, models.latentsync_version)
        report.steps, report.guidance, report.resolution, report.deepcache = (
            settings.steps, settings.guidance, settings.resolution, settings.deepcache)
        if settings.resolution != models.native_resolution:
            warn(f"LatentSync {models.latentsync_version} weights were trained at {models.native_resolution} px; "
                 f"running them at {settings.resolution} px.")
        if chain.primary is None:
            warn(f"LatentSync unavailable ({chain.unavailable}): every window goes to MuseTalk.")
    report.device, report.face_detector, report.generator = str(device), front_end.name, chain.name
    report.backend, report.precision = backend_summary(models), PRECISION_NAMES.get(models.dtype, str(models.dtype))
    stages["load_models"] = time.perf_counter() - tic  # ~0 for the second clip of a load

    tic = time.perf_counter()
    progress.start("audio", None)
    features = AudioFeatures(audio, info.fps, models["whisper_encoder"], models["whisper_post_ln"])
    features.prepare(chain.audio_layouts)
    progress.advance("audio")
    stages["audio_features"] = time.perf_counter() - tic

    tic = time.perf_counter()
    heap = HeapTrimmer()  # long clips: freed frame buffers go back to the system (runtime/heap.py)
    track, report.face_cache, face_key = face_pass(options, loaded, max(schedule) + 1, progress, heap, warn)
    faces = track.faces
    _report_faces(report, track, schedule, warn)
    chain.prepare(faces)
    tags = [faces[i] is not None for i in schedule]
    windows = chain.plan(tags)
    stages["faces"] = time.perf_counter() - tic

    tic = time.perf_counter()
    progress.start("generate", n_out)
    progress.start("windows", len(windows))
    total_steps = len(windows) * chain.primary.settings.steps if isinstance(chain.primary, LatentSyncGenerator) else 0
    if total_steps:
        progress.start("steps", total_steps)
    # Entered as soon as it exists (nothing runs in between): any exception or signal from here on
    # unwinds through the writer's __exit__, which deletes its temporary files. Decoding and encoding
    # run on their own threads, a bounded queue from the generators (runtime/overlap.py); they are
    # stopped and joined before the writer's __exit__ runs.
    encoder = None
    latents = latent_session(options, loaded, face_key, max(schedule) + 1, warn)
    for generator in (chain.primary, chain.fallback):
        if isinstance(generator, MuseTalkGenerator):
            generator.latents = latents
    try:
        with (sink if sink is not None else media.VideoWriter(
                options.output, info.width, info.height, info.fps, audio_path, codec=options.codec,
                sample_aspect_ratio=info.sample_aspect_ratio,
              )) as writer, media.FrameSource(options.video, info) as source, \
                BackgroundSink(writer) as encoder, Prefetch(source.frames(schedule)) as decoded:
            for out_index, frame in _execute(windows, tags, _jobs(decoded, schedule, faces), chain, features, n_out, progress):
                encoder.write(frame)
                progress.advance("generate")
                heap.tick()
        if latents is not None:  # the output is whole: what this run encoded is worth keeping
            report.latent_cache = latents.status
            latents.finish()
    finally:
        if encoder is not None:
            report.frames_written = encoder.frames_written  # encoded, not just handed over
        if latents is not None:
            latents.close()
    if total_steps > steps_done[0]:  # windows that fell back ran no DDIM steps
        progress.advance("steps", total_steps - steps_done[0])
    stages["generate_and_write"] = time.perf_counter() - tic
    for name, clock in chain.clocks.items():
        for stage, seconds in clock.seconds.items():
            stages[f"generate.{name}.{stage}"] = seconds

    report.runners = models.report()  # after the run: says whether the PyTorch fallback UNet was loaded
    report.windows = len(windows)
    report.frames_by_generator = dict(chain.frames_by_generator)
    report.frames_processed = sum(chain.frames_by_generator.values())
    report.frames_no_face = tags.count(False)
    report.frames_failed = chain.frames_failed
    report.frames_passthrough = n_out - report.frames_processed
    report.fallbacks = chain.fallbacks
    report.retries = chain.retries
    report.stages = {k: round(v, 3) for k, v in stages.items()}


def _load_difference(loaded: LoadOptions, wanted: LoadOptions) -> str:
    return ", ".join(f"{f.name} {getattr(wanted, f.name)} not {getattr(loaded, f.name)}" for f in fields(LoadOptions)
                     if getattr(loaded, f.name) != getattr(wanted, f.name))


def _warner(report: RunReport, progress: Progress):
    def warn(message: str) -> None:
        report.warnings.append(message)
        progress.note(message)

    return warn


def _check_face_options(options: RunOptions) -> None:
    parse_face_policy(options.face)
    if not (isinstance(options.min_face_size, int) and options.min_face_size >= 1):
        raise LatentmuseError(f"--min-face-size {options.min_face_size} is not a positive number of pixels.",
                              f"use --min-face-size {DEFAULT_MIN_FACE_SIZE} (the default).")


def detect_faces(video: Path, front_end, tracker: FaceTracker, n_frames: int, batch_size: int,
                 progress: Progress, heap: HeapTrimmer | None = None) -> list[Face | None]:
    """One streaming pass: the dubbed face's landmarks (or None) for the first ``n_frames`` input frames.

    Per batch: every face candidate of every frame (the detector), the tracker's choice in frame
    order, landmarks for the chosen candidates only, then the tracker's confirmation in frame order
    (docs/FACES.md). Landmarks that make no MuseTalk crop box count as unusable. The tracker keeps
    each frame's status for the report.
    """
    progress.start("faces", n_frames)
    faces: list[Face | None] = []

    def run_batch(chunk: list[np.ndarray]) -> None:
        selections = [tracker.select(found, frame.shape) for found, frame in zip(front_end.candidates(chunk), chunk)]
        marked = front_end.landmarks(chunk, [sel.candidate for sel in selections])
        for sel, face, frame in zip(selections, marked, chunk):
            usable = face if face is not None and crop_box(face, frame.shape) is not None else None
            faces.append(tracker.confirm(sel, usable))
        progress.advance("faces", len(chunk))
        if heap is not None:
            heap.tick(len(chunk))

    chunk: list[np.ndarray] = []
    for index, frame in enumerate(media.iter_frames(video)):
        if index >= n_frames:
            break
        chunk.append(frame)
        if len(chunk) == batch_size:
            run_batch(chunk)
            chunk = []
    if chunk:
        run_batch(chunk)
    if len(faces) < n_frames:
        raise LatentmuseError(
            f"{video} decoded to {len(faces)} frames but its header says {n_frames} or more.",
            "re-encode the video (e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4).",
        )
    return faces


def face_pass(options: RunOptions, session: Session, n_frames: int, progress: Progress, heap: HeapTrimmer,
              warn: Callable[[str], None]) -> tuple[FaceTrack, str, CacheKey | None]:
    """The dubbed face over the first ``n_frames`` frames, from the face-track cache when it has them
    (``"hit"``), else detected and stored (``"miss"``), or detected with the cache off (``"off"``);
    with the cache's key (None when it is off)."""
    cache = key = None
    if options.cache is not None:
        cache = FaceCache(options.cache, warn)
        key = face_cache_key(options, session, session.digests.sha256(options.video))
        track = cache.get(key, n_frames)
        if track is not None:
            progress.start("faces", n_frames)
            progress.advance("faces", n_frames)
            return track, "hit", key
    tracker = FaceTracker(options.face, options.min_face_size)
    faces = detect_faces(options.video, session.front_end, tracker, n_frames, options.face_batch_size, progress, heap)
    track = FaceTrack(faces, list(tracker.statuses), list(tracker.seen_by_frame[:n_frames]), tracker.dubbed)
    if cache is not None:
        cache.put(key, track, options.video)
        return track, "miss", key
    return track, "off", None


def face_cache_key(options: RunOptions, session: Session, video_sha256: str) -> CacheKey:
    """Everything the face pass depends on besides the video's content (runtime/facecache.py)."""
    front_end = session.front_end.name
    weights: object = "system dlib shape predictor"
    if front_end != "dlib":
        root = session.models.weights_root
        if root is None:
            weights = f"smoke seed {SMOKE_SEED}"
        else:
            weights = _weights_files(session, ("s3fd", "fan68"))
        weights = {"files": weights, "backends": _backends(session, ("s3fd", "fan68"))}
    settings = {"front_end": front_end, "weights": weights, "device": session.device.type,
                "dtype": PRECISION_NAMES.get(session.models.dtype, str(session.models.dtype)),
                "face": str(parse_face_policy(options.face)), "min_face_size": options.min_face_size,
                "tracker": asdict(TrackerSettings())}
    return CacheKey(video_sha256, settings)


def latent_session(options: RunOptions, session: Session, face_key: CacheKey | None, n_frames: int,
                   warn: Callable[[str], None]) -> LatentSession | None:
    """The run's view of MuseTalk's latent cache (runtime/latentcache.py), keyed by the face track
    and what the VAE encoder depends on; None with the cache off."""
    if face_key is None:
        return None
    backends = _backends(session, ("vae_encoder",))
    encoder: dict = {"backends": backends}
    if session.models.weights_root is None:
        encoder["weights"] = f"smoke seed {SMOKE_SEED}"
    else:
        encoder["weights"] = _weights_files(session, ("vae",))
    if any(b != "torch" for b in backends.values()):  # an engine or ONNX graph: its manifest as it is now
        encoder["engines"] = _stat(engines_dir(session.load.engines) / MANIFEST_NAME)
    settings = {"generator": MuseTalkGenerator.name, "crop": CROP, "extra_margin": EXTRA_MARGIN, "encoder": encoder,
                "device": session.device.type, "dtype": PRECISION_NAMES.get(session.models.dtype, str(session.models.dtype))}
    return LatentCache(options.cache, warn).session(LatentKey(face_key.digest, settings), n_frames)


def _stat(path: Path | None) -> list | None:
    """A file as it is now (path, size, mtime): replaced in place, a cache key that holds it misses."""
    if path is None or not path.exists():
        return None
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _weights_files(session: Session, keys: Iterable[str]) -> list:
    return [_stat(layout(k, session.models.latentsync_version).locate(session.models.weights_root)) for k in keys]


def _backends(session: Session, roles: Iterable[str]) -> dict[str, str]:
    roles = set(roles)
    return {r: session.models.choices[g].backend for r, g in session.models.roles.items()
            if r in roles and g in session.models.choices}


def _report_faces(report: RunReport, track: FaceTrack, schedule: list[int], warn: Callable[[str], None]) -> None:
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


def _jobs(decoded: Iterable[tuple[int, np.ndarray]], schedule: list[int], faces: list[Face | None]) -> Iterator[FrameJob]:
    for out_index, (in_index, frame) in enumerate(decoded):
        if in_index != schedule[out_index]:  # a decoding fault must not silently shift the video
            raise RuntimeError(f"frame source gave frame {in_index} for output {out_index}, expected {schedule[out_index]}")
        yield FrameJob(out_index, in_index, frame, faces[in_index])


def _execute(windows: list[Window], tags: list[bool], jobs: Iterator[FrameJob], chain: GeneratorChain,
             features: AudioFeatures, n_out: int, progress: Progress) -> Iterator[tuple[int, np.ndarray]]:
    """Every output frame in order: generated where a window kept it, as read otherwise.

    Frames are read once, in output order, and held only while a window still needs them or they
    wait for their window: memory stays bounded by a window's span, not by the video. A window runs
    as soon as its last frame has been read.
    """
    ordered = sorted(windows, key=lambda w: w.last)
    # need_from[k]: the first output frame any window from k on is fed (frames before it can go)
    need_from = [n_out] * (len(ordered) + 1)
    for k in range(len(ordered) - 1, -1, -1):
        need_from[k] = min(ordered[k].first, need_from[k + 1])
    held: dict[int, FrameJob] = {}
    done: dict[int, np.ndarray] = {}
    k = next_out = 0
    for job in jobs:
        held[job.out_index] = job
        while k < len(ordered) and ordered[k].last <= job.out_index:
            window = ordered[k]
            batch_jobs = [held[i] for i in window.frames]
            batch = GenerationBatch([j.out_index for j in batch_jobs], [j.in_index for j in batch_jobs],
                                    [j.frame for j in batch_jobs], [j.face for j in batch_jobs], features, n_out)
            made = chain.generate(batch, window.keep)
            for index in window.keep:  # a window that failed everywhere passes its frames through
                done[index] = made.get(index, held[index].frame)
            progress.advance("windows")
            k += 1
        while next_out in held and (not tags[next_out] or next_out in done):
            yield next_out, done.pop(next_out, held[next_out].frame)
            next_out += 1
        for index in [i for i in held if i < min(next_out, need_from[k])]:
            del held[index]
    if next_out != n_out:
        raise RuntimeError(f"only {next_out} of {n_out} output frames were written")
