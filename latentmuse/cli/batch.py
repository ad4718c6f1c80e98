"""``latentmuse batch JOBS``: many clips on one model load, resumable, locally or on Ray (docs/SCALE.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..outcomes import ExitCode, signals_as_interrupts
from ..runtime.options import ClipOptions, LoadOptions
from .console import PlainTable, make_console, plain
from .options import processing_options
from .progress import RichProgress

console = make_console()
error_console = make_console(stderr=True)


@processing_options
def batch(
    jobs: Annotated[Path, typer.Argument(help="Job list: .jsonl (one object per line) or .csv (header row) with video, audio, output and optional per-job options; or a folder of videos (audio NAME.wav / NAME.LABEL.wav beside NAME.mp4).")],
    out: Annotated[Optional[Path], typer.Option(help="With a folder: where the outputs go (default FOLDER/lipsynced).")] = None,
    summary: Annotated[Optional[Path], typer.Option(help="The batch summary JSON (default: JOBS.summary.json beside the job file, or OUT/batch.summary.json).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every job, even those done before with the same inputs and options.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Rerun the jobs that failed before (skipped by default: the same inputs would fail the same way).")] = False,
    retry_low_sync: Annotated[bool, typer.Option("--retry-low-sync", help="Rerun the jobs whose video was below --min-sync-confidence before (kept as done by default; --retry-failed does not rerun them).")] = False,
    ray: Annotated[Optional[str], typer.Option(metavar="auto|local|ADDRESS", help="Run the jobs on Ray: auto (a running cluster, else a new local one), local (always a new local one) or a cluster address; one actor per GPU (pip install 'latentmuse[ray]').")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="With --ray: how many actors (default: one per GPU, or 1 on a cluster without GPUs).")] = None,
    *, load: LoadOptions, clip: ClipOptions,
) -> None:
    """Lip-sync every job of JOBS with one model load; each job's report beside its output, plus a summary.

    A job already done with the same inputs (content hashes) and options is skipped; one failing job
    never stops the others. Exit codes: 0 all done, 1 a job failed, 3 a video has failed frames,
    4 a video is below --min-sync-confidence, 130 / 143 interrupted (the summary says which jobs were
    not reached).
    """
    from ..batch.driver import BatchSummary, plan, run_local
    from ..batch.jobs import read_jobs
    from ..files import Digests
    from ..runtime.lipsync import LipSync

    job_list = read_jobs(jobs, out)
    if ray is not None:  # before anything is written: a missing extra leaves no summary behind
        from ..batch.ray_backend import import_ray

        import_ray()
    summary_path = summary or default_summary(jobs, out)
    digests = Digests()
    result = BatchSummary(str(jobs), "ray" if ray is not None else "local", 0 if ray is not None else 1)
    with signals_as_interrupts() as guard, RichProgress(console, check=guard.check) as progress:
        planned = plan(job_list, load, clip, digests, force=force, retry_failed=retry_failed, retry_low_sync=retry_low_sync)
        try:
            if ray is not None:
                from ..batch.ray_backend import run_ray

                run_ray(planned, result, load, ray, workers, progress)
            else:
                run_local(planned, result, lambda: LipSync(load, progress=progress, digests=digests), progress)
        finally:  # on every outcome, a load error included
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            result.write(summary_path)
    console.print(summary_table(result, f"batch {jobs}: summary {summary_path}"))
    code = result.exit_code
    if code != ExitCode.OK:
        counts = result.counts
        line = (result.interrupted + ": stopped" if result.interrupted else
                f"{counts['failed']} of {len(result.jobs)} jobs failed" if counts["failed"] else
                "some videos have frames that failed every generator" if code == ExitCode.FAILED_FRAMES else
                f"{counts['low_sync']} of {len(result.jobs)} videos are below --min-sync-confidence (written; "
                "--retry-low-sync reruns them)")
        fix = ("Look at those videos (each reason names its weakest frames); the same command skips them again."
               if code == ExitCode.LOW_SYNC else
               "Fix the inputs named above and run the same command again (done jobs are skipped).")
        error_console.print(f"[bold red]error:[/] {plain(line)}; see {plain(summary_path)}. {fix}", soft_wrap=True)
        raise typer.Exit(code)


def default_summary(jobs: Path, out: Path | None) -> Path:
    if jobs.is_dir():
        return (out or jobs / "lipsynced") / "batch.summary.json"
    return jobs.with_name(jobs.name + ".summary.json")


def summary_table(result, title: str) -> PlainTable:
    """One row per job (status, reason, frames, seconds), then the counts."""
    table = PlainTable("job", "output", "status", "frames", "seconds", "cache: faces/latents", "LSE-C", "reason", title=title)
    for r in result.jobs:
        cache = f"{r.face_cache}/{r.latent_cache}" if r.face_cache and r.latent_cache else r.face_cache or "-"
        sync = "-" if r.sync_confidence is None else f"{r.sync_confidence:.2f}"
        table.add_row(r.where, Path(r.output).name, r.status, str(r.frames), f"{r.seconds:.1f}", cache, sync, r.reason or "")
    counts = result.counts
    table.caption = (f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
                     + (f", {counts['not_run']} not run" if counts["not_run"] else "")
                     + (f", {counts['low_sync']} below the lip-sync gate" if counts["low_sync"] else "")
                     + f" in {result.seconds:.1f} s"
                     + (f" ({result.workers} Ray actor{'s' if result.workers != 1 else ''})" if result.mode == "ray" and result.workers else
                        f" (models loaded in {result.load_seconds:.1f} s)" if counts["done"] or counts["failed"] else
                        " (nothing to run: no models loaded)"))
    return table
