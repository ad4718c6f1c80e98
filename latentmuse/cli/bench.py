"""``latentmuse bench``: every graph on every backend side by side (frames/s, p50/p90, peak memory, TFLOP/s),
the UNet3D per DDIM step, and the pipeline's stages end to end; tables, JSON and a bar chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..choices import RUNNER_BACKENDS, Generator
from ..models.layouts import default_weights_dir
from ..outcomes import signals_as_interrupts
from ..runtime.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .console import make_console, plain

console = make_console()

_PHASES = {"export": "ONNX export", "measure": "measurements"}


class BenchBars:
    """The suite's progress as rich bars: one per phase, with what runs now beside it."""

    def __init__(self, check: Callable[[], None] = lambda: None) -> None:
        self.check = check  # the command's signal checkpoint, called on every update
        self.bars = Progress(
            SpinnerColumn(), TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[now]}"), console=console, transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.open_ended: set[str] = set()  # stages started without a total
        self.current: str | None = None

    def __enter__(self) -> BenchBars:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for name, task in self.tasks.items():
            self.bars.update(task, now="")
        self.bars.stop()

    def start(self, name: str, total: int | None) -> None:
        self.check()
        if self.current is not None:
            self.bars.update(self.tasks[self.current], now="")
        self.tasks[name] = self.bars.add_task(_PHASES.get(name, name), total=total, now="")
        if total is None:
            self.open_ended.add(name)
        self.current = name

    def advance(self, name: str, amount: int = 1) -> None:
        self.check()
        task = self.tasks[name]
        self.bars.advance(task, amount)
        if name in self.open_ended:  # total unknown until the stage ends: the bar shows what is done
            self.bars.update(task, total=self.bars.tasks[task].completed)

    def status(self, text: str) -> None:
        self.check()
        if self.current is not None:
            self.bars.update(self.tasks[self.current], now=text[:100])

    def note(self, message: str) -> None:
        console.print(f"[bold yellow]{plain(message)}[/]", soft_wrap=True)


