"""``latentmuse run``: lip-sync one video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..models.layouts import default_weights_dir
from ..runtime.pipeline import RunOptions, run as run_pipeline
from .console import make_console
from .progress import RichProgress

console = make_console()


def run(
    video: Annotated[Path, typer.Argument(help="Input video (any container/codec PyAV reads).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4 (H.264 + AAC); written only on success.")],
    audio: Annotated[Optional[Path], typer.Option(help="Audio to lip-sync to (wav, mp3, m4a, flac or a video); default: the video's own track.")] = None,
    weights: Annotated[str, typer.Option(help="Weights folder, or 'smoke' for seeded random test-size weights (meaningless pixels).")] = str(default_weights_dir()),
    generator: Annotated[str, typer.Option(help="auto | musetalk | latentsync")] = "auto",
    backend: Annotated[str, typer.Option(help="auto | torch | ort | trt")] = "auto",
    face_detector: Annotated[str, typer.Option(help="auto (s3fd when its weights exist, else dlib) | s3fd | dlib")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Frames per generator batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed (smoke weights).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    report: Annotated[Optional[Path], typer.Option(help="Write the run report (JSON) here.")] = None,
) -> None:
    """Re-generate the mouth in VIDEO to match the audio; every input frame is accounted for."""
    options = RunOptions(
        video=video, output=output, audio=audio, weights=weights, generator=generator, backend=backend,
        face_detector=face_detector, batch_size=batch_size, seed=seed, device=device, report=report,
    )
    with RichProgress(console) as progress:
        result = run_pipeline(options, progress)
    table = Table(title=f"wrote {output}", show_header=False)
    table.add_row("frames out", f"{result.frames_out} ({result.frames_processed} generated, {result.frames_passthrough} passthrough)")
    table.add_row("frames in", str(result.frames_in))
    table.add_row("fps", result.fps)
    table.add_row("generator / backend", f"{result.generator} / {result.backend} on {result.device}")
    table.add_row("face front end", result.face_detector)
    table.add_row("fallbacks", str(len(result.fallbacks)))
    table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in result.stages.items() if "." not in k))
    if report is not None:
        table.add_row("report", str(report))
    console.print(table)
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
