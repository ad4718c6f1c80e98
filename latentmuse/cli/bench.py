"""``latentmuse bench``: per-stage frames/s and peak memory of the pipeline, as a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..models.layouts import default_weights_dir
from ..runtime.bench import benchmark
from .console import make_console
from .progress import RichProgress

console = make_console()


def bench(
    weights: Annotated[str, typer.Option(help="Weights folder or 'smoke'.")] = str(default_weights_dir()),
    backend: Annotated[str, typer.Option(help="torch (engines arrive with `make engines`).")] = "torch",
    video: Annotated[Optional[Path], typer.Option(help="Video to run (default: the embedded demo sample).")] = None,
    batch_size: Annotated[int, typer.Option(help="Frames per generator batch.")] = 8,
    face_detector: Annotated[str, typer.Option(help="auto | s3fd | dlib")] = "dlib",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path("bench.json"),
) -> None:
    """Time every pipeline stage once; print frames/s per stage and peak RSS; write JSON."""
    with RichProgress(console) as progress:
        result = benchmark(video, weights, backend=backend, batch_size=batch_size, face_detector=face_detector,
                           device=device, progress=progress)
    table = Table(title=f"latentmuse bench: {result['input']['frames_out']} frames, {result['weights']}, {result['device']}")
    for column in ("stage", "seconds", "frames/s"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for name, stage in result["stages"].items():
        table.add_row(name, f"{stage['seconds']:.2f}", f"{stage['frames_per_s']}" if stage["frames_per_s"] else "-")
    table.add_row("[bold]end to end[/]", f"{result['end_to_end']['seconds']:.2f}", f"{result['end_to_end']['frames_per_s']}")
    console.print(table)
    console.print(f"peak RSS {result['peak_rss_mb']:.0f} MB; JSON written to {json_out}")
    json_out.write_text(json.dumps(result, indent=2) + "\n")
