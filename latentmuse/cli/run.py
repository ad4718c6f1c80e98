"""``latentmuse run``: lip-sync one video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from typing import TYPE_CHECKING

from ..outcomes import ExitCode, signals_as_interrupts
from .console import PlainTable, make_console, plain
from .options import processing_options
from .progress import RichProgress

from ..runtime.options import ClipOptions, LoadOptions

if TYPE_CHECKING:
    from ..runtime.report import RunReport

console = make_console()
error_console = make_console(stderr=True)


def _face_summary(result: RunReport) -> str:
    """Which face was dubbed, and how many frames passed through for which face reason."""
    reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in result.face_passthrough.items())
    if result.dubbed_face is None:
        return f"none ({result.face}; no face of {result.min_face_size} px or more){'; ' + reasons if reasons else ''}"
    box = ", ".join(f"{v:.0f}" for v in result.dubbed_face["box"])
    return (f"{result.face} from input frame {result.dubbed_face['first_frame']} at ({box}); "
            f"passthrough: {reasons or 'none'} (min {result.min_face_size} px)")


def sync_summary(sync: dict) -> str:
    """The report's ``sync`` block in one cell: the scores, what was scored, the weakest second, the gate."""
    if sync["status"] == "error":
        return f"not scored: {sync['error']}"
    short = f"{sync['runs_too_short']} shorter run{'s' if sync['runs_too_short'] != 1 else ''} not scored"
    if sync["status"] != "scored":
        return f"not scored: no run of the dubbed face of {sync['min_run']} frames or more ({short})"
    runs = len(sync["runs"])
    text = (f"LSE-C {sync['confidence']:.2f}, LSE-D {sync['distance']:.2f}, offset {sync['offset_frames']:+d} frames; "
            f"{sync['frames_scored']} frames in {runs} run{'s' if runs != 1 else ''}"
            + (f", {short}" if sync["runs_too_short"] else ""))
    weakest = sync.get("weakest")
    if weakest:
        text += f"; weakest frames {weakest['first_frame']}-{weakest['last_frame']} (LSE-C {weakest['confidence']:.2f})"
    if sync.get("passed") is not None:
        text += f"; {'passes' if sync['passed'] else 'BELOW'} --min-sync-confidence {sync['min_confidence']:g}"
    if sync.get("resampled"):
        text += f"; {sync['resampled']}"
    return text


@processing_options
def run(
    video: Annotated[Path, typer.Argument(help="Input video (any container/codec PyAV reads).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output video: .mp4/.m4v, .mov, .mkv (H.264 + AAC), .webm (VP9 + Opus) or .avi (MPEG-4 + PCM); written only when the run completes (exit 0 or 3).")],
    audio: Annotated[Optional[Path], typer.Option(help="Audio to lip-sync to (wav, mp3, m4a, flac or a video); default: the video's own track.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the run report (JSON) here, whatever the outcome (its status says which).")] = None,
    *, load: LoadOptions, clip: ClipOptions,
) -> None:
    """Re-generate the mouth in VIDEO to match the audio; every input frame is accounted for.

    Exit codes: 0 done, 1 error (no output), 2 usage, 3 frames failed every generator (the video is
    written with them passed through), 4 lip sync below --min-sync-confidence (the video is written),
    130 / 143 stopped by SIGINT / SIGTERM (no output).
    """
    from ..runtime.lipsync import LipSync

    # lazy: the clip's inputs are checked before the networks load
    with signals_as_interrupts() as guard, RichProgress(console, check=guard.check) as progress, \
            LipSync(load, lazy=True) as lipsync:
        result = lipsync(video, output, audio, report, clip, progress=progress)
    show_outcome(result, output)
    if result.exit_code != ExitCode.OK:
        raise typer.Exit(result.exit_code)


def show_outcome(result: RunReport, output: Path) -> None:
    """The summary table, the warnings, and the failed-frames line of one clip."""
    console.print(summary_table(result, title=f"wrote {output}"))
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {plain(warning)}")
    if result.exit_code == ExitCode.FAILED_FRAMES:
        error_console.print(f"[bold red]error:[/] {plain(result.error)} in {plain(output)}. Fix: see the fallbacks above "
                            "(and the report); pass --allow-failed-frames to accept such frames.", soft_wrap=True)
    elif result.exit_code == ExitCode.LOW_SYNC:
        error_console.print(f"[bold red]error:[/] {plain(result.error)} in {plain(output)} (written). Fix: look at those "
                            "frames; try the other --generator, more --steps, or --face if the wrong face was dubbed.",
                            soft_wrap=True)
    elif result.error:
        console.print(f"[bold yellow]warning:[/] {plain(result.error)} (accepted: --allow-failed-frames).")


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
    table.add_row("cache", f"faces {result.face_cache}, latents {result.latent_cache}")
    if result.sync is not None:
        table.add_row("lip sync", sync_summary(result.sync))
    if result.runners:
        table.add_row("runners", ", ".join(f"{role} {r['backend']}" for role, r in result.runners.items()))
    fallbacks = "; ".join(f"{f['count']} frames {f['generator']} -> {f['to']}: {f['reason']}" for f in result.fallbacks)
    table.add_row("fallbacks", fallbacks or "none")
    if result.retries:
        table.add_row("smaller batches", "; ".join(f"{r['generator']} {r['batch'][0]} -> {r['batch'][1]} from frame "
                                                   f"{r['frames'][0][0]}: {r['reason']}" for r in result.retries))
    if result.first_frame_seconds is not None:
        table.add_row("first frame", f"{result.first_frame_seconds:.1f} s after the start")
    table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in result.stages.items() if "." not in k)
                  + " (stages overlap)")
    if result.stages:
        table.add_row("generator seconds", ", ".join(f"{k.split('.', 1)[1]} {v:.1f}" for k, v in result.stages.items() if "." in k))
    return table
