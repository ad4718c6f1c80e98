"""The CLI's progress bars: a stage started without a total counts what it did (the stream plans its
windows as faces arrive, so a run's window and step counts are known only at its end)."""

from __future__ import annotations

import io

from rich.console import Console

from latentmuse.cli.progress import RichProgress


def test_an_open_ended_bar_shows_its_count_and_a_known_total_is_kept():
    with RichProgress(Console(file=io.StringIO(), width=100)) as progress:
        progress.start("windows", None)
        progress.start("generate", 5)
        for _ in range(14):
            progress.advance("windows")
        for _ in range(3):
            progress.advance("generate")
        tasks = {name: progress.bars.tasks[task] for name, task in progress.tasks.items()}
        assert (tasks["windows"].completed, tasks["windows"].total) == (14, 14)
        assert (tasks["generate"].completed, tasks["generate"].total) == (3, 5)
        progress.start("windows", 2)  # the next clip of a batch, with a known total
        progress.advance("windows")
        assert (progress.bars.tasks[progress.tasks["windows"]].completed, progress.bars.tasks[progress.tasks["windows"]].total) == (1, 2)
