"""``latentmuse score VIDEO``: the lip-sync score (SyncNet LSE-C / LSE-D) of any video (docs/QUALITY.md)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..outcomes import ExitCode, signals_as_interrupts
from ..runtime.options import ClipOptions, LoadOptions
from .console import PlainTable, make_console, plain
from .options import processing_options
from .progress import RichProgress

console = make_console()
error_console = make_console(stderr=True)

#: The run's options that matter to a score: the weights and the networks' load, the face front end
#: and tracker, the run length and the gate.
SCORE_OPTIONS = ("weights", "backend", "engines", "device", "precision", "face_detector", "face", "min_face_size",
                 "sync_min_run", "min_sync_confidence", "trust_torchscript")


@functools.partial(processing_options, names=SCORE_OPTIONS)
def score(
    video: Annotated[Path, typer.Argument(help="The video to score (any container PyAV reads): an original, another tool's output, ours.")],
    audio: Annotated[Optional[Path], typer.Option(help="The audio it should be in sync with (default: the video's own track).")] = None,
    json: Annotated[Optional[Path], typer.Option("--json", help="Write the score and what it was computed from (JSON) here.")] = None,
    *, load: LoadOptions, clip: ClipOptions,
) -> None:
    """Score VIDEO's lip sync with SyncNet (LSE-C: confidence, higher is better; LSE-D: distance, lower is
    better), on the face our front end and tracker follow; the same figures as a run's report.

    Exit codes: 0 scored (or nothing to score: no face, or every run of it shorter than
    --sync-min-run), 1 error, 2 usage, 4 below --min-sync-confidence.
    """
    from ..runtime.report import low_sync_line
    from ..runtime.score import ScoreOptions, score_video
    from .run import sync_summary

    options = ScoreOptions(video, audio, json, load, clip.face, clip.min_face_size, clip.sync_min_run,
                           clip.min_sync_confidence)
    with signals_as_interrupts() as guard, RichProgress(console, check=guard.check) as progress:
        result = score_video(options, progress)
    sync = result["sync"]
    table = PlainTable(title=f"lip sync of {video}", show_header=False)
    table.add_row("score", sync_summary(sync))
    table.add_row("frames", f"{result['frames']} at {result['fps']} fps, {result['frames_with_face']} with the face "
                            f"({result['face']}, min {result['min_face_size']} px)")
    table.add_row("front end / runners", f"{result['face_detector']} / "
                  + ", ".join(f"{role} {backend}" for role, backend in result["runners"].items()))
    table.add_row("seconds", f"{result['seconds']:.1f} (scoring {sync.get('seconds', 0):.1f})")
    if json is not None:
        table.add_row("json", str(json))
    console.print(table)
    for warning in result["warnings"]:
        console.print(f"[bold yellow]warning:[/] {plain(warning)}")
    if result["exit_code"] != ExitCode.OK:
        error_console.print(f"[bold red]error:[/] {plain(low_sync_line(sync))}.", soft_wrap=True)
        raise typer.Exit(result["exit_code"])
