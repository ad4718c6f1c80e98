"""Scoring the lip sync of any video (``latentmuse score``): an original, another tool's output, ours.

The video is decoded once; its faces are found and followed by the run's own front end and tracker
(``--face-detector``, ``--face``, ``--min-face-size``: runtime/stream.py's :class:`FaceStage`), and the
frames with the chosen face go to the same :class:`~.sync.ClipScorer` a run feeds, so a run's ``sync``
block and ``latentmuse score`` of its output measure the same thing (up to the codec's loss and the
detector's boxes on the dubbed mouth). The audio is the video's own track or ``--audio``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LatentmuseError
from ..outcomes import STATUS_LOW_SYNC, STATUS_OK, ExitCode
from ..files import atomic_write
from ..progress import Progress, SilentProgress
from . import media
from .checks import FEATURE_RATE, check_load_options, check_sync_options, read_clip
from .defaults import DEFAULT_MIN_FACE_SIZE, DEFAULT_SYNC_MIN_RUN
from .faces import front_end_kind, make_front_end
from .options import LoadOptions
from .overlap import Prefetch
from .report import gate_sync
from .runner_set import SMOKE, SYNC_ROLES, face_graphs, load_models, resolve_device, syncnet_weights
from .session import SMOKE_SEED, random_weights
from .stream import FaceStage
from .sync import ClipScorer, RunnerEmbedder
from .tracking import FaceTracker, parse_face_policy


@dataclass(frozen=True)
class ScoreOptions:
    """What ``latentmuse score`` is told: the files, the front end and the networks' load."""

    video: Path
    audio: Path | None = None
    json: Path | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    face: str = "largest"
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    sync_min_run: int = DEFAULT_SYNC_MIN_RUN
    min_sync_confidence: float | None = None
    face_batch_size: int = 16


def check_score_options(options: ScoreOptions) -> None:
    check_load_options(options.load)
    check_sync_options(options.sync_min_run, options.min_sync_confidence)
    parse_face_policy(options.face)
    if options.json is not None:
        media.check_output_path(options.json, [options.video] + ([options.audio] if options.audio else []))
    if syncnet_weights(options.load.weights) is None:
        raise LatentmuseError(f"no SyncNet weights (auxiliary/syncnet_v2.model) in {options.load.weights}.",
                              f"run `latentmuse weights download --dir {options.load.weights} --model syncnet`.")


def score_video(options: ScoreOptions, progress: Progress | None = None) -> dict:
    """The video's lip-sync score and what it was computed from (written to ``options.json`` when given):
    ``sync`` has the run report's fields, the gate's verdict included; ``status`` is ok or low_sync and
    ``exit_code`` the command's (0 or 4)."""
    progress = progress or SilentProgress()
    started = time.perf_counter()
    check_score_options(options)
    info, track = read_clip(options.video, options.audio, options.face)
    waveform = track.mono(FEATURE_RATE)
    load = options.load
    warnings = ["random weights: their lip-sync score means nothing (a test of the plumbing)."] \
        if random_weights(load.weights) else []
    for warning in warnings:
        progress.note(warning)

    device = resolve_device(load.device)
    weights_root = None if str(load.weights) == SMOKE else Path(load.weights)
    face_kind = front_end_kind(load.face_detector, weights_root)
    roles = {**face_graphs(face_kind), **SYNC_ROLES}
    models = load_models(load.weights, device, roles, seed=SMOKE_SEED, backend=load.backend, engines=load.engines,
                         precision=load.precision, note=progress.note, trust_torchscript=load.trust_torchscript)
    try:
        front_end = make_front_end(face_kind, models.weights_root, device, models.runners)
        front_end = front_end.for_clip(options.min_face_size, info.width, info.height)
        scorer = ClipScorer(waveform, info.fps, RunnerEmbedder(models["syncnet_audio"], models["syncnet_lip"]),
                            options.sync_min_run)
        faces = FaceStage(front_end, FaceTracker(options.face, options.min_face_size), lambda face, shape: True,
                          options.face_batch_size, progress=progress)
        schedule = list(range(info.frame_count))
        progress.start("faces", len(schedule))
        with media.FrameSource(options.video, info) as source, Prefetch(source.frames(schedule)) as decoded:
            with_face = 0
            for job in faces.jobs(decoded, schedule):
                scorer.add(job.frame, None if job.face is None else job.face.box)
                with_face += job.face is not None
        result = scorer.finish()
    finally:
        models.close()
    sync = gate_sync(result.to_dict(), options.min_sync_confidence, warnings.append)
    low = sync["passed"] is False
    out = {
        "status": STATUS_LOW_SYNC if low else STATUS_OK, "exit_code": int(ExitCode.LOW_SYNC if low else ExitCode.OK),
        "video": str(options.video), "audio": str(options.audio if options.audio is not None else options.video),
        "frames": info.frame_count, "frames_with_face": with_face, "fps": f"{info.fps.numerator}/{info.fps.denominator}",
        "face": str(parse_face_policy(options.face)), "min_face_size": options.min_face_size,
        "face_detector": front_end.name, "weights": str(load.weights),
        "runners": {role: models.choices[graph].as_dict()["backend"] for role, graph in models.roles.items()
                    if graph in models.choices},
        "sync": sync, "seconds": round(time.perf_counter() - started, 3), "warnings": warnings,
    }
    if options.json is not None:
        try:
            atomic_write(options.json, (json.dumps(out, indent=2) + "\n").encode())
        except OSError as exc:
            raise LatentmuseError(f"cannot write {options.json} ({exc.strerror or exc}).",
                                  "check free disk space and the folder's permissions.") from None
    return out
