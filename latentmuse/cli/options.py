"""The processing options ``run`` and ``batch`` share, declared once.

A command decorated with :func:`processing_options` gets every option below added to its own
parameters (typer reads the combined ``__signature__``) and receives them as two values, ``load``
(:class:`~latentmuse.runtime.options.LoadOptions`) and ``clip``
(:class:`~latentmuse.runtime.options.ClipOptions`), so the two commands cannot drift apart in
names, help, defaults or checks. Only the standard library, typer and the stdlib-only modules are
imported here: ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..choices import Backend, Codec, FaceDetector, Generator, Precision, Resolution, SyncScoring
from ..models.layouts import default_weights_dir
from ..runtime.defaults import DEFAULT_GUIDANCE, DEFAULT_MIN_FACE_SIZE, DEFAULT_STEPS, DEFAULT_SYNC_MIN_RUN, MIN_SYNC_RUN
from ..runtime.cachedir import default_cache_dir
from ..runtime.options import ClipOptions, LoadOptions
from .trust import TrustTorchscriptOption


def _face_option(value: str) -> str:
    """``--face`` parsed while the command line is read: a bad value is a usage error (exit 2) before anything loads."""
    from ..errors import LatentmuseError
    from ..runtime.tracking import parse_face_policy

    try:
        return str(parse_face_policy(value))
    except LatentmuseError:
        raise typer.BadParameter(f"{value!r} is not largest, center or X,Y (the pixel column and row of the face in "
                                 "its first frame, e.g. --face 320,180).") from None


#: name -> (annotation, default, kind): "load" options choose the networks, "clip" ones one clip's processing.
OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "weights": (Annotated[str, typer.Option(help="Weights folder, or 'smoke' for seeded random test-size weights (meaningless pixels).")], str(default_weights_dir()), "load"),
    "generator": (Annotated[Generator, typer.Option(help="auto: latentsync when the weights have a UNet3D, else musetalk.")], Generator("auto"), "load"),
    "backend": (Annotated[Backend, typer.Option(help="auto: per graph, TensorRT if its engine fits this machine, else ONNX Runtime if validated, else PyTorch.")], Backend("auto"), "load"),
    "engines": (Annotated[Optional[Path], typer.Option(help="Engines folder (`make engines`): manifest.json, plans, onnx/. Default: $LATENTMUSE_ENGINES or engines/.")], None, "load"),
    "precision": (Annotated[Precision, typer.Option(help="PyTorch runners; auto: fp16 on CUDA, fp32 on CPU.")], Precision("auto"), "load"),
    "face_detector": (Annotated[FaceDetector, typer.Option(help="auto: s3fd when its weights exist, else dlib.")], FaceDetector("auto"), "load"),
    "face": (Annotated[str, typer.Option(callback=_face_option, metavar="largest|center|X,Y", help="The face to dub when several are in view, chosen at its first appearance and then followed: the largest, the one nearest the centre, or the one at pixel X,Y (docs/FACES.md).")], "largest", "clip"),
    "min_face_size": (Annotated[int, typer.Option(min=1, help="Faces whose detector box is shorter than this many pixels pass through unchanged (counted in the report).")], DEFAULT_MIN_FACE_SIZE, "clip"),
    "batch_size": (Annotated[int, typer.Option(min=1, help="Frames per MuseTalk batch.")], 8, "clip"),
    "steps": (Annotated[int, typer.Option(help="LatentSync: DDIM steps.")], DEFAULT_STEPS, "clip"),
    "guidance": (Annotated[float, typer.Option(help="LatentSync: classifier-free guidance scale (1 turns it off and halves the work).")], DEFAULT_GUIDANCE, "load"),
    "resolution": (Annotated[Resolution, typer.Option(help="LatentSync; auto: what the weights folder's version was trained at (1.5 256, 1.6 512).")], Resolution("auto"), "load"),
    "deepcache": (Annotated[bool, typer.Option("--deepcache/--no-deepcache", help="LatentSync: reuse deep UNet3D features on 2 of every 3 steps (faster, slightly different).")], False, "load"),
    "fallback": (Annotated[bool, typer.Option("--fallback/--no-fallback", help="Hand windows LatentSync cannot serve to MuseTalk (default), or stop with an error.")], True, "clip"),
    "seed": (Annotated[int, typer.Option(help="LatentSync: seed of the initial noise.")], 0, "clip"),
    "device": (Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")], "auto", "load"),
    "codec": (Annotated[Codec, typer.Option(help="Output video codec; auto: the container's default. mp4: h264 hevc mpeg4; mov: h264 hevc prores mpeg4 mjpeg; mkv: any; webm: vp9; avi: mpeg4 mjpeg (docs/RELIABILITY.md).")], Codec("auto"), "clip"),
    "allow_failed_frames": (Annotated[bool, typer.Option("--allow-failed-frames", help="Exit 0 even when frames failed every generator (they are passed through unchanged either way; default: exit 3).")], False, "clip"),
    "cache": (Annotated[Optional[Path], typer.Option(metavar="DIR", help=f"Face-track cache: a second run on the same video (other audio) skips face detection. Default: {default_cache_dir()} ($LATENTMUSE_CACHE).")], None, "clip"),
    "no_cache": (Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the face-track cache.")], False, "clip"),
    "trust_torchscript": (TrustTorchscriptOption, None, "load"),
    "sync_score": (Annotated[SyncScoring, typer.Option(help="Score the lip sync of the written frames (SyncNet LSE-C / LSE-D, docs/QUALITY.md); auto: when the weights folder has auxiliary/syncnet_v2.model (never for random weights: smoke, or a `weights random` folder).")], SyncScoring("auto"), "load"),
    "min_sync_confidence": (Annotated[Optional[float], typer.Option(metavar="LSE-C", help="Quality gate: a clip whose lip-sync confidence is below this is still written, but ends low_sync with exit 4 (a clip with nothing to score is not gated).")], None, "clip"),
    "sync_min_run": (Annotated[int, typer.Option(min=MIN_SYNC_RUN, help="Score only runs of the dubbed face of at least this many frames.")], DEFAULT_SYNC_MIN_RUN, "clip"),
}


def processing_options(command: Callable[..., Any], names: tuple[str, ...] = tuple(OPTIONS)) -> Callable[..., Any]:
    """Add :data:`OPTIONS` (or those ``names``) to ``command``'s parameters; call it with ``load=`` and
    ``clip=`` built from them (options not among ``names`` keep their defaults)."""
    own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name not in ("load", "clip")]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=OPTIONS[name][0], default=OPTIONS[name][1])
              for name in names]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        picked = {name: values.pop(name) for name in names}
        load, clip = build_options(picked)
        return command(**values, load=load, clip=clip)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the combined signature, not the command's own
    return wrapper


def build_options(values: dict[str, Any]):
    """(LoadOptions, ClipOptions) from the command line's values (enums to their strings)."""
    plain = {name: getattr(value, "value", value) for name, value in values.items()}
    if "no_cache" in plain:
        no_cache = plain.pop("no_cache")
        plain["cache"] = None if no_cache else (plain["cache"] or default_cache_dir())
    load = LoadOptions(**{name: plain[name] for name, (_, _, kind) in OPTIONS.items() if kind == "load" and name in plain})
    clip = ClipOptions(**{name: plain[name] for name, (_, _, kind) in OPTIONS.items()
                          if kind == "clip" and name != "no_cache" and name in plain})
    return load, clip
