"""The rich console every command prints through."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

#: Columns when the output is not a terminal (``make`` logs, CI): rich's default of 80 truncates tables.
LOG_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    """A console that keeps tables whole in logs (see :data:`LOG_WIDTH`) and follows the terminal otherwise."""
    interactive = Console(stderr=stderr).is_terminal
    width = None if interactive or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(highlight=False, stderr=stderr, width=width)


def plain(value: object) -> str:
    """``value`` for interpolation into a markup string, shown as it is. User data (a path, an error's
    reason) may hold square brackets: unescaped, ``[/b]`` would be a MarkupError traceback and ``[x]``
    would vanish as an unknown style."""
    return escape(str(value))


class PlainTable(Table):
    """A table whose string title and cells are shown as given, never parsed as markup (they hold
    paths and reasons); pass ``rich.text.Text`` for styled cells."""

    def __init__(self, *columns, title: str | Text | None = None, **kwargs) -> None:
        super().__init__(*columns, title=Text(title) if isinstance(title, str) else title, **kwargs)

    def add_row(self, *renderables, **kwargs) -> None:
        super().add_row(*(Text(r) if isinstance(r, str) else r for r in renderables), **kwargs)