def _backends_choice(value: str) -> str:
    """``--backends`` is a comma-separated subset of the runner backends: anything else is a usage error
    (exit 2) at parse time, like a bad choice of any other option."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in RUNNER_BACKENDS]
    if unknown or not names:
        what = f"{unknown[0]!r} is not a backend" if unknown else "no backend given"
        raise typer.BadParameter(f"{what}; use some of {','.join(RUNNER_BACKENDS)}, comma-separated.")
    return value


def bench(
    ctx: typer.Context,
    weights: Annotated[str, typer.Option(help="Weights folder, or 'smoke' for seeded tiny test configurations.")] = str(default_weights_dir()),
    generator: Annotated[Generator, typer.Option(help="auto: latentsync when the weights have a UNet3D, else musetalk.")] = Generator("auto"),
    backends: Annotated[str, typer.Option(callback=_backends_choice, help=f"Comma-separated backends to compare, some of {', '.join(RUNNER_BACKENDS)} (an unavailable one is skipped with its reason).")] = ",".join(RUNNER_BACKENDS),
    frames: Annotated[int, typer.Option(help="Frames of the embedded sample clip for the end-to-end run (25 fps; 50 = 2 s).")] = 50,
    batch_size: Annotated[int, typer.Option(help="Frames per call of the frame-batched graphs (and the pipeline's batch).")] = 8,
    steps: Annotated[int, typer.Option(help="LatentSync DDIM steps in the end-to-end run.")] = DEFAULT_STEPS,
    guidance: Annotated[float, typer.Option(help="LatentSync guidance in the end-to-end run (1: no CFG).")] = DEFAULT_GUIDANCE,
    repeats: Annotated[int, typer.Option(help="Timed calls per graph and backend, after one warm-up call.")] = 5,
    engines: Annotated[Optional[Path], typer.Option(help="Engines folder (manifest.json, plans, onnx/). Default: $LATENTMUSE_ENGINES or engines/.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure to this JSON file.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a bar chart of frames/s (PNG; needs matplotlib).")] = None,
    end_to_end: Annotated[bool, typer.Option("--end-to-end/--no-end-to-end", help="Also run the whole pipeline once per backend.")] = True,
) -> None:
    """Time every graph on every backend side by side, then the pipeline end to end (each in its own process)."""
    from ..bench.suite import BenchOptions, no_backend_ran, prepare, run_bench, write_json  # torch: only when run

    options = BenchOptions(weights=weights, generator=generator.value, backends=backends, frames=frames,
                           batch_size=batch_size, steps=steps, guidance=guidance, repeats=repeats, engines=engines,
                           device=device, end_to_end=end_to_end, json_out=json_out, plot=plot,
                           command=_command_line(ctx))
    plan = prepare(options)  # every usage check, before anything heavy
    with signals_as_interrupts() as guard, BenchBars(guard.check) as bars:  # a signal stops the worker, removes the temporary folder
        result = run_bench(options, bars, plan)
    for table in graph_tables(result):
        console.print(table)
    if result.get("unet3d"):
        console.print(unet3d_table(result))
    if any("skipped" not in e for e in result["end_to_end"].values()):
        console.print(stages_table(result))
    if json_out is not None:
        write_json(result, json_out)
        console.print(f"JSON written to {plain(json_out)}")
    if plot is not None and result["ran"]:
        from ..bench.plot import write_plot

        write_plot(result, plot)
        console.print(f"plot written to {plain(plot)}")
    error = no_backend_ran(result)
    if error is not None:
        raise error


def _command_line(ctx: typer.Context) -> list[str]:
    """The command that reproduces this run, every option explicit (the JSON's ``command``)."""
    argv = ["latentmuse", ctx.info_name or "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or not getattr(param, "opts", None):
            continue
        if getattr(param, "is_flag", False) and getattr(param, "secondary_opts", None):
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            argv.extend([param.opts[0], str(value)])
    return argv


# -------------------------------------------------------------------------------------------- tables


def _table(title: str) -> Table:
    """A table whose title stays on one line (rich wraps a title to the table's width)."""
    return Table(title=plain(title), title_justify="left", min_width=len(title) + 2)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def _compares(result: dict) -> bool:
    """Whether the tables get a "vs torch" column: PyTorch and at least one other backend were asked for."""
    return "torch" in result["backends"] and len(result["backends"]) > 1


def _ratio_cell(ratios: dict) -> str:
    return ", ".join(f"{key.split('/')[0]} {value:.2f}x" for key, value in ratios.items()) or "-"


def graph_tables(result: dict) -> list[Table]:
    backends, cuda = result["backends"], str(result["device"]).startswith("cuda")
    tables = []
    for graph, entry in result["graphs"].items():
        flops = entry.get("flops_per_frame")
        title = f"{graph}: {entry['frames_per_call']} frames per call" + (f", {flops / 1e9:,.1f} GFLOP per frame" if flops else "")
        table = _table(title)
        table.add_column("")
        for backend in backends:
            table.add_column(backend, justify="right")
        if _compares(result):
            table.add_column("vs torch", justify="left")
        rows = [("frames/s", "frames_per_s", 1, 4), ("p50 ms", "p50_s", 1000, 4), ("p90 ms", "p90_s", 1000, 4),
                ("peak RSS MB", "peak_rss_mb", 1, 5)]
        if cuda:
            rows += [("peak device MB", "peak_device_mb", 1, 5), ("TFLOP/s", "tflops", 1, 3)]
        for k, (label, key, scale, digits) in enumerate(rows):
            cells = []
            for backend in backends:
                measured = entry.get(backend) or {}
                if "skipped" in measured:
                    cells.append("skipped" if k == 0 else "")
                else:
                    value = measured.get(key)
                    cells.append(_num(value * scale if value is not None else None, digits))
            ratio = [_ratio_cell(result["ratios"].get(graph, {})) if k == 0 else ""] if _compares(result) else []
            table.add_row(label, *cells, *ratio)
        tables.append(table)
    return tables


def unet3d_table(result: dict) -> Table:
    unet = result["unet3d"]
    table = _table(f"UNet3D, one {unet['frames']}-frame window at {unet['resolution']} px: seconds per DDIM step")
    table.add_column("configuration")
    table.add_column("graph")
    for backend in result["backends"]:
        table.add_column(backend, justify="right")
    for label, step in unet["steps"].items():
        name = f"CFG {'on' if label == 'cfg_on' else 'off'} (batch {step['batch']})"
        table.add_row(name, step["graph"], *(_num(step["seconds_per_step"].get(b), 4) for b in result["backends"]))
    return table


def stages_table(result: dict) -> Table:
    """Seconds and frames/s per stage and end to end, a column pair per backend that ran (the others in the caption)."""
    e2e = result["end_to_end"]
    ran = [b for b in result["backends"] if "skipped" not in e2e.get(b, {"skipped": ""})]
    skipped = [f"{b}: {e2e[b]['skipped']}" for b in result["backends"] if b not in ran and b in e2e]
    frames = next((e2e[b]["frames"] for b in ran), result.get("frames"))
    table = _table(f"end to end: {frames} frames of the sample clip, {result['generator']}, {result['weights']} "
                   f"weights, {result['device']}")
    if skipped:
        table.caption, table.caption_justify = plain("skipped: " + "; ".join(skipped)), "left"
    table.add_column("stage")
    for backend in ran:
        table.add_column(f"{backend} s", justify="right")
        table.add_column(f"{backend} frames/s", justify="right")
    compares = "torch" in ran and len(ran) > 1
    if compares:
        table.add_column("vs torch")
    tail = [""] if compares else []
    names: dict[str, None] = {}
    for backend in ran:
        names.update(dict.fromkeys(e2e[backend]["stages"]))
    for name in names:
        cells = []
        for backend in ran:
            stage = e2e[backend]["stages"].get(name)
            cells += [_num(stage["seconds"], 3) if stage else "-", _num(stage["frames_per_s"], 4) if stage else "-"]
        table.add_row(name, *cells, *tail)
    cells = [f"[bold]{_num(e2e[b][key], 4)}[/]" for b in ran for key in ("seconds", "frames_per_s")]
    ratio = [_ratio_cell(result["ratios"].get("end_to_end", {}))] if compares else []
    table.add_row("[bold]end to end[/]", *cells, *ratio)
    memory = []
    for backend in ran:
        device = e2e[backend].get("peak_device_mb")
        memory += [f"{e2e[backend]['peak_rss_mb']:.0f}", f"{device:.0f}" if device is not None else "-"]
    table.add_row("peak RSS MB / device MB", *memory, *tail)
    return table
