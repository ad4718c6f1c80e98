"""``latentmuse export``: PyTorch -> ONNX (fp32 + fp16) for every graph, validated against PyTorch.

A graph's files in ``--out`` are replaced only by an export that validated; the report is written on
every outcome, SIGINT and SIGTERM included (see :mod:`latentmuse.export.publish`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import LatentmuseError
from ..artifacts.export_report import FAIL, PASS, REPORT_NAME, UNVALIDATED
from ..models.layouts import default_weights_dir
from ..outcomes import signals_as_interrupts
from .console import make_console, plain
from .trust import TrustTorchscriptOption

console = make_console()


def _default_graphs(weights: str) -> tuple[list[str], list[str]]:
    """smoke: every graph; a folder: the graphs whose weights are present (UNet3D at its version's size),
    and one line per optional network absent from it (its graphs are left out; how to fetch them)."""
    from ..graphs.registry import GRAPHS
    from ..models.folder import folder_layouts
    from ..models.layouts import LATENTSYNC_RESOLUTION, Sidecar

    if weights == "smoke":
        return list(GRAPHS), []
    root = Path(weights)
    if not root.is_dir():
        raise LatentmuseError(
            f"weights folder {root} does not exist.",
            "run `latentmuse weights download --dir DIR`, or pass --weights smoke for a plumbing test.",
        )
    entries = folder_layouts(root)
    present = {entry.key for entry in entries if entry.locate(root) is not None}
    unet3d = {256: ("unet3d_256", "unet3d_256_b1"), 512: ("unet3d_512", "unet3d_512_b1")}[
        LATENTSYNC_RESOLUTION[Sidecar.read(root).latentsync_version]
    ]
    names = [
        name for name, spec in GRAPHS.items()
        if spec.model_key in present and (spec.model_key != "unet3d" or name in unet3d)
    ]
    absent = []
    for entry in entries:
        graphs = [name for name, spec in GRAPHS.items() if spec.model_key == entry.key]
        if entry.optional and graphs and entry.key not in present:
            absent.append(f"not exported: {', '.join(graphs)} (no {entry.title} weights in {root}, optional, for the "
                          f"{entry.needed_for}; `latentmuse weights download --dir {root} --model {entry.key}` fetches them)")
    return names, absent


def graph_names(value: str | list[str] | None) -> list[str]:
    """Graph names from ``--graphs`` (comma-separated, and repeatable where the option is a list);
    an unknown name is a usage error (exit 2) naming the known ones, before anything loads."""
    items = [value] if isinstance(value, str) else list(value or [])
    names = [g.strip() for item in items for g in item.split(",") if g.strip()]
    if names:
        from ..graphs.registry import GRAPHS

        unknown = [n for n in names if n not in GRAPHS]
        if unknown:
            raise typer.BadParameter(f"unknown graph {unknown[0]!r}; choose from {', '.join(GRAPHS)}.")
    return names


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


_STATUS = {PASS: "[green]pass[/]", FAIL: "[red]FAIL[/]", UNVALIDATED: "[yellow]unvalidated[/]"}


def _line(r, index: int, total: int) -> str:
    """One line per finished graph, printed as it finishes."""
    head = f"{_STATUS[r.status]} [{index}/{total}] {r.name}"
    kept = "; kept the previous validated export" if r.kept_previous else ""
    if r.error:
        return f"{head}: {r.error}{kept}"
    parts = [f"{r.exporter} opset {r.opset}", f"{r.seconds:.1f} s", f"{r.bytes / 1e6:.1f} MB"]
    if r.fp32_max_abs is not None:
        parts.append(f"fp32 max-abs {r.fp32_max_abs:.2e}")
    if r.fp16_cosine is not None:
        parts.append(f"fp16 cosine {r.fp16_cosine:.6f}")
    parts.extend(r.skipped)
    if r.exporter_note:
        parts.append(r.exporter_note)
    return f"{head}: " + ", ".join(parts) + kept


def export(
    weights: Annotated[str, typer.Option("--weights", "-w", help="Weights folder, or `smoke` for seeded tiny test weights.")] = str(default_weights_dir()),
    graphs: Annotated[Optional[str], typer.Option("--graphs", "-g", callback=graph_names, help="Comma-separated graph names (default: all available).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the .onnx files and export_report.json.")] = Path("engines/onnx"),
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write this run's report here (OUT/export_report.json, which `latentmuse build` reads, is always kept).")] = None,
    fp16: Annotated[bool, typer.Option(help="Also write and validate NAME.fp16.onnx.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for smoke weights and validation inputs.")] = 0,
    trust_torchscript: TrustTorchscriptOption = None,
) -> None:
    """Export graphs to ONNX (fp32 + fp16), validate each on ONNX Runtime CPU against PyTorch. Exits 1 on any failure.

    A graph's files are replaced only by an export that validated: a failed re-export keeps the previous
    validated one (and says so). Nothing else in OUT is touched.
    """
    from ..export.onnx_export import SMOKE, export_many

    names, absent = graph_names(graphs), []  # (the option's callback checked them already)
    if not names:
        names, absent = _default_graphs(weights)
    if not names:
        raise LatentmuseError(f"no exportable weights found in {weights}.", "run `latentmuse weights check` on it.")
    if weights == SMOKE:
        console.print("[yellow]SMOKE WEIGHTS: seeded tiny configurations; the graphs are real, the numbers are not.[/]")
    for line in absent:
        console.print(f"[yellow]note:[/] {plain(line)}", soft_wrap=True)

    total = len(names)
    current = {"name": "", "index": 0}
    status = console.status("")

    def started(name: str) -> None:
        current.update(name=name, index=current["index"] + 1)
        status.update(f"[{current['index']}/{total}] {name}")

    def phase(message: str) -> None:
        status.update(f"[{current['index']}/{total}] {current['name']}: {message}")

    status.start()
    try:
        with signals_as_interrupts():  # SIGTERM too unwinds: the staging folder goes, the report says so
            results = export_many(names, weights, out, fp16=fp16, seed=seed, also_report=report, on_start=started,
                                  progress=phase, trust_torchscript=trust_torchscript,
                                  on_done=lambda r: console.print(_line(r, current["index"], total), soft_wrap=True))
    finally:
        status.stop()

    table = Table(title=f"ONNX export -> {out}")
    for column in ("graph", "exporter", "MB", "ext. data", "export s", "fp16 s", "valid. s", "fp32 max-abs",
                   "fp32 rel", "atol", "fp16 cosine", "fp16 max-abs", "result"):
        table.add_column(column, no_wrap=True)
    for r in results:
        table.add_row(
            r.name, f"{r.exporter}/{r.opset}" if r.exporter else "-", f"{r.bytes / 1e6:.1f}",
            "yes" if r.external_data else "no", f"{r.seconds:.1f}",
            "-" if r.fp16_seconds is None else f"{r.fp16_seconds:.1f}", f"{r.validation_seconds:.1f}",
            _fmt(r.fp32_max_abs), _fmt(r.fp32_rel), _fmt(r.atol),
            "-" if r.fp16_cosine is None else f"{r.fp16_cosine:.6f}", _fmt(r.fp16_max_abs), _STATUS[r.status],
        )
    console.print(table)
    console.print(f"report: {out / REPORT_NAME}" + (f" (and {report})" if report else ""))
    unvalidated = [r.name for r in results if r.status == UNVALIDATED]
    if unvalidated:
        console.print(f"[yellow]not validated here: {', '.join(unvalidated)} (see above); `latentmuse build` "
                      "refuses them unless given --unvalidated.[/]")
    if any(r.status == FAIL for r in results):
        raise typer.Exit(1)
