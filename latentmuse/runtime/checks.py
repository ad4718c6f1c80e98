"""Every check a clip needs before anything heavy runs, in the order a run makes them.

:func:`check_options` needs nothing but the options (values, the output's and the report's paths,
the codec for the container); :func:`check_inputs` reads the inputs' headers and decodes the audio,
once: what it returns (:class:`ClipInputs`) is all the run needs to know about its files, so no later
stage opens them to learn it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..choices import BACKENDS, FACE_DETECTORS, GENERATORS, PRECISIONS, RESOLUTIONS, SYNC_SCORES
from ..errors import LatentmuseError
from . import media
from .contracts import VideoInfo
from .datagen import output_frame_count, ping_pong_schedule
from .options import ClipOptions, LoadOptions, RunOptions
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .defaults import DEFAULT_SYNC_MIN_RUN, MIN_SYNC_RUN
from .tracking import DEFAULT_MIN_FACE_SIZE, parse_face_policy

#: The audio features' sample rate (Whisper's).
FEATURE_RATE = 16_000


def check_load_options(load: LoadOptions) -> None:
    """Load-time values, before anything is loaded."""
    for value, allowed, flag in ((load.generator, GENERATORS, "--generator"), (load.backend, BACKENDS, "--backend"),
                                 (load.face_detector, FACE_DETECTORS, "--face-detector"),
                                 (load.precision, PRECISIONS, "--precision"),
                                 (str(load.resolution), RESOLUTIONS, "--resolution"),
                                 (load.sync_score, SYNC_SCORES, "--sync-score")):
        if value not in allowed:
            raise LatentmuseError(f"{flag} {value} is not known.", f"use one of {', '.join(allowed)}.")
    if not (math.isfinite(load.guidance) and load.guidance >= 1.0):
        raise LatentmuseError(
            f"--guidance {load.guidance} is below 1.",
            f"use --guidance 1 to turn classifier-free guidance off, or {DEFAULT_GUIDANCE} (LatentSync's default).",
        )


def check_clip_options(clip: ClipOptions) -> None:
    """Per-clip values."""
    if clip.batch_size < 1:
        raise LatentmuseError(f"--batch-size {clip.batch_size} is not positive.", "use --batch-size 8.")
    if clip.face_batch_size < 1:
        raise LatentmuseError(f"face_batch_size {clip.face_batch_size} is not positive.", "use face_batch_size=16 (the default).")
    parse_face_policy(clip.face)
    if not (isinstance(clip.min_face_size, int) and clip.min_face_size >= 1):
        raise LatentmuseError(f"--min-face-size {clip.min_face_size} is not a positive number of pixels.",
                              f"use --min-face-size {DEFAULT_MIN_FACE_SIZE} (the default).")
    if not 1 <= clip.steps <= 1000:
        raise LatentmuseError(f"--steps {clip.steps} is outside 1..1000.", f"use --steps {DEFAULT_STEPS} (LatentSync's default).")
    check_sync_options(clip.sync_min_run, clip.min_sync_confidence)


def check_sync_options(sync_min_run: int, min_sync_confidence: float | None) -> None:
    """The lip-sync score's values (a run's and ``latentmuse score``'s)."""
    if not (isinstance(sync_min_run, int) and sync_min_run >= MIN_SYNC_RUN):
        raise LatentmuseError(f"--sync-min-run {sync_min_run} is below {MIN_SYNC_RUN} frames (SyncNet's window needs 6).",
                              f"use --sync-min-run {DEFAULT_SYNC_MIN_RUN} (the default).")
    if min_sync_confidence is not None and not math.isfinite(min_sync_confidence):
        raise LatentmuseError(f"--min-sync-confidence {min_sync_confidence} is not a number.",
                              "give the lowest LSE-C to accept, e.g. --min-sync-confidence 5 (docs/QUALITY.md).")


def check_options(options: RunOptions) -> None:
    """The options' values, then the output's and the report's paths (nothing is read or loaded)."""
    check_load_options(options.load)
    check_clip_options(options.clip)
    inputs = [options.video] + ([options.audio] if options.audio is not None else [])
    media.check_output_path(options.output, inputs, extensions=media.OUTPUT_FORMATS)
    media.choose_codec(options.output, options.clip.codec)  # the container takes it; its encoder exists
    if options.report is not None:
        media.check_output_path(options.report, inputs + [options.output])


@dataclass(frozen=True)
class ClipInputs:
    """What the run knows about its files after one look at each: the video's header (with its packet
    timestamps, see :func:`~.media.probe`), the audio decoded once at its own rate (the writer muxes
    from it) and at 16 kHz mono (the features), and the output frames' input schedule."""

    info: VideoInfo
    audio: media.AudioTrack
    waveform: np.ndarray  # float32 mono at FEATURE_RATE
    n_out: int
    schedule: list[int]  # input frame of each output frame (ping-pong, or a prefix)

    @property
    def n_frames(self) -> int:
        """Input frames the run uses (a prefix when the audio is shorter than the video)."""
        return max(self.schedule) + 1


def read_clip(video, audio, face: str,
              check_header: Callable[[VideoInfo], None] = lambda info: None) -> tuple[VideoInfo, media.AudioTrack]:
    """The video's header and the clip's audio track, each file looked at once: the video's own track
    is read in the same pass as its timestamps, an ``audio`` file only after the header passed the
    ``face`` policy's frame check and ``check_header`` (cheap checks first). ``run`` and ``score``."""
    own = None
    if audio is None:
        info, own = media.probe_clip(video)
    else:
        info = media.probe(video)
    parse_face_policy(face).check_frame(info.width, info.height)
    check_header(info)
    if audio is not None:
        return info, media.decode_audio(audio, what="audio file")
    if own is None:
        raise media.no_audio_error(video, "video")
    return info, own


def check_inputs(options: RunOptions) -> ClipInputs:
    """The video's header and the whole audio track (decoded once, here)."""
    info, audio = read_clip(options.video, options.audio, options.clip.face,  # the output can code this size
                            lambda info: media.choose_codec(options.output, options.clip.codec, (info.width, info.height)))
    waveform = audio.mono(FEATURE_RATE)
    n_out = output_frame_count(len(waveform), info.fps)
    if n_out == 0:
        raise LatentmuseError(f"the audio in {options.audio_source} is shorter than one video frame.", "use a longer audio track.")
    return ClipInputs(info, audio, waveform, n_out, ping_pong_schedule(info.frame_count, n_out))


def validate(options: RunOptions) -> ClipInputs:
    """Every check that needs no model: fails fast, before anything heavy is loaded."""
    check_options(options)
    return check_inputs(options)
