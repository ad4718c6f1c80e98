"""How a command ends, defined once: exit codes, run statuses, and signals turned into an exception.

A batch driving thousands of clips decides from the exit code alone whether a clip needs a look, so
every code means one thing (README, "Exit codes"), and the run report (``--report``) carries the same
code and a status word. Signals become :class:`Interrupted`, an exception rather than an abrupt exit,
so that it unwinds through every ``with`` on the way: the video writer deletes its temporary files,
the pipeline writes its report, and the CLI prints one line and exits with :attr:`Interrupted.exit_code`.
Standard library only: the CLI's error boundary imports it before anything heavy.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every ``latentmuse`` command.

    * ``OK`` (0): done; for ``run``, every process frame was generated (by the primary or the fallback
      generator), or failed frames were accepted with ``--allow-failed-frames``.
    * ``ERROR`` (1): a one-line error naming the problem and the fix; no output file was written.
    * ``USAGE`` (2): a usage mistake (missing or unknown argument or option, bad value): click's usage
      message, nothing loaded.
    * ``FAILED_FRAMES`` (3): ``run`` wrote the whole video, but some process frames failed every
      generator and were passed through unchanged (counted, with the reasons, in the table and report).
    * ``LOW_SYNC`` (4): ``run`` wrote the whole video, but its lip-sync confidence (SyncNet LSE-C) is
      below ``--min-sync-confidence`` (docs/QUALITY.md); the report says ``low_sync`` with the figure.
    * ``SIGINT`` (130) / ``SIGTERM`` (143): stopped by that signal (128 + its number, the shell's
      convention); no output file was written.
    """

    OK = 0
    ERROR = 1
    USAGE = 2
    FAILED_FRAMES = 3
    LOW_SYNC = 4
    SIGINT = 128 + signal.SIGINT
    SIGTERM = 128 + signal.SIGTERM


#: ``RunReport.status`` values, one per way a run can end.
STATUS_OK = "ok"
STATUS_FAILED_FRAMES = "failed_frames"
STATUS_LOW_SYNC = "low_sync"
STATUS_ERROR = "error"
STATUS_INTERRUPTED = "interrupted"


class Interrupted(BaseException):
    """A run stopped by a signal.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` handlers, such as the
    generator chain's per-window fallback, never swallow it; not a ``KeyboardInterrupt``, because typer
    turns those into a bare exit 130 and SIGTERM must end as 143, with its line on stderr.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """The signals one command has received, and the handler that turns the first into :class:`Interrupted`.

    Raising from a signal handler is not always enough: a signal that lands while a finalizer
    (``__del__``) or a catch-all handler runs has its exception swallowed there ("Exception ignored
    in ..."). So the signal is also remembered, and :meth:`check`, called at the command's regular
    checkpoints (every progress update), raises it again. A second signal does not raise: the first
    one's unwinding (the writer deleting its temporary files, the report) runs undisturbed.
    """

    def __init__(self, raise_now: bool = True) -> None:
        self.pending: int | None = None
        #: False: the handler only records the signal and :meth:`check` raises it. For code that waits
        #: inside an extension which cannot take an exception from a signal handler (Ray's
        #: ``ray.wait`` turns one into a SystemError).
        self.raise_now = raise_now

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal has arrived (a no-op otherwise)."""
        if self.pending is not None:
            raise Interrupted(self.pending)

    def handle(self, signum: int, frame: object) -> None:
        if self.pending is None:
            self.pending = signum
            if self.raise_now:
                raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_interrupts(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *,
                          raise_now: bool = True) -> Iterator[SignalGuard]:
    """While the block runs, the first of ``signums`` raises :class:`Interrupted` in the main thread;
    yields the :class:`SignalGuard` whose ``check`` the command calls at its checkpoints.

    Installed for one command's duration and restored after it (no handler is set at import, so a
    program embedding latentmuse keeps its own). Python runs the handler between bytecodes: a run
    stops at the end of the network call in progress (milliseconds on a GPU, longer for a full-size
    model on a CPU). Outside the main thread signals cannot be handled: the guard never fires.
    """
    guard = SignalGuard(raise_now)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {signum: signal.signal(signum, guard.handle) for signum in signums}
    try:
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
