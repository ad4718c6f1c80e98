"""``latentmuse weights ...``: download, check, convert, and random test weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..choices import RandomSize, choice_enum
from ..models.layouts import LATENTSYNC_REPOS, default_weights_dir, layouts
from .console import PlainTable, make_console, plain
from .trust import TrustTorchscriptOption

app = typer.Typer(help="Get, check and convert model weights.", no_args_is_help=True)
console = make_console()

DirOption = Annotated[Path, typer.Option("--dir", "-d", help="Weights folder (default: $LATENTMUSE_WEIGHTS or ./weights).")]
#: The models of the weights table (the same keys for every LatentSync version) and the versions.
Model = choice_enum("Model", [entry.key for entry in layouts()])
LatentSyncVersion = choice_enum("LatentSyncVersion", LATENTSYNC_REPOS)
ModelsOption = Annotated[Optional[list[Model]], typer.Option("--model", "-m", help="Only this model (repeatable).")]


def _keys(models: list[Model] | None) -> list[str] | None:
    return [m.value for m in models] if models is not None else None


@app.command()
def download(
    dir: DirOption = default_weights_dir(),
    latentsync: Annotated[LatentSyncVersion, typer.Option("--latentsync", help="LatentSync UNet3D version: 1.5 (256 px) or 1.6 (512 px).")] = LatentSyncVersion("1.5"),
    model: ModelsOption = None,
    endpoint: Annotated[Optional[str], typer.Option(help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")] = None,
    verify: Annotated[bool, typer.Option(help="Load every model strictly after downloading.")] = True,
) -> None:
    """Download the official weights (resumable; files already present are kept), then verify them."""
    from ..models import folder

    fetched = folder.download(
        dir, latentsync_version=latentsync.value, models=_keys(model), client=folder.HubClient(endpoint=endpoint),
        verify=verify, report=lambda line: console.print(plain(line)),
    )
    table = PlainTable(title=f"weights in {dir}")
    for column in ("file", "from", "action", "MB"):
        table.add_column(column)
    for item in fetched:
        table.add_row(str(item.local), item.source, item.action, f"{item.bytes / 1e6:.1f}")
    console.print(table)


@app.command()
def check(
    dir: Annotated[Path, typer.Argument(help="Weights folder.")] = default_weights_dir(),
    model: ModelsOption = None,
) -> None:
    """Find and strictly load every model; print a table. Exits 1 if a needed model is missing or broken."""
    with console.status("checking weights") as status:  # transient: the table is what stays
        from ..models import folder

        rows = folder.check_folder(dir, _keys(model), report=status.update)
    table = Table(title=plain(f"weights check (strict loading): {dir}"))
    table.add_column("model")
    table.add_column("file", overflow="fold")
    table.add_column("loads", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    failed = False
    for row in rows:
        if row.path is None:
            file = "[yellow]absent (optional)[/]" if row.optional else "[red]missing[/]"
            loads = "-"
        else:
            file, loads = plain(row.path.relative_to(dir)), "[green]yes[/]" if row.loads else "[red]no[/]"
        params = f"{row.parameters:,}" if row.parameters is not None else "-"
        table.add_row(row.key, file, loads, params, plain(row.message))
        failed |= (row.path is not None and not row.loads) or (row.path is None and not row.optional)
    console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def convert(
    dir: Annotated[Path, typer.Argument(help="Weights folder.")] = default_weights_dir(),
    model: ModelsOption = None,
    trust_torchscript: TrustTorchscriptOption = None,
) -> None:
    """Write safetensors copies of the pickled checkpoints (loaded strictly first); loaders prefer them."""
    from ..models import folder

    written = folder.convert(dir, _keys(model), report=lambda line: console.print(plain(line)),
                             trust_torchscript=trust_torchscript)
    console.print(f"{len(written)} file(s) written.")


@app.command()
def random(
    dir: Annotated[Path, typer.Argument(help="Folder to write.")],
    size: Annotated[RandomSize, typer.Option(help="tiny: test configurations; full: released sizes (~8 GB).")] = RandomSize("tiny"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    model: ModelsOption = None,
) -> None:
    """Write seeded random weights in the official file formats (for tests and demos: outputs are noise)."""
    from ..models.random_weights import write_random_weights

    write_random_weights(dir, size=size.value, seed=seed, models=_keys(model), report=lambda line: console.print(plain(line)))
    console.print(f"[yellow]random weights in {plain(dir)}: outputs are meaningless, for tests and demos only[/]")
