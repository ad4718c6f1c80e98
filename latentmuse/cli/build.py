"""``latentmuse build``: TensorRT engines from the exported ONNX graphs (incremental, one subprocess each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..choices import EnginePrecision, TrtFlavorChoice
from ..engines.orchestrate import DEFAULT_TIMEOUT_S
from ..errors import LatentmuseError
from ..outcomes import signals_as_interrupts
from .console import make_console, plain
from .export import graph_names

console = make_console()


def build(
    onnx: Annotated[Path, typer.Option("--onnx", help="Folder with the exported graphs ({graph}.onnx, {graph}.fp16.onnx).")] = Path("engines/onnx"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Engines folder (plans, manifest.json, timing cache).")] = Path("engines"),
    flavor: Annotated[TrtFlavorChoice, typer.Option(help="Which TensorRT builds the plans. auto: standard TensorRT when it imports and a GPU is visible, else TensorRT for RTX (ahead of time, no GPU needed).")] = TrtFlavorChoice("auto"),
    compute_capability: Annotated[Optional[str], typer.Option("--compute-capability", metavar="8.6,8.9,12.0", help="TensorRT for RTX: the compute capabilities the plans target (default 8.0,8.6,8.9,12.0; 7.5 only when asked).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even engines whose manifest entry is current.")] = False,
    graphs: Annotated[Optional[list[str]], typer.Option("--graphs", "-g", callback=graph_names, help="Only these graphs (repeatable or comma-separated).")] = None,
    precision: Annotated[EnginePrecision, typer.Option(help="Which exported file to build from; auto: the fp16 graph unless only fp32 validated.")] = EnginePrecision("auto"),
    unvalidated: Annotated[bool, typer.Option("--unvalidated", help="Also build graphs that export_report.json does not list as validated against PyTorch (recorded in the manifest).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Kill a graph's builder (and everything it started) after this long; the graph fails, the others go on.")] = DEFAULT_TIMEOUT_S,
) -> None:
    """Build a TensorRT engine per exported graph (or --graphs); skip graphs whose engine is up to date.

    Standard TensorRT builds on the GPU that will run the plans; TensorRT for RTX builds on any machine.
    Exits 1 with one line when neither can build here."""
    from ..engines.orchestrate import BuildError, build_all, parse_compute_capabilities, resolve_flavor
    from ..system import gpu_info

    chosen, _version = resolve_flavor(flavor.value, gpu_info())  # one line, before anything is written
    parse_compute_capabilities(compute_capability, chosen)
    try:
        from ..graphs.registry import GRAPHS
    except ImportError as exc:
        raise LatentmuseError(f"the graph declarations are unavailable ({exc}).") from exc
    names = graph_names(graphs)
    if not names:  # every declared graph that has been exported
        names = [g for g in GRAPHS if (onnx / f"{g}.onnx").is_file() or (onnx / f"{g}.fp16.onnx").is_file()]
        if not names:
            raise LatentmuseError(f"no exported graphs in {onnx}.", "export the ONNX graphs first.")
    try:
        with signals_as_interrupts():  # a running builder is killed on the way out
            results = build_all(onnx, out, GRAPHS, force=force, graphs=names, precision=precision.value,
                                allow_unvalidated=unvalidated, timeout_s=timeout, flavor=chosen.name,
                                compute_capabilities=compute_capability,
                                report=lambda line: console.print(line, soft_wrap=True))
    except BuildError as exc:
        _table(exc.results, out)  # what did get built stays built: show it, then the one-line error
        raise
    _table(results, out)


def _table(results, out: Path) -> None:
    table = Table(title=f"engines in {out}")
    for column in ("graph", "action", "reason", "plan", "MB", "seconds", "builder peak RSS GiB"):
        table.add_column(column, overflow="fold")
    style = {"built": "[green]built[/]", "skipped": "skipped", "failed": "[red]failed[/]"}
    for r in results:
        built = r.action == "built"
        table.add_row(r.graph, style.get(r.action, r.action), plain(r.reason), plain(r.plan or "-"),
                      f"{r.plan_bytes / 1e6:.1f}" if built else "-", f"{r.seconds:.1f}",
                      f"{r.peak_rss_bytes / 2**30:.2f}" if built else "-")
    console.print(table)
