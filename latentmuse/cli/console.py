"""The rich console every command prints through."""

from __future__ import annotations

import os

from rich.console import Console

#: Columns when the output is not a terminal (``make`` logs, CI): rich's default of 80 truncates tables.
LOG_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    """A console that keeps tables whole in logs (see :data:`LOG_WIDTH`) and follows the terminal otherwise."""
    interactive = Console(stderr=stderr).is_terminal
    width = None if interactive or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(highlight=False, stderr=stderr, width=width)
