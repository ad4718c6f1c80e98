"""Rich progress bars for the pipeline's stages (one bar per stage, notes printed above them)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_LABELS = {"jobs": "jobs", "audio": "audio features", "faces": "faces + landmarks", "generate": "generate + encode", "windows": "generator windows", "steps": "denoising steps", "unet3d": "UNet3D timing calls"}


class RichProgress:
    """``check`` is called on every update: the command's signal checkpoint
    (:meth:`latentmuse.outcomes.SignalGuard.check`), so a pipeline stage never needs to know about signals."""

    def __init__(self, console: Console, check: Callable[[], None] = lambda: None) -> None:
        self.console = console
        self.check = check
        self.bars = Progress(
            SpinnerColumn(), TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.open_ended: set[str] = set()  # stages started without a total

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, stage: str, total: int | None) -> None:
        """A bar for ``stage``; a stage started again (the next clip of a batch) restarts its bar."""
        self.check()
        if stage in self.tasks:
            self.bars.reset(self.tasks[stage], total=total)
        else:
            self.tasks[stage] = self.bars.add_task(_LABELS.get(stage, stage), total=total)
        if total is None:
            self.open_ended.add(stage)
        else:
            self.open_ended.discard(stage)
        if total == 0:  # nothing to do (e.g. no window in a clip without a face): shown finished, not spinning
            self.bars.update(self.tasks[stage], completed=0)

    def advance(self, stage: str, amount: int = 1) -> None:
        self.check()
        task = self.tasks[stage]
        self.bars.advance(task, amount)
        if stage in self.open_ended:  # total unknown until the stage ends: the bar shows what is done
            self.bars.update(task, total=self.bars.tasks[task].completed)

    def status(self, text: str) -> None:
        """What runs now: shown by the bench's bars; a run's bars say it already."""
        self.check()

    def note(self, message: str) -> None:
        self.console.print(f"[bold yellow]{escape(message)}[/]")
