"""Outcomes a batch can act on: the exit code says whether every process frame was generated, and the
report (``--report``) is written atomically on every outcome with its status, error line, frames
written so far and exit code.

The CLI runs in-process on stand-in runners (tests/standins.py, patched in for the weights), so a run
takes a second and the injected failures are exact.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from latentmuse.errors import LatentmuseError
from latentmuse.outcomes import ExitCode
from latentmuse.runtime import media, session, stream
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions
from latentmuse.runtime.report import RunReport

from .conftest import run_cli
from .standins import standin_models, twenty_frame_sample, whisper_standin

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """0.8 s at 25 fps: 20 frames, 15 with a face, frames 5-9 a faceless cutaway."""
    return twenty_frame_sample(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def standins(monkeypatch):
    """The run's models are stand-ins (what ``--weights smoke`` would load, of known function)."""
    models, _ = standin_models(steps=1, whisper_runner=whisper_standin())
    monkeypatch.setattr(session, "load_run_models", lambda *args, **kwargs: models)
    return models


def fail_musetalk(models, message: str = "injected") -> None:
    def broken(latents, audio):
        raise RuntimeError(message)
    models.runners["musetalk_unet"].fn = broken


def cli_run(capsys, clip, folder: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "run", str(clip.video), "-o", str(folder / "out.mp4"), "--weights", "smoke",
                   "--face-detector", "dlib", "--generator", "musetalk", "--report", str(folder / "report.json"),
                   *extra)


def read_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- failed frames


def test_frames_that_failed_every_generator_are_written_and_exit_3(capsys, clip, standins, tmp_path):
    fail_musetalk(standins)
    code, out, err = cli_run(capsys, clip, tmp_path)
    assert code == ExitCode.FAILED_FRAMES == 3, err
    (line,) = error_lines(err)
    assert line.startswith("error: 15 of 20 frames failed every generator and were passed through unchanged "
                           "(musetalk: RuntimeError: injected (15 frames))") and "--allow-failed-frames" in line
    assert "15 failed" in out and "musetalk -> passthrough: RuntimeError: injected" in out  # the table says why
    report = read_report(tmp_path)
    assert (report["status"], report["exit_code"], report["frames_failed"], report["frames_written"]) == \
        ("failed_frames", 3, 15, 20)
    assert report["error"] == line[len("error: "):line.index(" in ")]
    assert report["fallbacks"] == [{"generator": "musetalk", "reason": "RuntimeError: injected", "to": "passthrough",
                                    "frames": [[0, 4], [10, 19]], "count": 15}]
    # the video is complete: every frame passed through as read (H.264 at crf 18, so close, not equal)
    written, inputs = list(media.iter_frames(tmp_path / "out.mp4")), list(media.iter_frames(clip.video))
    assert len(written) == len(inputs) == 20
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(written, inputs)) < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "report.json"]


def test_allow_failed_frames_exits_0_and_the_report_still_says_failed_frames(capsys, clip, standins, tmp_path):
    """Also: square brackets in a path or a reason are shown as they are (rich markup would eat them)."""
    fail_musetalk(standins, "injected [/b] [red]")
    folder = tmp_path / "take [v2]"
    folder.mkdir()
    code, out, err = cli_run(capsys, clip, folder, "--allow-failed-frames")
    assert code == 0 and error_lines(err) == [], err
    flat = " ".join(out.split())
    assert "warning: 15 of 20 frames failed every generator and were passed through unchanged " \
           "(musetalk: RuntimeError: injected [/b] [red] (15 frames))" in flat
    assert f"wrote {folder / 'out.mp4'}" in flat and "passthrough: RuntimeError: injected [/b] [red]" in flat
    report = read_report(folder)
    assert (report["status"], report["exit_code"], report["frames_failed"]) == ("failed_frames", 0, 15)


def test_a_run_whose_frames_all_generated_is_ok_and_exit_0(capsys, clip, standins, tmp_path):
    code, out, err = cli_run(capsys, clip, tmp_path)
    assert code == 0 and error_lines(err) == [], err
    report = read_report(tmp_path)
    assert (report["status"], report["error"], report["exit_code"]) == ("ok", None, 0)
    assert report["frames_written"] == report["frames_out"] == 20 and report["frames_by_generator"] == {"musetalk": 15}


