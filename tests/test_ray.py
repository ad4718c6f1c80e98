"""``latentmuse batch --ray`` on a local Ray cluster started in the test (``ray.init(num_cpus=2)``).

The actors are real processes holding a real ``LipSync`` on smoke weights (stand-ins cannot be
patched into another process). One test kills an actor's process while its job writes its video:
Ray restarts the actor, retries the job there, and the job completes with every frame; the dead
attempt's temporary files are swept by the retried writer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'latentmuse[ray]')")

from latentmuse.runtime import media  # noqa: E402

from .conftest import run_cli  # noqa: E402
from .helpers import write_wav  # noqa: E402

COMMON = ("--weights", "smoke", "--face-detector", "dlib", "--generator", "musetalk", "--no-cache")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_jobs(folder: Path, clip, n: int) -> Path:
    folder.mkdir()
    shutil.copy(clip.video, folder / "talk.mp4")
    lines = []
    for k in range(n):
        write_wav(folder / f"{k}.wav", 0.4 + 0.2 * (k % 3), freq=200.0 + 50 * k)
        lines.append(json.dumps({"video": "talk.mp4", "audio": f"{k}.wav", "output": f"out/{k}.mp4"}))
    (folder / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "jobs.jsonl"


def summary_file(jobs: Path) -> Path:
    return jobs.with_name(jobs.name + ".summary.json")


def summary_of(jobs: Path) -> dict:
    return json.loads(summary_file(jobs).read_text())


def test_a_ray_batch_runs_every_job_on_its_actors_and_resumes(capsys, cluster, clip, tmp_path):
    workers = 2
    jobs = write_jobs(tmp_path / "jobs", clip, 3)
    code, out, err = run_cli(capsys, "batch", str(jobs), *COMMON, "--ray", "auto", "--workers", str(workers))
    assert code == 0, err
    summary = summary_of(jobs)
    assert summary["mode"] == "ray" and summary["workers"] == workers
    assert [j["status"] for j in summary["jobs"]] == ["done"] * 3
    assert len({j["worker"] for j in summary["jobs"]}) == workers  # every actor took jobs
    for k, frames in enumerate((10, 15, 20)):
        assert summary["jobs"][k]["frames"] == frames
        assert media.probe(jobs.parent / "out" / f"{k}.mp4").frame_count == frames
        assert json.loads((jobs.parent / "out" / f"{k}.mp4.json").read_text())["status"] == "ok"
    # resumable exactly like a local batch: nothing runs again, no actor is started
    code, out, err = run_cli(capsys, "batch", str(jobs), *COMMON, "--ray", "auto")
    assert code == 0 and [j["status"] for j in summary_of(jobs)["jobs"]] == ["skipped"] * 3


def _writer_pid(folder: Path) -> tuple[int, Path] | None:
    """The process holding a temporary output file of ``folder`` open, found through /proc."""
    partials = {str(p) for p in folder.glob(".*.partial.mp4")} if folder.is_dir() else set()
    if not partials:
        return None
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target in partials:
                    return int(pid), Path(target)
        except OSError:
            continue
    return None


def test_an_actor_killed_mid_job_is_restarted_and_its_job_retried(capsys, cluster, clip, tmp_path):
    jobs = write_jobs(tmp_path / "jobs", clip, 2)
    out = jobs.parent / "out"
    killed: list[tuple[int, Path]] = []

    def assassin() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            found = _writer_pid(out)
            if found is not None:
                os.kill(found[0], signal.SIGKILL)
                killed.append(found)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    code, _, err = run_cli(capsys, "batch", str(jobs), *COMMON, "--ray", "auto", "--workers", "1")
    thread.join()
    assert killed, "no job was caught writing"
    assert code == 0, err
    summary = summary_of(jobs)
    assert [j["status"] for j in summary["jobs"]] == ["done", "done"]
    pid, partial = killed[0]
    assert all(j["worker"] != f"{os.uname().nodename}:{pid}" for j in summary["jobs"])  # finished on the restarted actor
    for k, frames in enumerate((10, 15)):
        assert media.probe(out / f"{k}.mp4").frame_count == frames
    assert not partial.exists() and not list(out.glob(".*partial*"))  # the dead attempt's files were swept


def test_ray_missing_is_one_line(capsys, tmp_path, clip, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    jobs = write_jobs(tmp_path / "jobs", clip, 1)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = run_cli(capsys, "batch", str(jobs), *COMMON, "--ray", "auto")
    assert code == 1 and "--ray needs Ray" in err and "pip install 'latentmuse[ray]'" in err
    assert not summary_file(jobs).exists() and not (jobs.parent / "out").exists()


@pytest.mark.slow  # a driver process starting its own local cluster: minutes on a loaded 2-core machine
def test_sigterm_on_the_driver_stops_the_actors_cleanly(clip, tmp_path):
    """The driver (its own process, starting its own local cluster) gets SIGTERM while an actor is
    writing: exit 143, the summary says what was done and what not, and no temporary file is left."""
    import subprocess
    import sys

    jobs = write_jobs(tmp_path / "jobs", clip, 4)
    out = jobs.parent / "out"
    # local: a cluster of its own, never another test's (auto joins any running one, e.g. a live service's)
    argv = [sys.executable, "-m", "latentmuse", "batch", str(jobs), *COMMON, "--ray", "local", "--workers", "1"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 600
    while _writer_pid(out) is None or not (out / "0.mp4").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the batch did not reach a second job: {process.communicate()[1][-2000:]}")
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    summary = summary_of(jobs)
    statuses = [j["status"] for j in summary["jobs"]]
    assert statuses[0] == "done" and "not_run" in statuses and summary["interrupted"]
    assert not list(out.glob(".*partial*"))  # the stopped job's writer deleted its files
    for k, status in enumerate(statuses):
        assert (out / f"{k}.mp4").exists() == (status == "done")
