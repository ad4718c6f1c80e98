"""What a run is told: load-time options (which networks, where, on what) and per-clip options.

Loading is the expensive part of a run (gigabytes of weights, engine deserialisation, seconds to
minutes), so the options that decide *which runners exist* are a type of their own,
:class:`LoadOptions`, fixed for the life of a :class:`~latentmuse.runtime.lipsync.LipSync`. Everything
that only changes how one clip is processed is a :class:`ClipOptions` and may differ from clip to clip
(a batch's per-job options). :class:`RunOptions` is one clip: its paths with one of each
(:meth:`RunOptions.flat` sorts flat keywords into them).

The split follows the graphs: ``guidance`` (guided or batch-1 UNet3D graph), ``resolution`` and
``deepcache`` choose different UNet3D graphs, so they are load-time; ``steps`` and ``seed`` are not.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..models.constants import SMOKE
from .defaults import DEFAULT_GUIDANCE, DEFAULT_MIN_FACE_SIZE, DEFAULT_STEPS, DEFAULT_SYNC_MIN_RUN


@dataclass(frozen=True)
class LoadOptions:
    """Which runners a :class:`~latentmuse.runtime.lipsync.LipSync` loads, once."""

    weights: str | Path = SMOKE
    generator: str = "auto"
    backend: str = "auto"
    engines: Path | None = None  # default: $LATENTMUSE_ENGINES or engines/
    device: str = "auto"
    precision: str = "auto"
    face_detector: str = "auto"
    #: LatentSync's guidance scale: above 1 loads the guided (batch-2) UNet3D graph, 1 the batch-1 one.
    guidance: float = DEFAULT_GUIDANCE
    resolution: str = "auto"
    deepcache: bool = False
    #: A FAN TorchScript archive the user vouches for, loaded whatever its sha256 (docs/SECURITY.md).
    trust_torchscript: Path | None = None
    #: The lip-sync score (SyncNet, docs/QUALITY.md): auto (when the weights folder has SyncNet), on, off.
    sync_score: str = "auto"


@dataclass(frozen=True)
class ClipOptions:
    """How one clip is processed; any of these may change between clips of one load."""

    face: str = "largest"  # the dubbed face: largest | center | x,y (runtime/tracking.py, docs/FACES.md)
    min_face_size: int = DEFAULT_MIN_FACE_SIZE  # pixels of detector box height; smaller faces pass through
    batch_size: int = 8
    face_batch_size: int = 16
    steps: int = DEFAULT_STEPS
    seed: int = 0
    fallback: bool = True
    #: Exit 0 even when frames failed every generator (they are passed through either way).
    allow_failed_frames: bool = False
    #: The output's video codec: auto (the container's default) or one it takes (media.formats).
    codec: str = "auto"
    #: The face-track cache folder (runtime/facecache.py); None: no cache.
    cache: Path | None = None
    #: The quality gate: a scored clip whose lip-sync confidence (LSE-C) is below this ends low_sync (exit 4).
    min_sync_confidence: float | None = None
    #: Runs of the dubbed face shorter than this many frames are not scored.
    sync_min_run: int = DEFAULT_SYNC_MIN_RUN
    #: Every window to MuseTalk even when LatentSync is loaded: one load serves both generators, clip by
    #: clip (a service's jobs pick; ``--generator musetalk`` is the same for a whole run).
    musetalk_only: bool = False


@dataclass(frozen=True)
class RunOptions:
    """One clip: its paths, the load it runs on and how it is processed (the two option types as they are)."""

    video: Path
    output: Path
    audio: Path | None = None
    report: Path | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    clip: ClipOptions = field(default_factory=ClipOptions)

    @classmethod
    def flat(cls, video: str | Path, output: str | Path, *, audio: str | Path | None = None,
             report: str | Path | None = None, **options: object) -> RunOptions:
        """From flat keywords (the ``run`` command's form): each option goes to the type that declares it."""
        load, clip = split_options(options)
        return cls(Path(video), Path(output), None if audio is None else Path(audio),
                   None if report is None else Path(report), load, clip)

    @property
    def audio_source(self) -> Path:
        """Where the audio comes from: ``audio``, or the video's own track."""
        return self.audio if self.audio is not None else self.video


def split_options(options: dict, load: LoadOptions | None = None, clip: ClipOptions | None = None) -> tuple[LoadOptions, ClipOptions]:
    """Flat option values as (load, clip), over ``load`` and ``clip`` (defaults when None); an unknown
    name is a TypeError, as for a function's keyword."""
    load_names, clip_names = set(LoadOptions.__dataclass_fields__), set(ClipOptions.__dataclass_fields__)
    unknown = sorted(set(options) - load_names - clip_names)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}")
    return (replace(load or LoadOptions(), **{k: v for k, v in options.items() if k in load_names}),
            replace(clip or ClipOptions(), **{k: v for k, v in options.items() if k in clip_names}))


def options_to_dict(options: LoadOptions | ClipOptions) -> dict:
    """Plain JSON values (paths as strings): what crosses a process boundary (Ray) or goes in a key."""
    return {f.name: str(v) if isinstance(v := getattr(options, f.name), Path) else v for f in fields(options)}


def options_from_dict(cls: type[LoadOptions] | type[ClipOptions], data: dict):
    """The inverse of :func:`options_to_dict`: path fields become paths again."""
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        is_path = hints[name] is Path or (isinstance(hints[name], types.UnionType) and Path in hints[name].__args__)
        values[name] = Path(value) if is_path and isinstance(value, str) else value
    return cls(**values)


def clip_option_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(ClipOptions))


__all__ = ["ClipOptions", "LoadOptions", "RunOptions", "clip_option_names", "options_from_dict",
           "options_to_dict", "split_options"]
