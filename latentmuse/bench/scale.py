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

The clip has no cutaway: every frame shows the face, so every frame of every job goes through the
generator (a clip that is all cutaway would time passthrough, not lip sync). After each command every
job's report is checked: status ok, every input frame written and generated, and the face cache as
expected (off; a miss then hits; all hits; MuseTalk's latent cache
alongside); a command whose jobs did not all do the work fails the
benchmark with one line.

``python -m latentmuse.bench.scale --weights smoke --json out/scale.json`` (``make bench-scale``). The JSON
holds each command, its wall time, its jobs and frames generated, its jobs per minute and the ratios.
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
    frames_generated: int = 0  # over all its jobs, from their reports


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


def expected_latent_cache(generator: str, face_cache: str) -> str:
    """What a job's ``latent_cache`` must say: MuseTalk's latents are cached beside the face track
    (a face miss encodes them, a face hit finds them); LatentSync does not use them."""
    if face_cache == "off":
        return "off"
    if generator != "musetalk":
        return "unused"
    return "miss" if face_cache == "miss" else "hit"


def check_reports(label: str, outputs: list[Path], frames: int, face_cache: list[str]) -> int:
    """The frames generated over ``outputs``' reports (``OUTPUT.json``), after checking each did the work.

    Each report must say status ok, ``frames`` frames in and out, all of them generated (none passed
    through), the face cache ``face_cache[k]`` for output k and the latent cache that goes with it
    (:func:`expected_latent_cache`); otherwise ``SystemExit`` with one line naming the command, the
    output and what differs: a benchmark of jobs that skipped the work is wrong.
    """
    total = 0
    for output, cache in zip(outputs, face_cache, strict=True):
        path = output.with_name(output.name + ".json")
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{label}: no readable report for {output.name} ({exc})") from None
        expected = {"status": "ok", "frames_in": frames, "frames_out": frames, "frames_processed": frames,
                    "face_cache": cache, "latent_cache": expected_latent_cache(str(report.get("generator")), cache)}
        wrong = {k: report.get(k) for k, v in expected.items() if report.get(k) != v}
        if wrong:
            raise SystemExit(f"{label}: {output.name} did not do the benchmarked work: got {wrong}, expected "
                             f"{ {k: expected[k] for k in wrong} }")
        total += report["frames_processed"]
    return total


def _timed(label: str, command: list[str], outputs: list[Path], frames: int, face_cache: list[str]) -> Timed:
    tic = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"{label} failed (exit {done.returncode}): {' | '.join(tail)}")
    generated = check_reports(label, outputs, frames, face_cache)
    jobs = len(outputs)
    return Timed(label, command, jobs, round(wall, 2), done.returncode, round(60 * jobs / wall, 3), generated)


def _outputs(audios: list[Path], out: Path) -> list[Path]:
    return [out / f"{a.stem}.mp4" for a in audios]


def _run_command(video: Path, audio: Path, output: Path, run_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "latentmuse", "run", str(video), "--audio", str(audio), "-o", str(output),
            "--report", str(output.with_name(output.name + ".json")), "--no-cache", *run_args]


def _jobs_file(video: Path, audios: list[Path], out: Path, path: Path) -> Path:
    path.write_text("".join(json.dumps({"video": str(video), "audio": str(a), "output": str(o)}) + "\n"
                            for a, o in zip(audios, _outputs(audios, out))))
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
    # cutaway=(0, 0): an empty cutaway, the face in every frame (see the module's docstring)
    sample = build_sample(folder / "clip", seconds=Fraction(seconds).limit_denominator(1000), size=size, cutaway=(0, 0))
    audios = _speech(folder, clips, seconds)
    frames = sample.frame_count
    result = ScaleResult(weights, seconds, size, args)

    def fresh(name: str) -> Path:
        path = folder / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    # 1. N runs vs one batch
    out = fresh("runs")
    tic = time.perf_counter()
    each = [_timed("run", _run_command(sample.video, audio, output, args), [output], frames, ["off"])
            for audio, output in zip(audios, _outputs(audios, out))]
    wall = time.perf_counter() - tic
    runs = Timed(f"{clips} x latentmuse run", ["latentmuse run ..."] * clips, clips, round(wall, 2), 0,
                 round(60 * clips / wall, 3), sum(t.frames_generated for t in each))
    out = fresh("batch")
    batch = _timed("one batch", _batch(_jobs_file(sample.video, audios, out, folder / "jobs.jsonl"), args, "--no-cache"),
                   _outputs(audios, out), frames, ["off"] * clips)
    result.comparisons.append(Comparison("runs_vs_batch", runs, batch, round(batch.jobs_per_minute / runs.jobs_per_minute, 3)))

    # 2. four tracks of one video: cold cache (a miss, then hits) vs warm (all hits)
    cache, out = fresh("cache"), fresh("cached")
    jobs4 = _jobs_file(sample.video, audios[:4], out, folder / "jobs4.jsonl")
    outputs4 = _outputs(audios[:4], out)
    cold = _timed("batch, cold cache", _batch(jobs4, args, "--cache", str(cache)), outputs4, frames,
                  ["miss"] + ["hit"] * (len(outputs4) - 1))
    warm = _timed("batch --force, warm cache", _batch(jobs4, args, "--cache", str(cache), "--force"), outputs4, frames,
                  ["hit"] * len(outputs4))
    result.comparisons.append(Comparison("cold_vs_cached", cold, warm, round(warm.jobs_per_minute / cold.jobs_per_minute, 3)))

    # 3. Ray, 1 actor vs 2
    if ray:
        timed = []
        for workers in (1, 2):
            out = fresh(f"ray{workers}")
            jobs = _jobs_file(sample.video, audios, out, folder / f"jobs_ray{workers}.jsonl")
            timed.append(_timed(f"batch --ray auto --workers {workers}",
                                _batch(jobs, args, "--no-cache", "--ray", "auto", "--workers", str(workers)),
                                _outputs(audios, out), frames, ["off"] * clips))
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