def test_a_fallback_that_serves_the_window_is_not_a_failed_frame(clip, tmp_path):
    """The primary failing everywhere is fine as long as the fallback generator made every frame."""
    models, denoiser = standin_models(steps=1, whisper_runner=whisper_standin())

    def fail(number):
        raise RuntimeError("unet3d down")
    denoiser.fail = fail
    report = run(RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                            generator="latentsync", steps=1, report=tmp_path / "r.json"),
                 sink=media.MemorySink(), models=models)
    assert report.frames_by_generator == {"musetalk": 15} and report.frames_failed == 0
    assert (report.status, report.exit_code) == ("ok", 0) and read_json(tmp_path / "r.json")["status"] == "ok"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------- errors, report


def test_an_error_after_the_paths_are_checked_writes_the_report(capsys, tmp_path):
    """A video without an audio track (and no --audio): found only once the inputs are read."""
    silent = tmp_path / "silent.mp4"
    with media.VideoWriter(silent, 64, 64, 25, None) as writer:
        for _ in range(5):
            writer.write(np.zeros((64, 64, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(capsys, "run", str(silent), "-o", str(out / "out.mp4"), "--weights", "smoke",
                           "--face-detector", "dlib", "--report", str(out / "report.json"))
    (line,) = error_lines(err)
    assert code == 1 and "no audio track" in line
    report = read_report(out)
    assert (report["status"], report["exit_code"], report["frames_written"]) == ("error", 1, 0)
    assert report["error"] == line[len("error: "):]  # the very line the user saw
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_an_error_mid_write_reports_the_frames_written_and_leaves_no_video(capsys, clip, standins, tmp_path,
                                                                           monkeypatch):
    real_write = media.VideoWriter.write

    def write(self, frame):
        if self.frames_written == 7:
            raise LatentmuseError("the disk is full.", "free some space.")
        real_write(self, frame)
    monkeypatch.setattr(media.VideoWriter, "write", write)
    code, _, err = cli_run(capsys, clip, tmp_path)
    assert code == 1 and error_lines(err) == ["error: the disk is full. Fix: free some space."]
    report = read_report(tmp_path)
    assert (report["status"], report["error"], report["exit_code"], report["frames_written"]) == \
        ("error", "the disk is full. Fix: free some space.", 1, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # the writer removed its temporary files


def test_an_unexpected_exception_is_reported_with_its_type(clip, standins, tmp_path, monkeypatch):
    """A bug in the face stage (its own thread, mid-stream, the writer open) reaches the caller as itself."""
    monkeypatch.setattr(stream.FaceStage, "_detect", lambda *args, **kwargs: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError, match="bug"):
        run(RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                       generator="musetalk", report=tmp_path / "r.json"))
    report = read_json(tmp_path / "r.json")
    assert (report["status"], report["error"], report["exit_code"]) == ("error", "ValueError: bug", 1)
    assert report["frames_in"] == 20 and report["stages"]["validate"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_path_error_before_the_report_path_is_checked_writes_no_report(capsys, clip, tmp_path):
    code, _, err = run_cli(capsys, "run", str(clip.video), "-o", str(tmp_path / "missing" / "out.mp4"),
                           "--weights", "smoke", "--report", str(tmp_path / "report.json"))
    assert code == 1 and "does not exist" in err and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- atomic report


def _report(frames: int) -> RunReport:
    return RunReport(video="v.mp4", audio="v.mp4", output="o.mp4", frames_in=frames, frames_out=frames)


def test_report_write_is_atomic_and_a_failed_write_keeps_the_previous_report(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    _report(1).write(path)
    before = path.read_bytes()

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(LatentmuseError, match=re.escape("cannot write the report") + ".*No space left on device"):
        _report(2).write(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_concurrent_report_writes_never_mix(tmp_path):
    """Each write has its own temporary file, so whichever rename lands last, the file is one whole report."""
    path = tmp_path / "report.json"
    from .standins import run_concurrently

    def writer(frames: int) -> None:
        for _ in range(20):
            _report(frames).write(path)

    errors = run_concurrently(writer, [(100,), (200000,)])
    assert errors == [] and read_json(path)["frames_in"] in (100, 200000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_the_report_gets_the_mode_of_a_plain_file(tmp_path):
    previous = os.umask(0o027)
    try:
        _report(1).write(tmp_path / "report.json")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


# ------------------------------------------------------------------------------------- exit codes


def test_exit_codes_are_documented_in_the_readme():
    text = README.read_text()
    section = text[text.index("## Exit codes"):]
    section = section[: section.find("\n## ", 4) if "\n## " in section[4:] else len(section)]
    assert [int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.M)] == [int(c) for c in ExitCode]
    assert (ExitCode.SIGINT, ExitCode.SIGTERM) == (130, 143)
