"""User-facing errors.

Every problem a user can fix (a missing file, a checkpoint that does not match, a malicious pickle)
is raised as a :class:`LatentmuseError` whose message names the problem and whose ``fix`` names the
remedy. The CLI turns it into one red line and a non-zero exit, never a traceback.
"""

from __future__ import annotations


class LatentmuseError(Exception):
    """An error the user can act on: ``message`` says what is wrong, ``fix`` what to do."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message} Fix: {self.fix}"


class CheckpointError(LatentmuseError):
    """A weights file that cannot be read, is unsafe, or does not match its architecture."""
