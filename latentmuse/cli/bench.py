"""``latentmuse bench``: per-stage frames/s, peak memory and the UNet3D's seconds per step, as tables and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import LatentmuseError
from ..models.layouts import default_weights_dir
from ..runtime.bench import benchmark
from ..runtime.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .console import make_console
from .progress import RichProgress

console = make_console()


def bench(
    weights: Annotated[str, typer.Option(help="Weights folder or 'smoke'.")] = str(default_weights_dir()),
    generator: Annotated[str, typer.Option(help="auto | musetalk | latentsync")] = "auto",
    backend: Annotated[str, typer.Option(help="torch (engines arrive with `make engines`).")] = "torch",
    video: Annotated[Optional[Path], typer.Option(help="Video to run (default: the embedded demo sample).")] = None,
    seconds: Annotated[float, typer.Option(help="Length of the embedded sample when no --video is given.")] = 5.0,
    steps: Annotated[int, typer.Option(help="LatentSync DDIM steps for the end-to-end run.")] = DEFAULT_STEPS,
    guidance: Annotated[float, typer.Option(help="LatentSync guidance for the end-to-end run.")] = DEFAULT_GUIDANCE,
    deepcache: Annotated[bool, typer.Option("--deepcache/--no-deepcache", help="LatentSync DeepCache in the end-to-end run.")] = False,
    repeats: Annotated[int, typer.Option(help="Timed UNet3D calls per configuration (after one warm-up).")] = 3,
    end_to_end: Annotated[bool, typer.Option("--end-to-end/--no-end-to-end", help="Also run the whole pipeline once.")] = True,
    unet3d: Annotated[bool, typer.Option("--unet3d/--no-unet3d", help="Time the UNet3D per DDIM step first (LatentSync).")] = True,
    batch_size: Annotated[int, typer.Option(help="Frames per MuseTalk batch.")] = 8,
    face_detector: Annotated[str, typer.Option(help="auto | s3fd | dlib")] = "dlib",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path("bench.json"),
) -> None:
    """Time the UNet3D per DDIM step (CFG on and off) and every pipeline stage once; write JSON."""
    if repeats < 1:
        raise LatentmuseError(f"--repeats {repeats} is not positive.", "use --repeats 3.")
    if seconds <= 0.04:
        raise LatentmuseError(f"--seconds {seconds} is too short for one frame.", "use --seconds 5.")
    with RichProgress(console) as progress:
        if unet3d:
            progress.note("benchmarking: UNet3D steps first (about a minute per call at full size on a 2-core CPU)")
        result = benchmark(video, weights, backend=backend, generator=generator, batch_size=batch_size,
                           face_detector=face_detector, device=device, steps=steps, guidance=guidance,
                           deepcache=deepcache, seconds=seconds, unet3d_repeats=repeats, end_to_end=end_to_end, unet3d_timing=unet3d,
                           progress=progress)
    if "unet3d" in result:
        unet = result["unet3d"]
        table = Table(title=f"UNet3D, one {unet['frames']}-frame window at {unet['resolution']} px, seconds per DDIM step")
        for column in ("configuration", "batch", "median s", "min s", "max s", "calls"):
            table.add_column(column, justify="left" if column == "configuration" else "right")
        for name, row in unet["steps"].items():
            s = row["seconds_per_step"]
            table.add_row(name, str(row["batch"]), f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", str(s["calls"]))
        console.print(table)
    if "stages" in result:
        table = Table(title=f"latentmuse bench: {result['input']['frames_out']} frames, {result['weights']}, "
                            f"{result['generator']}, {result['device']}")
        for column in ("stage", "seconds", "frames/s"):
            table.add_column(column, justify="right" if column != "stage" else "left")
        for name, stage in result["stages"].items():
            table.add_row(name, f"{stage['seconds']:.2f}", f"{stage['frames_per_s']}" if stage["frames_per_s"] else "-")
        table.add_row("[bold]end to end[/]", f"{result['end_to_end']['seconds']:.2f}", f"{result['end_to_end']['frames_per_s']}")
        console.print(table)
    console.print(f"peak RSS {result['peak_rss_mb']:.0f} MB; JSON written to {json_out}")
    json_out.write_text(json.dumps(result, indent=2) + "\n")
