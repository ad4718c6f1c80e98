"""Service benchmark: jobs per minute through ``latentmuse serve`` against ``latentmuse batch --ray local``
on the same jobs, and the latency of status calls while they run (docs/SERVE.md, docs/BENCHMARKS.md).

Both sides are whole commands started from outside, as a user runs them, with the same load options
(``--weights W --face-detector dlib --generator musetalk --no-cache``) and ``--workers`` CPU workers on
a new local Ray cluster each. The inputs are made once: the demo clip (skimage's astronaut, 0.8 s at
25 fps, 200 x 200, a faceless cutaway from 0.2 s to 0.4 s) and N different espeak-ng speech tracks of
``--audio-seconds`` each; job k is the clip with track k.

1. **Batch:** the N jobs as a JSONL job list, ``latentmuse batch JOBS --ray local --workers W ...``:
   the wall time of the whole command (imports, Ray's start, the actors' model loads, the jobs) and
   its summary's ``seconds``. That figure is timed by ``batch/ray_backend.run_ray`` from before it
   joins Ray, so it includes Ray's start and the actors' loads as well as the jobs.
2. **Service:** ``latentmuse serve --ray local --workers W ... --port P --state DIR`` in a process group
   of its own; its start-up is the time until ``/healthz`` answers 200 (Serve has deployed the
   replicas, models loaded). Then the N jobs are submitted at once (one thread each, multipart
   uploads of the same files), and one client polls ``GET /v1/jobs/ID`` of the unfinished jobs in
   turn, one call after another on one keep-alive connection (``--poll-interval`` between calls,
   default none: as fast as it answers), timing each call. The jobs' time is from the first submit
   to the poll that saw the last job finished. Then SIGTERM to the group (bounded wait, SIGKILL after).

Jobs per minute: N over the jobs' time (service: first submit to last done; batch: the summary's
seconds), and N over the time with start-up (service: start-up plus the jobs' time; batch: the
command's wall time). Also, for both, N over the busiest worker's summed job seconds (the work
without start-up, queueing or dispatch). Every job must be done on both sides with the same frame
count per track, or the benchmark fails with one line. Every wait is bounded; every process started
here is stopped on the way out. Only 127.0.0.1 is contacted.

``python -m latentmuse.bench.serving --weights smoke --folder out/serving --json out/serving.json``
(``make bench-serve``). The module drives the CLI; it imports nothing from ``serve/`` or ``cli/``.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

GENERATOR = "musetalk"
FACE_DETECTOR = "dlib"
CLIP_SECONDS = Fraction(4, 5)
CLIP_SIZE = (200, 200)
CUTAWAY = (Fraction(1, 5), Fraction(2, 5))
#: how many status calls may fail (connection reset, non-200) before the benchmark gives up
MAX_STATUS_ERRORS = 20
#: a bound on the poll loop besides its deadline
MAX_STATUS_CALLS = 5_000_000
ACTIVE = ("queued", "running")


@dataclass
class BatchSide:
    command: list[str]
    exit_code: int
    wall_s: float  # the whole command
    summary_seconds: float  # the summary's own: Ray's start, the actors' loads and the jobs
    summary_jobs_per_minute: float | None  # as the summary says
    jobs_per_minute: float  # N / summary seconds
    jobs_per_minute_with_startup: float  # N / wall
    busiest_worker_s: float  # the largest sum of job seconds over one actor
    jobs_per_minute_busy: float  # N / busiest_worker_s
    job_seconds: list[float] = field(default_factory=list)  # per job, in job order
    frames: list[int] = field(default_factory=list)
    workers: list[str | None] = field(default_factory=list)


@dataclass
class StatusCalls:
    count: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    calls_per_s: float | None
    poll_interval_s: float


@dataclass
class ServiceSide:
    command: list[str]
    startup_s: float  # Popen to /healthz 200
    submit_s: float  # first submit sent to the last 202 received
    jobs_s: float  # first submit to the poll that saw the last job finished
    jobs_per_minute: float  # N / jobs_s
    jobs_per_minute_with_startup: float  # N / (startup_s + jobs_s)
    busiest_worker_s: float
    jobs_per_minute_busy: float
    stop_s: float | None = None  # SIGTERM to exit
    exit_code: int | None = None
    job_seconds: list[float] = field(default_factory=list)  # the worker's seconds, per job
    wait_seconds: list[float] = field(default_factory=list)  # created to started, per job (the server's clock)
    done_after_s: list[float] = field(default_factory=list)  # first submit to seen finished, per job
    frames: list[int] = field(default_factory=list)
    workers: list[str | None] = field(default_factory=list)
    status_calls: StatusCalls | None = None


@dataclass
class ServingResult:
    date: str
    machine: dict
    weights: str
    jobs: int
    workers: int
    clip: dict
    audio: dict
    load_args: list[str]
    batch: BatchSide | None = None
    service: ServiceSide | None = None
    ratios: dict = field(default_factory=dict)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """What the numbers were measured on, without importing torch or ray here."""
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "memory_gib": memory, "torch": _version("torch"), "ray": _version("ray"),
            "fastapi": _version("fastapi"), "latentmuse": _version("latentmuse")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _kill_group(process: subprocess.Popen, grace: float = 60.0) -> int | None:
    """SIGTERM to ``process``'s group, a bounded wait, then SIGKILL to the group; its exit code."""
    code = None
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        code = process.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of Ray's is left in the group
        except (ProcessLookupError, PermissionError):
            pass
    return code


