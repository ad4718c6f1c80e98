"""Soak: a long clip runs to completion with every frame present, in memory that does not grow with its length.

The pipeline streams (docs/ARCHITECTURE.md): faces are found in one pass that keeps only landmarks, and
generation holds a window of frames, so peak memory should be a constant plus a small per-frame term
(one landmark set, one schedule entry, the audio). The soak checks exactly that from the outside, the way
a user would see it: it writes a long clip (the demo's astronaut, slowly zooming, with a face-free
cutaway, at 1080p by default), runs ``latentmuse run`` on it as its own process, and reads that process's
peak resident set from ``wait4`` (the kernel's figure for that one child, imports included). The same is
done for a short baseline clip; the soak passes when every output frame is present (the output's frame
count equals the input's, and the report accounts for each) and the long run's peak RSS is within
``rss_tolerance`` (20 %) of the baseline's.

``python -m latentmuse.bench.soak --minutes 10 --baseline-minutes 1 --json out/soak.json`` (``make soak``).
It takes long on a CPU (every frame is decoded, detected, generated and encoded): see
docs/BENCHMARKS.md for measured figures and the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

#: How much larger the long run's peak RSS may be than the baseline's.
RSS_TOLERANCE = 0.20


@dataclass
class SoakRun:
    """One ``latentmuse run`` on one clip, seen from outside."""

    minutes: float
    frames_in: int
    frames_out: int  # frames in the written file (its container's count)
    report_frames_out: int
    exit_code: int
    wall_s: float
    peak_rss_mb: float
    status: str = ""


@dataclass
class SoakResult:
    size: tuple[int, int]
    fps: str
    args: list[str]
    baseline: SoakRun
    long: SoakRun
    rss_ratio: float = 0.0
    rss_tolerance: float = RSS_TOLERANCE
    every_frame_present: bool = False
    passed: bool = False
    problems: list[str] = field(default_factory=list)


def build_clip(folder: Path, minutes: float, size: tuple[int, int], fps: Fraction, preset: str = "ultrafast") -> Path:
    """The demo's clip at ``size``, ``minutes`` long (its speech padded with silence to the video's length)."""
    from ..samples import build_sample

    folder.mkdir(parents=True, exist_ok=True)
    seconds = Fraction(minutes).limit_denominator(10_000) * 60  # 0.02 min is 30 frames at 25 fps, not 29
    # a 2 s cutaway a third of the way in: face-free frames pass through in a long run too
    cutaway = (float(seconds) / 3, float(seconds) / 3 + 2)
    return build_sample(folder, seconds=seconds, fps=fps, size=size, cutaway=cutaway, preset=preset).video


def run_once(video: Path, output: Path, report: Path, args: list[str], minutes: float) -> SoakRun:
    """``latentmuse run`` in a child process; its peak RSS from ``os.wait4`` (that child only)."""
    from ..runtime.media import probe

    command = [sys.executable, "-m", "latentmuse", "run", str(video), "-o", str(output), "--report", str(report), *args]
    tic = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except BaseException:
        child.kill()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - tic
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    frames_in = probe(video).frame_count
    frames_out, report_out, state = 0, 0, "no report"
    if output.exists():
        frames_out = probe(output).frame_count
    if report.exists():
        data = json.loads(report.read_text())
        report_out, state = int(data.get("frames_out", 0)), str(data.get("status", "ok"))
    if child.returncode != 0:
        state = f"exit {child.returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"
    return SoakRun(minutes=minutes, frames_in=frames_in, frames_out=frames_out, report_frames_out=report_out,
                   exit_code=child.returncode, wall_s=round(wall, 1), peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                   status=state)


def judge(result: SoakResult) -> SoakResult:
    """Fill in the verdict: every frame present in both runs, and the long run's RSS within tolerance."""
    problems = []
    for run in (result.baseline, result.long):
        if run.exit_code != 0:
            problems.append(f"the {run.minutes:g}-minute run failed ({run.status}).")
        elif not run.frames_out == run.report_frames_out == run.frames_in:
            problems.append(f"the {run.minutes:g}-minute run wrote {run.frames_out} frames (report {run.report_frames_out}) "
                            f"of {run.frames_in}.")
    result.every_frame_present = not problems
    result.rss_ratio = round(result.long.peak_rss_mb / result.baseline.peak_rss_mb, 3) if result.baseline.peak_rss_mb else 0.0
    if result.rss_ratio > 1 + result.rss_tolerance:
        problems.append(f"peak RSS grew {result.rss_ratio:.2f}x from the {result.baseline.minutes:g}-minute clip to the "
                        f"{result.long.minutes:g}-minute one (tolerance {1 + result.rss_tolerance:.2f}x).")
    result.problems, result.passed = problems, not problems
    return result


def soak(folder: Path, minutes: float = 10, baseline_minutes: float = 1, size: tuple[int, int] = (1920, 1080),
         fps: Fraction = Fraction(25), args: list[str] | None = None) -> SoakResult:
    args = list(args if args is not None else ["--weights", "smoke", "--face-detector", "dlib", "--steps", "1"])
    runs = []
    for length in (baseline_minutes, minutes):
        clip_dir = folder / f"clip_{length:g}min"
        video = clip_dir / "sample.mp4"
        if not video.exists():
            video = build_clip(clip_dir, length, size, fps)
        runs.append(run_once(video, folder / f"out_{length:g}min.mp4", folder / f"report_{length:g}min.json", args, length))
    return judge(SoakResult(size=size, fps=str(fps), args=args, baseline=runs[0], long=runs[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentmuse.bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long clip")
    parser.add_argument("--baseline-minutes", type=float, default=1.0, help="length of the baseline clip")
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of both clips")
    parser.add_argument("--folder", type=Path, default=Path("out/soak"), help="where the clips and outputs go")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="after --: arguments for latentmuse run")
    ns = parser.parse_args(argv)
    width, _, height = ns.size.partition("x")
    run_args = [a for a in ns.run_args if a != "--"] or None
    result = soak(ns.folder, ns.minutes, ns.baseline_minutes, (int(width), int(height)), args=run_args)
    text = json.dumps(asdict(result), indent=2)
    if ns.json is not None:
        from ..files import atomic_write

        ns.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(ns.json, (text + "\n").encode())
    print(text)
    return 0 if result.passed else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
