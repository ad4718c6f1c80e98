"""``latentmuse build``: TensorRT engines from the exported ONNX graphs (incremental, one subprocess each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..choices import EnginePrecision
from ..engines.orchestrate import DEFAULT_TIMEOUT_S
from ..errors import LatentmuseError
from ..outcomes import signals_as_interrupts
from .console import make_console
from .export import graph_names

console = make_console()


def build(
    onnx: Annotated[Path, typer.Option("--onnx", help="Folder with the exported graphs ({graph}.onnx, {graph}.fp16.onnx).")] = Path("engines/onnx"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Engines folder (plans, manifest.json, timing cache).")] = Path("engines"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild even engines whose manifest entry is current.")] = False,
    graphs: Annotated[Optional[list[str]], typer.Option("--graphs", "-g", callback=graph_names, help="Only these graphs (repeatable or comma-separated).")] = None,
    precision: Annotated[EnginePrecision, typer.Option(help="Which exported file to build from; auto: the fp16 graph unless only fp32 validated.")] = EnginePrecision("auto"),
    unvalidated: Annotated[bool, typer.Option("--unvalidated", help="Also build graphs that export_report.json does not list as validated against PyTorch (recorded in the manifest).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Kill a graph's builder (and everything it started) after this long; the graph fails, the others go on.")] = DEFAULT_TIMEOUT_S,
) -> None:
    """Build a TensorRT engine per exported graph (or --graphs); skip graphs whose engine is up to date. Exits 1 without TensorRT or a GPU."""
    from ..engines.orchestrate import BuildError, build_all, engines_unavailable_reason

    reason = engines_unavailable_reason()
    if reason:
        raise LatentmuseError(reason + ".")
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
                                allow_unvalidated=unvalidated, timeout_s=timeout,
                                report=lambda line: console.print(line, soft_wrap=True))
    except BuildError as exc:
        _table(exc.results, out)  # what did get built stays built: show it, then the one-line error
        raise
    _table(results, out)


def _table(results, out: Path) -> None:
    table = Table(title=f"engines in {out}")
    for column in ("graph", "action", "reason", "plan", "seconds"):
        table.add_column(column, overflow="fold")
    style = {"built": "[green]built[/]", "skipped": "skipped", "failed": "[red]failed[/]"}
    for r in results:
        table.add_row(r.graph, style.get(r.action, r.action), r.reason, str(r.plan or "-"), f"{r.seconds:.1f}")
    console.print(table)