def _busiest(seconds: list[float], workers: list[str | None]) -> float:
    totals: dict[str | None, float] = {}
    for s, w in zip(seconds, workers, strict=True):
        totals[w] = totals.get(w, 0.0) + s
    return max(totals.values()) if totals else 0.0


def _per_minute(jobs: int, seconds: float) -> float:
    return round(60 * jobs / seconds, 3) if seconds > 0 else 0.0


# ----------------------------------------------------------------------------------------- inputs

def make_inputs(folder: Path, jobs: int, audio_seconds: float) -> tuple[Path, list[Path], dict, dict]:
    """The clip and ``jobs`` speech tracks (espeak-ng), and their descriptions for the JSON."""
    from ..samples import build_sample
    from .scale import _speech

    sample = build_sample(folder / "clip", seconds=CLIP_SECONDS, size=CLIP_SIZE, cutaway=CUTAWAY)
    tracks_folder = folder / "audio"
    tracks_folder.mkdir(parents=True, exist_ok=True)
    tracks = _speech(tracks_folder, jobs, audio_seconds)
    clip = {"video": str(sample.video), "source": "latentmuse.samples.build_sample (skimage astronaut)",
            "frames": sample.frame_count, "fps": str(sample.fps), "size": list(sample.size),
            "cutaway_frames": [sample.cutaway_frames.start, sample.cutaway_frames.stop]}
    audio = {"kind": "espeak-ng speech, a different phrase per track, 16 kHz mono wav", "seconds": audio_seconds,
             "tracks": [str(t) for t in tracks]}
    return sample.video, tracks, clip, audio


# ----------------------------------------------------------------------------------------- batch

def run_batch(folder: Path, video: Path, tracks: list[Path], load_args: list[str], workers: int,
              limit: float) -> BatchSide:
    out = folder / "batch"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    jobs_file = folder / "jobs.jsonl"
    outputs = [out / f"{t.stem}.mp4" for t in tracks]
    jobs_file.write_text("".join(json.dumps({"video": str(video), "audio": str(t), "output": str(o)}) + "\n"
                                 for t, o in zip(tracks, outputs, strict=True)))
    summary_path = folder / "batch.summary.json"
    summary_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "latentmuse", "batch", str(jobs_file), "--ray", "local", "--workers", str(workers),
               *load_args, "--no-cache", "--summary", str(summary_path)]
    log = folder / "batch.log"
    with log.open("wb") as sink:
        tic = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            _kill_group(process, 30)
            raise SystemExit(f"batch: not finished in {limit:.0f} s (stopped); see {log}") from None
        except BaseException:
            _kill_group(process, 30)
            raise
        wall = time.perf_counter() - tic
    if code != 0:
        raise SystemExit(f"batch failed (exit {code}): {_tail(log)}; see {log}")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"batch: no readable summary {summary_path} ({exc})") from None
    results = summary["jobs"]
    wrong = [(Path(r["output"]).name, r["status"], r.get("reason")) for r in results if r["status"] != "done"]
    if wrong or len(results) != len(tracks):
        raise SystemExit(f"batch: not every job was done now: {wrong or len(results)}")
    seconds = [round(r["seconds"], 3) for r in results]
    names = [r.get("worker") for r in results]
    busiest = _busiest(seconds, names)
    n = len(tracks)
    return BatchSide(command, code, round(wall, 3), summary["seconds"], summary.get("jobs_per_minute"),
                     _per_minute(n, summary["seconds"]), _per_minute(n, wall), round(busiest, 3),
                     _per_minute(n, busiest), seconds, [r["frames"] for r in results], names)


