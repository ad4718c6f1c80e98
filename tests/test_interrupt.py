"""SIGINT and SIGTERM stop a real ``latentmuse run`` process mid-generation: exit 130 / 143 within
seconds, one line on stderr, no output file, no temporary file, and a report saying interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentmuse.outcomes import Interrupted, signals_as_interrupts
from latentmuse.samples import build_sample

ROOT = Path(__file__).resolve().parents[1]
#: Startup (imports, smoke weights, audio features, faces) takes a few seconds, more on a loaded machine.
START_TIMEOUT_S = 120
#: A signal is handled between network calls; unwinding, the report and interpreter exit add a second or two.
STOP_WITHIN_S = 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1.6 s of the sample (40 frames, a face in every one): long enough that a smoke MuseTalk run is
    still generating seconds after its writer has opened its temporary files."""
    return build_sample(tmp_path_factory.mktemp("clip"), seconds=1.6, size=(200, 200), cutaway=None)


def _start(clip, folder: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "latentmuse", "run", str(clip.video), "-o", str(folder / "out.mp4"),
            "--weights", "smoke", "--face-detector", "dlib", "--generator", "musetalk",
            "--report", str(folder / "report.json")]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _wait_until_generating(process: subprocess.Popen, folder: Path) -> None:
    """Generation has begun once the video writer's temporary file (hidden, named after out.mp4) exists
    in the output folder (the path checks' probe files, also hidden, come and go before), plus a
    moment for the writer to finish opening it: a signal inside the writer's constructor is the
    writer's to clean up, not what this test is about."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not [name for name in _hidden(folder) if name.startswith(".out.") and ".partial" in name]:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended ({process.returncode}) before it began generating: {err[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run did not begin generating in time")
        time.sleep(0.02)
    time.sleep(0.5)


def test_sigint_and_sigterm_stop_a_run_and_leave_nothing_but_the_report(clip, tmp_path):
    """Both signals in one test, on two runs at once: each run's startup is most of the time."""
    cases = {signal.SIGINT: 130, signal.SIGTERM: 143}
    runs = {}
    for signum in cases:
        folder = tmp_path / signum.name
        folder.mkdir()
        runs[signum] = (folder, _start(clip, folder))
    for signum, (folder, process) in runs.items():
        _wait_until_generating(process, folder)
        process.send_signal(signum)
        runs[signum] = (folder, process, time.monotonic())
    for signum, (folder, process, sent) in runs.items():
        try:
            out, err = process.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"{signum.name} did not stop the run")
        took = time.monotonic() - sent
        assert process.returncode == cases[signum], (signum.name, err[-2000:])
        assert took < STOP_WITHIN_S, f"{signum.name}: stopped {took:.1f} s after the signal"
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == [f"interrupted by {signum.name}: stopped, no output written"], err[-2000:]
        assert sorted(p.name for p in folder.iterdir()) == ["report.json"]  # no output, no temporary file
        report = json.loads((folder / "report.json").read_text())
        assert report["status"] == "interrupted" and report["exit_code"] == cases[signum]
        assert report["error"] == f"interrupted by {signum.name}"
        assert 0 <= report["frames_written"] < report["frames_out"] == 40


def _deliver(signum: int) -> None:
    """Send ``signum`` to this process and give the interpreter bytecodes at which to run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(10_000):
        pass


def test_a_signal_swallowed_by_a_finalizer_is_raised_at_the_next_checkpoint(monkeypatch):
    swallowed: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_value))

    class Finalized:
        def __del__(self):
            _deliver(signal.SIGTERM)  # the handler's exception is "ignored" here, as in any __del__

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with signals_as_interrupts() as guard:
            obj = Finalized()
            del obj  # the signal arrives inside the finalizer and its exception is swallowed
            assert guard.pending == signal.SIGTERM
            _deliver(signal.SIGINT)  # a second signal does not raise (the first one's cleanup must run)
            guard.check()  # ... but the checkpoint does
            pytest.fail("check() did not raise")
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert str(info.value) == "interrupted by SIGTERM"
    assert [type(exc) for exc in swallowed] == [Interrupted]  # the handler's own raise was lost in __del__
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command


def test_the_handlers_are_installed_only_for_the_command():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    import latentmuse.cli.app  # noqa: F401 - importing the CLI installs nothing

    assert {signum: signal.getsignal(signum) for signum in before} == before
    with signals_as_interrupts() as guard:
        assert signal.getsignal(signal.SIGTERM) == guard.handle == signal.getsignal(signal.SIGINT)
        guard.check()  # nothing pending: no-op
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_sigterm_stops_a_batch_with_its_summary_and_nothing_partial(clip, tmp_path):
    """A batch stopped mid-job: exit 143, the job in progress leaves no output and no temporary file,
    the summary says which jobs were done and which not reached, and a rerun resumes."""
    folder = tmp_path / "batch"
    folder.mkdir()
    jobs = folder / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"video": str(clip.video), "output": f"out/{k}.mp4"}) + "\n" for k in range(3)))
    argv = [sys.executable, "-m", "latentmuse", "batch", str(jobs), "--weights", "smoke", "--face-detector", "dlib",
            "--generator", "musetalk", "--no-cache"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out = folder / "out"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (out.is_dir() and (out / "0.mp4").exists() and [p for p in out.iterdir() if p.name.startswith(".1.")]):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the batch did not reach its second job: {process.communicate()[1][-2000:]}")
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=START_TIMEOUT_S)
    assert process.returncode == 143, err[-2000:]
    summary = json.loads(jobs.with_name("jobs.jsonl.summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done", "not_run", "not_run"]
    assert summary["interrupted"] == "interrupted by SIGTERM" and summary["exit_code"] == 143
    assert sorted(p.name for p in out.iterdir()) == ["0.mp4", "0.mp4.json", "1.mp4.json"]  # job 2's report: interrupted
    assert json.loads((out / "1.mp4.json").read_text())["status"] == "interrupted"
