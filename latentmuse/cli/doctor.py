"""``latentmuse doctor``: what this machine can run, and which weights and engines it has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..models.layouts import Sidecar, default_weights_dir, layouts
from ..system import probe_system
from .console import make_console, plain

console = make_console()


def doctor(
    weights: Annotated[Path, typer.Option(help="Weights folder to look in.")] = default_weights_dir(),
    engines: Annotated[Path, typer.Option(help="Engines folder to look in.")] = Path("engines"),
) -> None:
    """Report Python, torch, CUDA, working ONNX Runtime providers, TensorRT, weights and engines."""
    table = Table(title="latentmuse doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for probe in probe_system().probes:
        table.add_row(probe.name, "[green]ok[/]" if probe.ok else "[yellow]no[/]", plain(probe.detail))
    if weights.is_dir():
        version = Sidecar.read(weights).latentsync_version
        for entry in layouts(version):
            path = entry.locate(weights)
            status = "[green]found[/]" if path else ("[yellow]absent[/]" if entry.optional else "[red]missing[/]")
            table.add_row(f"weights: {entry.key}", status, plain(path) if path else f"needed for {entry.needed_for}")
    else:
        table.add_row("weights", "[yellow]none[/]", plain(f"{weights} does not exist: `latentmuse weights download --dir {weights}`"))
    manifest = engines / "manifest.json"
    if manifest.is_file():
        try:
            graphs = json.loads(manifest.read_text()).get("graphs", {})
            table.add_row("engines", "[green]found[/]", plain(f"{len(graphs)} graph(s) in {manifest}"))
        except (OSError, ValueError) as exc:
            table.add_row("engines", "[red]broken[/]", plain(f"{manifest}: {exc}"))
    else:
        table.add_row("engines", "[yellow]none[/]", plain(f"no {manifest}: run `make engines` on the GPU machine"))
    console.print(table)
