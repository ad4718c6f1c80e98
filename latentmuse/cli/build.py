"""``latentmuse build``: TensorRT engines from the exported ONNX graphs (incremental, one subprocess each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import LatentmuseError
from .console import make_console

console = make_console()


def build(
    onnx: Annotated[Path, typer.Option("--onnx", help="Folder with the exported graphs ({graph}.onnx, {graph}.fp16.onnx).")] = Path("engines/onnx"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Engines folder (plans, manifest.json, timing cache).")] = Path("engines"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild even engines whose manifest entry is current.")] = False,
    graphs: Annotated[Optional[list[str]], typer.Option("--graphs", "-g", help="Only these graphs (repeatable or comma-separated).")] = None,
    precision: Annotated[str, typer.Option(help="auto (the fp16 graph unless only fp32 validated), fp16 or fp32.")] = "auto",
    unvalidated: Annotated[bool, typer.Option("--unvalidated", help="Also build graphs that export_report.json does not list as validated against PyTorch (recorded in the manifest).")] = False,
) -> None:
    """Build a TensorRT engine per exported graph (or --graphs); skip graphs whose engine is up to date. Exits 1 without TensorRT or a GPU."""
    from ..engines import build_all, engines_unavailable_reason
    from ..engines.orchestrate import BuildError

    reason = engines_unavailable_reason()
    if reason:
        raise LatentmuseError(reason + ".")
    try:
        from ..graphs.registry import GRAPHS
    except ImportError as exc:
        raise LatentmuseError(f"the graph declarations are unavailable ({exc}).") from exc
    names = [g.strip() for item in graphs or [] for g in item.split(",") if g.strip()]
    if not names:  # every declared graph that has been exported
        names = [g for g in GRAPHS if (onnx / f"{g}.onnx").is_file() or (onnx / f"{g}.fp16.onnx").is_file()]
        if not names:
            raise LatentmuseError(f"no exported graphs in {onnx}.", "export the ONNX graphs first.")
    try:
        results = build_all(onnx, out, GRAPHS, force=force, graphs=names, precision=precision,
                            allow_unvalidated=unvalidated, report=lambda line: console.print(line, soft_wrap=True))
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
