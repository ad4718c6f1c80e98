"""``latentmuse export``: PyTorch -> ONNX (fp32 + fp16) for every graph, validated against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import LatentmuseError
from ..models.layouts import default_weights_dir

console = Console(highlight=False)


def _default_graphs(weights: str) -> list[str]:
    """smoke: every graph; a folder: the graphs whose weights are present (UNet3D at its version's size)."""
    from ..export.specs import GRAPHS
    from ..models.folder import folder_layouts
    from ..models.layouts import LATENTSYNC_RESOLUTION, Sidecar

    if weights == "smoke":
        return list(GRAPHS)
    root = Path(weights)
    if not root.is_dir():
        raise LatentmuseError(
            f"weights folder {root} does not exist.",
            "run `latentmuse weights download --dir DIR`, or pass --weights smoke for a plumbing test.",
        )
    present = {entry.key for entry in folder_layouts(root) if entry.locate(root) is not None}
    unet3d = {256: ("unet3d_256", "unet3d_256_b1"), 512: ("unet3d_512",)}[
        LATENTSYNC_RESOLUTION[Sidecar.read(root).latentsync_version]
    ]
    return [
        name for name, spec in GRAPHS.items()
        if spec.model_key in present and (spec.model_key != "unet3d" or name in unet3d)
    ]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def export(
    weights: Annotated[str, typer.Option("--weights", "-w", help="Weights folder, or `smoke` for seeded tiny test weights.")] = str(default_weights_dir()),
    graphs: Annotated[Optional[str], typer.Option("--graphs", "-g", help="Comma-separated graph names (default: all available).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the .onnx files.")] = Path("engines/onnx"),
    report: Annotated[Optional[Path], typer.Option("--report", help="Report JSON (default: OUT/export_report.json).")] = None,
    fp16: Annotated[bool, typer.Option(help="Also write and validate NAME.fp16.onnx.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for smoke weights and validation inputs.")] = 0,
) -> None:
    """Export graphs to ONNX (fp32 + fp16), validate each on ONNX Runtime CPU against PyTorch. Exits 1 on any failure."""
    from ..export.onnx_export import REPORT_NAME, export_many, write_report
    from ..export.specs import GRAPHS

    names = [g.strip() for g in graphs.split(",") if g.strip()] if graphs else _default_graphs(weights)
    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise LatentmuseError(f"unknown graph {unknown[0]!r}.", f"use some of {', '.join(GRAPHS)}.")
    if not names:
        raise LatentmuseError(f"no exportable weights found in {weights}.", "run `latentmuse weights check` on it.")
    if weights == "smoke":
        console.print("[yellow]SMOKE WEIGHTS: seeded tiny configurations; the graphs are real, the numbers are not.[/]")

    status = console.status("")
    status.start()
    total = len(names)

    def started(name: str) -> None:
        status.update(f"[{names.index(name) + 1}/{total}] exporting {name}")

    def done(r) -> None:
        mark = "[green]ok[/]" if r.passed else "[red]FAIL[/]"
        fp16_text = f" fp16 cos {r.fp16_cosine:.6f}" if r.fp16_cosine is not None else ""
        console.print(
            f"{mark} [{names.index(r.name) + 1}/{total}] {r.name}: {r.exporter} opset {r.opset}, "
            f"{r.seconds:.1f} s, {r.bytes / 1e6:.1f} MB, max-abs {r.fp32_max_abs:.2e}{fp16_text}"
        )

    try:
        results = export_many(names, weights, out, fp16=fp16, seed=seed, on_start=started, on_done=done)
    finally:
        status.stop()
    report_path = write_report(results, report or out / REPORT_NAME, weights=str(weights), seed=seed, out=str(out))

    table = Table(title=f"ONNX export -> {out}")
    for column in ("graph", "exporter", "MB", "ext. data", "s", "fp32 max-abs", "fp32 rel", "atol", "fp16 cosine", "fp16 max-abs", "result"):
        table.add_column(column, no_wrap=True)
    for r in results:
        table.add_row(
            r.name, f"{r.exporter}/{r.opset}", f"{r.bytes / 1e6:.1f}", "yes" if r.external_data else "no",
            f"{r.seconds:.1f}", _fmt(r.fp32_max_abs), _fmt(r.fp32_rel), _fmt(r.atol),
            "-" if r.fp16_cosine is None else f"{r.fp16_cosine:.6f}", _fmt(r.fp16_max_abs),
            "[green]pass[/]" if r.passed else "[red]FAIL[/]",
        )
    console.print(table)
    console.print(f"report: {report_path}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)
