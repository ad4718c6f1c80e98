"""The one progress protocol: what long work reports while it runs (a run's stages, the bench's phases).

The CLI shows it as rich progress bars (``cli/progress.py``); the library and the tests pass
:class:`SilentProgress`. Standard library only, so every layer can take a ``Progress``.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``start`` a named bar (``total`` None: unknown until it ends), ``advance`` it, show what runs
    ``now`` beside the current bar, and print a ``note`` above the bars (warnings, fallbacks)."""

    def start(self, stage: str, total: int | None) -> None: ...
    def advance(self, stage: str, amount: int = 1) -> None: ...
    def status(self, text: str) -> None: ...
    def note(self, message: str) -> None: ...


class SilentProgress:
    """Reports nothing."""

    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass
