"""``latentmuse run``: lip-sync one video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from typing import TYPE_CHECKING

from ..choices import Backend, Codec, FaceDetector, Generator, Precision, Resolution
from ..models.layouts import default_weights_dir
from ..outcomes import ExitCode, signals_as_interrupts
from ..runtime.defaults import DEFAULT_GUIDANCE, DEFAULT_MIN_FACE_SIZE, DEFAULT_STEPS
from .console import PlainTable, make_console, plain
from .progress import RichProgress
from .trust import TrustTorchscriptOption

if TYPE_CHECKING:
    from ..runtime.pipeline import RunReport

console = make_console()
error_console = make_console(stderr=True)


def _face_option(value: str) -> str:
    """``--face`` parsed while the command line is read: a bad value is a usage error (exit 2) before anything loads."""
    from ..errors import LatentmuseError
    from ..runtime.tracking import parse_face_policy

    try:
        return str(parse_face_policy(value))
    except LatentmuseError:
        raise typer.BadParameter(f"{value!r} is not largest, center or X,Y (the pixel column and row of the face in "
                                 "its first frame, e.g. --face 320,180).") from None


def _face_summary(result: RunReport) -> str:
    """Which face was dubbed, and how many frames passed through for which face reason."""
    reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in result.face_passthrough.items())
    if result.dubbed_face is None:
        return f"none ({result.face}; no face of {result.min_face_size} px or more){'; ' + reasons if reasons else ''}"
    box = ", ".join(f"{v:.0f}" for v in result.dubbed_face["box"])
    return (f"{result.face} from input frame {result.dubbed_face['first_frame']} at ({box}); "
            f"passthrough: {reasons or 'none'} (min {result.min_face_size} px)")


def run(
    video: Annotated[Path, typer.Argument(help="Input video (any container/codec PyAV reads).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output video: .mp4/.m4v, .mov, .mkv (H.264 + AAC), .webm (VP9 + Opus) or .avi (MPEG-4 + PCM); written only when the run completes (exit 0 or 3).")],
    audio: Annotated[Optional[Path], typer.Option(help="Audio to lip-sync to (wav, mp3, m4a, flac or a video); default: the video's own track.")] = None,
    weights: Annotated[str, typer.Option(help="Weights folder, or 'smoke' for seeded random test-size weights (meaningless pixels).")] = str(default_weights_dir()),
    generator: Annotated[Generator, typer.Option(help="auto: latentsync when the weights have a UNet3D, else musetalk.")] = Generator("auto"),
    backend: Annotated[Backend, typer.Option(help="auto: per graph, TensorRT if its engine fits this machine, else ONNX Runtime if validated, else PyTorch.")] = Backend("auto"),
    engines: Annotated[Optional[Path], typer.Option(help="Engines folder (`make engines`): manifest.json, plans, onnx/. Default: $LATENTMUSE_ENGINES or engines/.")] = None,
    precision: Annotated[Precision, typer.Option(help="PyTorch runners; auto: fp16 on CUDA, fp32 on CPU.")] = Precision("auto"),
    face_detector: Annotated[FaceDetector, typer.Option(help="auto: s3fd when its weights exist, else dlib.")] = FaceDetector("auto"),
    face: Annotated[str, typer.Option(callback=_face_option, metavar="largest|center|X,Y", help="The face to dub when several are in view, chosen at its first appearance and then followed: the largest, the one nearest the centre, or the one at pixel X,Y (docs/FACES.md).")] = "largest",
    min_face_size: Annotated[int, typer.Option(min=1, help="Faces whose detector box is shorter than this many pixels pass through unchanged (counted in the report).")] = DEFAULT_MIN_FACE_SIZE,
    batch_size: Annotated[int, typer.Option(help="Frames per MuseTalk batch.")] = 8,
    steps: Annotated[int, typer.Option(help="LatentSync: DDIM steps.")] = DEFAULT_STEPS,
    guidance: Annotated[float, typer.Option(help="LatentSync: classifier-free guidance scale (1 turns it off and halves the work).")] = DEFAULT_GUIDANCE,
    resolution: Annotated[Resolution, typer.Option(help="LatentSync; auto: what the weights folder's version was trained at (1.5 256, 1.6 512).")] = Resolution("auto"),
    deepcache: Annotated[bool, typer.Option("--deepcache/--no-deepcache", help="LatentSync: reuse deep UNet3D features on 2 of every 3 steps (faster, slightly different).")] = False,
    fallback: Annotated[bool, typer.Option("--fallback/--no-fallback", help="Hand windows LatentSync cannot serve to MuseTalk (default), or stop with an error.")] = True,
    seed: Annotated[int, typer.Option(help="LatentSync: seed of the initial noise.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    codec: Annotated[Codec, typer.Option(help="Output video codec; auto: the container's default. mp4: h264 hevc mpeg4; mov: h264 hevc prores mpeg4 mjpeg; mkv: any; webm: vp9; avi: mpeg4 mjpeg (docs/RELIABILITY.md).")] = Codec("auto"),
    report: Annotated[Optional[Path], typer.Option(help="Write the run report (JSON) here, whatever the outcome (its status says which).")] = None,
    allow_failed_frames: Annotated[bool, typer.Option("--allow-failed-frames", help="Exit 0 even when frames failed every generator (they are passed through unchanged either way; default: exit 3).")] = False,
    trust_torchscript: TrustTorchscriptOption = None,
) -> None:
    """Re-generate the mouth in VIDEO to match the audio; every input frame is accounted for.

    Exit codes: 0 done, 1 error (no output), 2 usage, 3 frames failed every generator (the video is
    written with them passed through), 130 / 143 stopped by SIGINT / SIGTERM (no output).
    """
    from ..runtime.pipeline import RunOptions, run as run_pipeline

    options = RunOptions(
        video=video, output=output, audio=audio, weights=weights, generator=generator.value, backend=backend.value,
        face_detector=face_detector.value, face=face, min_face_size=min_face_size, batch_size=batch_size, seed=seed, device=device, report=report,
        steps=steps, guidance=guidance, resolution=resolution.value, deepcache=deepcache, fallback=fallback,
        engines=engines, precision=precision.value, allow_failed_frames=allow_failed_frames, codec=codec.value,
        trust_torchscript=trust_torchscript,
    )
    with signals_as_interrupts() as guard, RichProgress(console, check=guard.check) as progress:
        result = run_pipeline(options, progress)
    console.print(summary_table(result, title=f"wrote {output}"))
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {plain(warning)}")
    if result.exit_code == ExitCode.FAILED_FRAMES:
        error_console.print(f"[bold red]error:[/] {plain(result.error)} in {plain(output)}. Fix: see the fallbacks above "
                            "(and the report); pass --allow-failed-frames to accept such frames.", soft_wrap=True)
    elif result.error:
        console.print(f"[bold yellow]warning:[/] {plain(result.error)} (accepted: --allow-failed-frames).")
    if result.exit_code != ExitCode.OK:
        raise typer.Exit(result.exit_code)


def summary_table(result: RunReport, title: str) -> Table:
    """The run report as a two-column table (also used by ``bench``)."""
    table = PlainTable(title=title, show_header=False)  # paths and reasons, shown as they are
    by = ", ".join(f"{n} {name}" for name, n in sorted(result.frames_by_generator.items())) or "none"
    table.add_row("frames out", f"{result.frames_out} ({result.frames_processed} generated, {result.frames_passthrough} passthrough)")
    table.add_row("frames per generator", by)
    table.add_row("passthrough", f"{result.frames_no_face} no face, {result.frames_failed} failed")
    table.add_row("frames in", str(result.frames_in))
    table.add_row("fps", result.fps)
    table.add_row("generator / backend", f"{result.generator} / {result.backend} on {result.device}")
    if result.steps is not None:
        table.add_row("latentsync", f"{result.resolution} px, {result.steps} step{'s' if result.steps != 1 else ''}, guidance {result.guidance}, "
                                    f"seed {result.seed}{', deepcache' if result.deepcache else ''}, {result.windows} windows")
    table.add_row("face front end", result.face_detector)
    table.add_row("dubbed face", _face_summary(result))
    if result.runners:
        table.add_row("runners", ", ".join(f"{role} {r['backend']}" for role, r in result.runners.items()))
    fallbacks = "; ".join(f"{f['count']} frames {f['generator']} -> {f['to']}: {f['reason']}" for f in result.fallbacks)
    table.add_row("fallbacks", fallbacks or "none")
    if result.retries:
        table.add_row("smaller batches", "; ".join(f"{r['generator']} {r['batch'][0]} -> {r['batch'][1]} from frame "
                                                   f"{r['frames'][0][0]}: {r['reason']}" for r in result.retries))
    table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in result.stages.items() if "." not in k))
    if result.stages:
        table.add_row("generator seconds", ", ".join(f"{k.split('.', 1)[1]} {v:.1f}" for k, v in result.stages.items() if "." in k))
    return table