# ----------------------------------------------------------------------------------------- service

def _multipart(files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _submit(port: int, video: bytes, track: Path, timeout: float) -> tuple[int, str]:
    body, content_type = _multipart({"video": ("clip.mp4", video), "audio": (track.name, track.read_bytes())})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/jobs", body=body, headers={"Content-Type": content_type})
        reply = connection.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        connection.close()


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        reply = connection.getresponse()
        reply.read()
        return reply.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _server_seconds(stamp: str | None) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp).timestamp()


def run_service(folder: Path, video: Path, tracks: list[Path], load_args: list[str], workers: int,
                start_limit: float, job_limit: float, poll_interval: float) -> ServiceSide:
    state = folder / "state"
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    n = len(tracks)
    command = [sys.executable, "-m", "latentmuse", "serve", "--ray", "local", "--workers", str(workers),
               *load_args, "--no-cache", "--no-web", "--port", str(port), "--state", str(state),
               "--max-queue", str(max(100, n)), "--max-jobs-per-client", str(max(10, n))]
    log = folder / "serve.log"
    video_bytes = video.read_bytes()
    with log.open("wb") as sink:
        tic = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + start_limit
        while not _healthy(port):
            if process.poll() is not None:
                raise SystemExit(f"serve exited ({process.returncode}) before /healthz answered: {_tail(log)}; see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"serve: /healthz did not answer in {start_limit:.0f} s; see {log}")
            time.sleep(0.2)
        startup = time.perf_counter() - tic

        # all N at once: one thread each, released together
        replies: list[tuple[int, int, str] | None] = [None] * n
        sent = [float("inf")] * n
        barrier = threading.Barrier(n)

        def one(k: int) -> None:
            try:
                barrier.wait(60)
                sent[k] = time.perf_counter()
                replies[k] = (k, *_submit(port, video_bytes, tracks[k], 120))
            except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
                replies[k] = (k, 0, str(exc))

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
        for thread in threads:  # they wait on the barrier: the last one's start releases them all
            thread.start()
        for thread in threads:
            thread.join(180)
        submitted_at = time.perf_counter()
        refused = [r for r in replies if r is None or r[1] != 202]
        if refused:
            raise SystemExit(f"serve: not every submit was accepted: {[(r[0], r[1], r[2][:200]) if r else None for r in refused]}")
        first = min(sent)
        submitted = submitted_at - first
        ids = [json.loads(r[2])["id"] for r in replies]  # type: ignore[index]

        latencies, errors, views, seen = _poll(process, port, ids, first, job_limit, poll_interval, log)
        jobs_s = max(seen.values())
    except BaseException:
        _kill_group(process, 30)
        raise
    stop_tic = time.perf_counter()
    code = _kill_group(process, 60)
    stop_s = time.perf_counter() - stop_tic

    wrong = {k: (views[i]["status"], views[i].get("error")) for k, i in enumerate(ids) if views[i]["status"] != "done"}
    if wrong:
        raise SystemExit(f"serve: not every job is done (track: status, error): {wrong}; see {log}")
    seconds = [round(views[i]["seconds"] or 0.0, 3) for i in ids]
    names = [views[i].get("worker") for i in ids]
    waits = []
    for i in ids:
        created, started = _server_seconds(views[i]["created"]), _server_seconds(views[i]["started"])
        waits.append(round(started - created, 3) if created is not None and started is not None else None)
    busiest = _busiest(seconds, names)
    calls = _latency(latencies, errors, jobs_s, poll_interval)
    return ServiceSide(command, round(startup, 3), round(submitted, 3), round(jobs_s, 3), _per_minute(n, jobs_s),
                       _per_minute(n, startup + jobs_s), round(busiest, 3), _per_minute(n, busiest),
                       round(stop_s, 3), code, seconds, waits, [round(seen[i], 3) for i in ids],
                       [views[i]["progress"]["frames_done"] for i in ids], names, calls)


def _poll(process: subprocess.Popen, port: int, ids: list[str], first: float, limit: float, interval: float,
          log: Path) -> tuple[list[float], int, dict[str, dict], dict[str, float]]:
    """``GET /v1/jobs/ID`` of each unfinished job in turn on one connection until none is queued or
    running: each answered call's seconds, how many calls failed, each job's last view, and when
    (seconds after ``first``) it was seen finished."""
    deadline = time.monotonic() + limit
    latencies: list[float] = []
    views: dict[str, dict] = {}
    seen: dict[str, float] = {}
    errors = 0
    active = list(ids)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        k = 0
        while active:
            if time.monotonic() > deadline:
                raise SystemExit(f"serve: {len(active)} of {len(ids)} jobs unfinished after {limit:.0f} s; see {log}")
            if len(latencies) >= MAX_STATUS_CALLS:
                raise SystemExit(f"serve: {MAX_STATUS_CALLS} status calls and {len(active)} jobs still unfinished")
            if process.poll() is not None:
                raise SystemExit(f"serve exited ({process.returncode}) with jobs unfinished: {_tail(log)}; see {log}")
            job_id = active[k % len(active)]
            tic = time.perf_counter()
            try:
                connection.request("GET", f"/v1/jobs/{job_id}")
                reply = connection.getresponse()
                body = reply.read()
                toc = time.perf_counter()
                ok = reply.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            if not ok:
                errors += 1
                if errors > MAX_STATUS_ERRORS:
                    raise SystemExit(f"serve: {errors} status calls failed; see {log}")
                time.sleep(0.1)
                continue
            latencies.append(toc - tic)
            view = json.loads(body)
            views[job_id] = view
            if view["status"] not in ACTIVE:
                seen[job_id] = toc - first
                active.remove(job_id)
            else:
                k += 1
            if interval > 0:
                time.sleep(interval)
    finally:
        connection.close()
    return latencies, errors, views, seen


def _latency(latencies: list[float], errors: int, seconds: float, interval: float) -> StatusCalls:
    if not latencies:
        return StatusCalls(0, errors, None, None, None, None, None, None, interval)
    from .measure import percentile  # imports torch: only once the service has stopped

    ms = [1000 * s for s in latencies]
    return StatusCalls(len(ms), errors, round(percentile(ms, 0.5), 3), round(percentile(ms, 0.95), 3),
                       round(percentile(ms, 0.99), 3), round(max(ms), 3), round(sum(ms) / len(ms), 3),
                       round(len(ms) / seconds, 1) if seconds > 0 else None, interval)


# ----------------------------------------------------------------------------------------- both

def serving(folder: Path, weights: str, jobs: int = 8, workers: int = 2, audio_seconds: float = 1.0,
            start_limit: float = 300.0, job_limit: float = 900.0, poll_interval: float = 0.0) -> ServingResult:
    folder.mkdir(parents=True, exist_ok=True)
    load_args = ["--weights", weights, "--face-detector", FACE_DETECTOR, "--generator", GENERATOR]
    video, tracks, clip, audio = make_inputs(folder, jobs, audio_seconds)
    result = ServingResult(datetime.now(timezone.utc).isoformat(timespec="seconds"), machine(), weights, jobs, workers,
                           clip, audio, load_args)
    result.batch = run_batch(folder, video, tracks, load_args, workers, start_limit + job_limit)
    result.service = run_service(folder, video, tracks, load_args, workers, start_limit, job_limit, poll_interval)
    if result.batch.frames != result.service.frames:
        raise SystemExit(f"frames per track differ: batch {result.batch.frames}, service {result.service.frames}")
    b, s = result.batch, result.service
    result.ratios = {
        "service/batch jobs_per_minute": round(s.jobs_per_minute / b.jobs_per_minute, 3) if b.jobs_per_minute else None,
        "service/batch jobs_per_minute_with_startup":
            round(s.jobs_per_minute_with_startup / b.jobs_per_minute_with_startup, 3) if b.jobs_per_minute_with_startup else None,
        "service/batch jobs_per_minute_busy": round(s.jobs_per_minute_busy / b.jobs_per_minute_busy, 3) if b.jobs_per_minute_busy else None,
    }
    return result


def table(result: ServingResult) -> str:
    b, s = result.batch, result.service
    assert b is not None and s is not None
    c = s.status_calls
    rows = [
        ("", "service", "batch --ray local", "service/batch"),
        ("start-up s", f"{s.startup_s:.1f} (to /healthz)", "in its jobs s (Ray's start, the loads)", ""),
        ("jobs s", f"{s.jobs_s:.1f} (first submit to last done)", f"{b.summary_seconds:.1f} (the summary's seconds)", ""),
        ("whole s", f"{s.startup_s + s.jobs_s:.1f} (start-up + jobs)", f"{b.wall_s:.1f} (the command)", ""),
        ("jobs/min", f"{s.jobs_per_minute:.2f}", f"{b.jobs_per_minute:.2f}",
         f"{result.ratios['service/batch jobs_per_minute']}x"),
        ("jobs/min with start-up", f"{s.jobs_per_minute_with_startup:.2f}", f"{b.jobs_per_minute_with_startup:.2f}",
         f"{result.ratios['service/batch jobs_per_minute_with_startup']}x"),
        ("jobs/min, busiest worker's job s", f"{s.jobs_per_minute_busy:.2f} ({s.busiest_worker_s:.1f} s)",
         f"{b.jobs_per_minute_busy:.2f} ({b.busiest_worker_s:.1f} s)",
         f"{result.ratios['service/batch jobs_per_minute_busy']}x"),
        ("per-job s", " ".join(f"{v:.1f}" for v in s.job_seconds), " ".join(f"{v:.1f}" for v in b.job_seconds), ""),
        ("frames per job", " ".join(map(str, s.frames)), " ".join(map(str, b.frames)), ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{result.jobs} jobs, {result.workers} workers, weights {result.weights}, "
             f"{result.machine['cpus']} CPUs, torch {result.machine['torch']}, ray {result.machine['ray']}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if c is not None and c.count:
        lines.append(f"status calls while the jobs ran: {c.count} ({c.calls_per_s}/s, {c.errors} failed), "
                     f"p50 {c.p50_ms} ms, p95 {c.p95_ms} ms, p99 {c.p99_ms} ms, max {c.max_ms} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentmuse.bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="smoke", help="smoke, or a weights folder")
    parser.add_argument("--jobs", type=int, default=8, help="N: jobs (the clip with N different speech tracks)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (actors / replicas) on each side")
    parser.add_argument("--audio-seconds", type=float, default=1.0, help="length of each speech track")
    parser.add_argument("--folder", type=Path, default=Path("out/serving"), help="inputs, outputs, logs, the service's state")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--poll-interval", type=float, default=0.0, help="seconds between status calls (0: as fast as it answers)")
    parser.add_argument("--start-limit", type=float, default=300.0, help="longest wait for the service's /healthz, in seconds")
    parser.add_argument("--job-limit", type=float, default=900.0, help="longest wait for the jobs, in seconds")
    ns = parser.parse_args(argv)
    if ns.jobs < 1 or ns.workers < 1:
        parser.error("--jobs and --workers must be at least 1")
    result = serving(ns.folder, ns.weights, ns.jobs, ns.workers, ns.audio_seconds, ns.start_limit, ns.job_limit,
                     ns.poll_interval)
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
