"""The ``latentmuse`` command line: thin typer commands over library functions."""

from .app import app, main

__all__ = ["app", "main"]
