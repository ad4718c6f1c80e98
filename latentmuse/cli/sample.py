"""``latentmuse sample``: write the embedded demo input (a real face, a cutaway, synthetic speech)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .console import make_console, plain

console = make_console()


def sample(out_dir: Annotated[Path, typer.Argument(help="Folder to write sample.mp4 (with its speech track) into.")]) -> None:
    """Build a ~5 s 25 fps clip of skimage's astronaut, moving and zooming, with a 1 s cutaway and espeak-ng speech."""
    from ..samples import build_sample

    media = build_sample(out_dir)
    console.print(f"sample video: {plain(media.video)}")
