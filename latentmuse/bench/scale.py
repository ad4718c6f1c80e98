"""Scale benchmark: jobs per minute for the ways of running many clips (docs/SCALE.md, docs/BENCHMARKS.md).

Three comparisons, each a pair of whole commands timed from outside (a fresh process each, as a user
runs them), on the demo's clip (skimage's astronaut, espeak-ng speech) at ``--seconds`` per clip:

1. ``runs_vs_batch``: N clips (the same video, N different audio tracks) as N ``latentmuse run``
   processes, against one ``latentmuse batch`` of the same N jobs (one model load). The face cache is
   off in both, so the difference is loading (and imports).
2. ``cold_vs_cached``: one video with 4 audio tracks as one batch with an empty face cache (one miss,
   then hits for the next tracks: the same video), against the same batch again with ``--force`` and
   the now warm cache (every job a hit).
3. ``ray_1_vs_2``: the N jobs with ``batch --ray auto`` (a local Ray cluster on this machine's CPUs)
   with 1 actor against 2.

``python -m latentmuse.bench.scale --weights smoke --json out/scale.json`` (``make bench-scale``). Every
command's output frames are checked against its report; the JSON holds each command, its wall time,
its jobs per minute and the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path


@dataclass
class Timed:
    label: str
    command: list[str]
    jobs: int
    wall_s: float
    exit_code: int
    jobs_per_minute: float


@dataclass
class Comparison:
    name: str
    a: Timed
    b: Timed
    speedup: float  # b's jobs per minute over a's


@dataclass
class ScaleResult:
    weights: str
    clip_seconds: float
    size: tuple[int, int]
    run_args: list[str]
    comparisons: list[Comparison] = field(default_factory=list)


def _timed(label: str, command: list[str], jobs: int) -> Timed:
    tic = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"{label} failed (exit {done.returncode}): {' | '.join(tail)}")
    return Timed(label, command, jobs, round(wall, 2), done.returncode, round(60 * jobs / wall, 3))


def _commands_runs(video: Path, audios: list[Path], out: Path, run_args: list[str]) -> list[list[str]]:
    return [[sys.executable, "-m", "latentmuse", "run", str(video), "--audio", str(a), "-o", str(out / f"{a.stem}.mp4"),
             "--no-cache", *run_args] for a in audios]


def _jobs_file(video: Path, audios: list[Path], out: Path, path: Path) -> Path:
    path.write_text("".join(json.dumps({"video": str(video), "audio": str(a), "output": str(out / f"{a.stem}.mp4")}) + "\n"
                            for a in audios))
    return path


def _batch(jobs: Path, run_args: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "latentmuse", "batch", str(jobs), *run_args, *extra]


def _speech(folder: Path, n: int, seconds: float) -> list[Path]:
    """``n`` different speech tracks of ``seconds`` each (espeak-ng, different words), as wav."""
    import wave

    import numpy as np

    from ..runtime import media
    from ..samples import speak

    words = ["one two three four", "five six seven eight", "nine ten eleven", "twelve thirteen",
             "good morning everyone", "hello and welcome", "thank you for watching", "see you soon"]
    tracks = []
    for k in range(n):
        raw = folder / f"raw_{k}.wav"
        speak(words[k % len(words)] + f" number {k}", raw)
        samples = media.load_audio(raw)  # 16 kHz mono float
        length = int(seconds * 16_000)
        samples = np.pad(samples, (0, max(0, length - len(samples))))[:length]
        path = folder / f"track_{k}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
        raw.unlink()
        tracks.append(path)
    return tracks


def scale(folder: Path, weights: str, clips: int = 8, seconds: float = 1.0, size: tuple[int, int] = (512, 512),
          run_args: list[str] | None = None, ray: bool = True) -> ScaleResult:
    from ..samples import build_sample

    args = ["--weights", weights, "--face-detector", "dlib", *(run_args or [])]
    folder.mkdir(parents=True, exist_ok=True)
    sample = build_sample(folder / "clip", seconds=Fraction(seconds).limit_denominator(1000), size=size)
    audios = _speech(folder, clips, seconds)
    result = ScaleResult(weights, seconds, size, args)

    def fresh(name: str) -> Path:
        path = folder / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    # 1. N runs vs one batch
    out = fresh("runs")
    tic = time.perf_counter()
    for command in _commands_runs(sample.video, audios, out, args):
        _timed("run", command, 1)
    wall = time.perf_counter() - tic
    runs = Timed(f"{clips} x latentmuse run", ["latentmuse run ..."] * clips, clips, round(wall, 2), 0, round(60 * clips / wall, 3))
    out = fresh("batch")
    batch = _timed("one batch", _batch(_jobs_file(sample.video, audios, out, folder / "jobs.jsonl"), args, "--no-cache"), clips)
    result.comparisons.append(Comparison("runs_vs_batch", runs, batch, round(batch.jobs_per_minute / runs.jobs_per_minute, 3)))

    # 2. four tracks of one video: cold cache vs warm
    cache, out = fresh("cache"), fresh("cached")
    jobs4 = _jobs_file(sample.video, audios[:4], out, folder / "jobs4.jsonl")
    cold = _timed("batch, cold cache", _batch(jobs4, args, "--cache", str(cache)), 4)
    warm = _timed("batch --force, warm cache", _batch(jobs4, args, "--cache", str(cache), "--force"), 4)
    result.comparisons.append(Comparison("cold_vs_cached", cold, warm, round(warm.jobs_per_minute / cold.jobs_per_minute, 3)))

    # 3. Ray, 1 actor vs 2
    if ray:
        timed = []
        for workers in (1, 2):
            out = fresh(f"ray{workers}")
            jobs = _jobs_file(sample.video, audios, out, folder / f"jobs_ray{workers}.jsonl")
            timed.append(_timed(f"batch --ray auto --workers {workers}",
                                _batch(jobs, args, "--no-cache", "--ray", "auto", "--workers", str(workers)), clips))
        result.comparisons.append(Comparison("ray_1_vs_2", timed[0], timed[1],
                                             round(timed[1].jobs_per_minute / timed[0].jobs_per_minute, 3)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentmuse.bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="smoke", help="smoke, or a weights folder (e.g. full-size random weights)")
    parser.add_argument("--clips", type=int, default=8, help="N: clips (audio tracks) in the runs/batch/Ray comparisons")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each clip")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of the clip")
    parser.add_argument("--folder", type=Path, default=Path("out/scale"), help="where the clips and outputs go")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="after --: more arguments for run and batch")
    ns = parser.parse_args(argv)
    width, height = (int(v) for v in ns.size.lower().split("x"))
    result = scale(ns.folder, ns.weights, ns.clips, ns.seconds, (width, height),
                   [a for a in ns.run_args if a != "--"], ray=not ns.no_ray)
    text = json.dumps(asdict(result), indent=2)
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(text + "\n")
    for c in result.comparisons:
        print(f"{c.name}: {c.a.label} {c.a.jobs_per_minute} jobs/min ({c.a.wall_s} s), "
              f"{c.b.label} {c.b.jobs_per_minute} jobs/min ({c.b.wall_s} s): {c.speedup}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
