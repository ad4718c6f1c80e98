"""The typer app and its error boundary.

Commands raise :class:`latentmuse.errors.LatentmuseError`; :func:`main` turns it into one red line on
stderr and exit code 1 (never a traceback). ``LATENTMUSE_DEBUG=1`` re-raises for developers. A usage
mistake is click's usage message and exit 2; a signal a command turned into
:class:`~latentmuse.outcomes.Interrupted` is one line and 130 (SIGINT) or 143 (SIGTERM). The codes are
:class:`~latentmuse.outcomes.ExitCode`.
"""

from __future__ import annotations

import os
import sys

import click
import typer
from rich.console import Console

from ..errors import LatentmuseError
from ..outcomes import ExitCode, Interrupted
from . import batch, bench, build, cache, doctor, export, run, sample, score, serve, weights
from .console import plain

app = typer.Typer(
    name="latentmuse",
    help="Lip-sync video: MuseTalk 1.5 front end + LatentSync UNet3D, with ONNX/TensorRT engines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(weights.app, name="weights")
app.add_typer(cache.app, name="cache")
app.command("run")(run.run)
app.command("batch")(batch.batch)
app.command("score")(score.score)
app.command("serve")(serve.serve)
app.command("bench")(bench.bench)
app.command("sample")(sample.sample)
app.command("export")(export.export)
app.command("build")(build.build)
app.command("doctor")(doctor.doctor)


@app.callback()
def _root() -> None:
    """Lip-sync video: MuseTalk 1.5 front end + LatentSync UNet3D, with ONNX/TensorRT engines."""


def main(argv: list[str] | None = None) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = app(args=argv, standalone_mode=False)
    except LatentmuseError as exc:
        if os.environ.get("LATENTMUSE_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {plain(exc)}", markup=True)
        sys.exit(ExitCode.ERROR)
    except Interrupted as exc:  # the command's signal handler: its temporary files are already gone
        err.print(f"[bold red]{exc}[/]: stopped, no output written")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a command's handler (typer turns one inside into exit 130)
        err.print("[bold red]interrupted by SIGINT[/]")
        sys.exit(ExitCode.SIGINT)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(ExitCode.ERROR)
    except _click_exceptions() as exc:  # usage errors: click's own message and exit code 2
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _click_exceptions() -> tuple[type[Exception], ...]:
    """click's exception base, and the copy of click that typer >= 0.25 vendors (``typer._click``),
    whose usage errors are not ``click.ClickException`` instances."""
    vendored = sys.modules.get("typer._click.exceptions")
    extra = (vendored.ClickException,) if vendored is not None and hasattr(vendored, "ClickException") else ()
    return (click.ClickException, *extra)
