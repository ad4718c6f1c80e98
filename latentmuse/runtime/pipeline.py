"""The staged pipeline: validate, load, audio features, faces, generate + write, report.

Memory is bounded by a window of frames, not by the video: faces are found in one streaming pass
that keeps only landmarks, and generation streams the frames again in output order (ping-pong runs
included) through the generator into the encoder. Every output frame is written exactly once, in
order: process frames blended, passthrough frames as read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import LatentmuseError
from . import media
from .audio import AudioFeatures, encode_states
from .blending import FaceParser
from .contracts import Face, VideoInfo
from .datagen import FrameJob, batched, output_frame_count, ping_pong_schedule
from .faces import make_front_end
from .generators.base import GenerationBatch, GeneratorFailure
from .generators.musetalk import MuseTalkGenerator, crop_box
from .models import SMOKE, SMOKE_WARNING, load_torch_models, resolve_device

GENERATORS = ("auto", "musetalk", "latentsync")
BACKENDS = ("auto", "torch", "ort", "trt")
FACE_DETECTORS = ("auto", "s3fd", "dlib")


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
class RunOptions:
    video: Path
    output: Path
    audio: Path | None = None
    weights: str | Path = SMOKE
    generator: str = "auto"
    backend: str = "auto"
    face_detector: str = "auto"
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    report: Path | None = None
    face_batch_size: int = 16


@dataclass
class RunReport:
    video: str
    audio: str
    output: str
    frames_in: int
    frames_out: int
    frames_processed: int = 0
    frames_passthrough: int = 0
    fps: str = ""
    audio_seconds: float = 0.0
    generator: str = "musetalk"
    backend: str = "torch"
    face_detector: str = ""
    device: str = "cpu"
    weights: str = SMOKE
    fallbacks: list[dict] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)


def validate(options: RunOptions) -> tuple[VideoInfo, Path, np.ndarray]:
    """Every check that needs no model: fails fast, before anything heavy is loaded."""
    if options.batch_size < 1:
        raise LatentmuseError(f"--batch-size {options.batch_size} is not positive.", "use --batch-size 8.")
    for value, allowed, flag in ((options.generator, GENERATORS, "--generator"), (options.backend, BACKENDS, "--backend"),
                                 (options.face_detector, FACE_DETECTORS, "--face-detector")):
        if value not in allowed:
            raise LatentmuseError(f"{flag} {value} is not known.", f"use one of {', '.join(allowed)}.")
    if options.generator == "latentsync":
        raise LatentmuseError("the LatentSync generator is not available in this version.", "use --generator musetalk.")
    if options.backend in ("ort", "trt"):
        raise LatentmuseError(
            f"--backend {options.backend} needs exported engines, which this version does not build yet.",
            "use --backend torch.",
        )
    info = media.probe(options.video)
    audio_path = options.audio if options.audio is not None else options.video
    inputs = [options.video] + ([options.audio] if options.audio is not None else [])
    media.check_output_path(options.output, inputs, extensions=media.OUTPUT_FORMATS)
    if options.report is not None:
        media.check_output_path(options.report, inputs + [options.output])
    audio = media.load_audio(audio_path)
    if output_frame_count(len(audio), info.fps) == 0:
        raise LatentmuseError(f"the audio in {audio_path} is shorter than one video frame.", "use a longer audio track.")
    return info, audio_path, audio


def run(options: RunOptions, progress: Progress | None = None, sink: media.FrameSink | None = None) -> RunReport:
    """Lip-sync ``options.video`` to its audio (or ``options.audio``) and write ``options.output``.

    ``sink`` replaces the video writer (tests pass a lossless in-memory sink).
    """
    progress = progress or SilentProgress()
    stages: dict[str, float] = {}
    tic = time.perf_counter()
    info, audio_path, audio = validate(options)
    n_out = output_frame_count(len(audio), info.fps)
    schedule = ping_pong_schedule(info.frame_count, n_out)
    report = RunReport(
        video=str(options.video), audio=str(audio_path), output=str(options.output),
        frames_in=info.frame_count, frames_out=n_out, fps=f"{info.fps.numerator}/{info.fps.denominator}",
        audio_seconds=round(len(audio) / 16_000, 3), weights=str(options.weights),
    )
    if str(options.weights) == SMOKE:
        report.warnings.append(SMOKE_WARNING)
        progress.note(SMOKE_WARNING)
    if media.is_variable_frame_rate(options.video):
        message = f"variable frame rate input: treated as constant {report.fps} fps (its average rate)."
        report.warnings.append(message)
        progress.note(message)
    stages["validate"] = time.perf_counter() - tic

    tic = time.perf_counter()
    device = resolve_device(options.device)
    models = load_torch_models(options.weights, device, options.seed)
    front_end = make_front_end(options.face_detector, models.weights_root, device)
    generator = MuseTalkGenerator(models.vae_encoder, models.vae_decoder, models.musetalk_unet,
                                  FaceParser(models.bisenet, device))
    report.device, report.face_detector, report.backend, report.generator = str(device), front_end.name, "torch", generator.name
    stages["load_models"] = time.perf_counter() - tic

    tic = time.perf_counter()
    progress.start("audio", None)
    features = AudioFeatures(encode_states(models.whisper, audio), info.fps, models.post_layer_norm)
    progress.advance("audio")
    stages["audio_features"] = time.perf_counter() - tic

    tic = time.perf_counter()
    faces = detect_faces(options.video, front_end, max(schedule) + 1, options.face_batch_size, progress)
    stages["faces"] = time.perf_counter() - tic

    clock_before = dict(generator.clock.seconds)
    tic = time.perf_counter()
    writer = sink if sink is not None else media.VideoWriter(
        options.output, info.width, info.height, info.fps, audio_path
    )
    progress.start("generate", n_out)
    with writer, media.FrameSource(options.video, info) as source:
        for batch in batched(_jobs(source, schedule, faces), options.batch_size):
            outputs = _generate(generator, batch, features, n_out, report)
            for job in batch:
                writer.write(outputs.get(job.out_index, job.frame))
            progress.advance("generate", len(batch))
    stages["generate_and_write"] = time.perf_counter() - tic
    for name, seconds in generator.clock.seconds.items():
        stages[f"generate.{name}"] = seconds - clock_before.get(name, 0.0)

    report.frames_passthrough = n_out - report.frames_processed
    report.stages = {k: round(v, 3) for k, v in stages.items()}
    if options.report is not None:
        report.write(options.report)
    return report


def detect_faces(video: Path, front_end, n_frames: int, batch_size: int, progress: Progress) -> list[Face | None]:
    """One streaming pass: landmarks (or None) for the first ``n_frames`` input frames."""
    progress.start("faces", n_frames)
    faces: list[Face | None] = []
    chunk: list[np.ndarray] = []
    for index, frame in enumerate(media.iter_frames(video)):
        if index >= n_frames:
            break
        chunk.append(frame)
        if len(chunk) == batch_size:
            faces.extend(front_end.detect(chunk))
            progress.advance("faces", len(chunk))
            chunk = []
    if chunk:
        faces.extend(front_end.detect(chunk))
        progress.advance("faces", len(chunk))
    if len(faces) < n_frames:
        raise LatentmuseError(
            f"{video} decoded to {len(faces)} frames but its header says {n_frames} or more.",
            "re-encode the video (e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4).",
        )
    return faces


def _jobs(source: media.FrameSource, schedule: list[int], faces: list[Face | None]) -> Iterator[FrameJob]:
    for out_index, (in_index, frame) in enumerate(source.frames(schedule)):
        if in_index != schedule[out_index]:  # a decoding fault must not silently shift the video
            raise RuntimeError(f"frame source gave frame {in_index} for output {out_index}, expected {schedule[out_index]}")
        face = faces[in_index]
        if face is not None and crop_box(face, frame.shape) is None:
            face = None
        yield FrameJob(out_index, in_index, frame, face)


def _generate(generator, batch: list[FrameJob], features: AudioFeatures, n_out: int, report: RunReport) -> dict[int, np.ndarray]:
    process = [job for job in batch if job.face is not None]
    if not process:
        return {}
    request = GenerationBatch(
        out_indices=[j.out_index for j in process], frames=[j.frame for j in process],
        faces=[j.face for j in process], audio=features, n_out=n_out,
    )
    try:
        frames = generator.generate(request)
    except GeneratorFailure as failure:
        report.fallbacks.append({"frames": [j.out_index for j in process], "reason": f"{generator.name}: {failure.reason}; frames passed through"})
        return {}
    report.frames_processed += len(process)
    return {job.out_index: frame for job, frame in zip(process, frames)}
