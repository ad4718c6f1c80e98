"""``latentmuse doctor``: what this machine can run, and which weights and engines it has."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..models.layouts import Sidecar, default_weights_dir, layouts
from ..system import FLAVORS, can_build, can_run, gpu_info, probe_system
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
    gpu = gpu_info()
    for probe in probe_system().probes:
        table.add_row(probe.name, "[green]ok[/]" if probe.ok else "[yellow]no[/]", plain(probe.detail))
        if probe.name in FLAVORS and probe.ok:  # what this flavour can do on this machine
            flavor = FLAVORS[probe.name]
            for what, why in (("build here", can_build(flavor, gpu)), ("run here", can_run(flavor, gpu))):
                yes = "yes" + (" (ahead of time, no GPU needed)" if what == "build here" and not flavor.needs_gpu_to_build else "")
                table.add_row(f"{probe.name}: {what}", "[green]yes[/]" if why is None else "[yellow]no[/]",
                              plain(yes if why is None else why))
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
        from ..artifacts.manifest import load
        from ..errors import LatentmuseError

        try:
            entries = load(engines).entries()
        except LatentmuseError as exc:
            table.add_row("engines", "[red]broken[/]", plain(exc.message))
        else:
            for flavor in FLAVORS.values():
                mine = [e for e in entries if e.flavor == flavor.name]
                if mine:
                    targets = sorted({c for e in mine for c in e.compute_capabilities}, key=lambda c: tuple(map(int, c.split("."))))
                    table.add_row(f"engines: {flavor.name}", "[green]found[/]",
                                  plain(f"{len(mine)} plan(s) in {engines}, {flavor.label} {mine[0].tensorrt_version}, "
                                        f"compute capability {', '.join(targets)}"))
            if not entries:
                table.add_row("engines", "[yellow]none[/]", plain(f"{manifest} lists no plans"))
    else:
        table.add_row("engines", "[yellow]none[/]", plain(f"no {manifest}: run `make engines` (standard TensorRT on the GPU machine, or TensorRT for RTX anywhere)"))
    console.print(table)
