"""The soak's verdict (hand-made runs) and one miniature soak end to end (slow)."""

from __future__ import annotations

import json

import pytest

from latentmuse.bench.soak import SoakResult, SoakRun, judge, main


def _run(minutes: float, frames: int, rss: float, *, out: int | None = None, code: int = 0) -> SoakRun:
    written = frames if out is None else out
    return SoakRun(minutes=minutes, frames_in=frames, frames_out=written, report_frames_out=written,
                   exit_code=code, wall_s=1.0, peak_rss_mb=rss)


def _result(baseline: SoakRun, long: SoakRun) -> SoakResult:
    return judge(SoakResult(size=(1920, 1080), fps="25", args=[], baseline=baseline, long=long))


def test_passes_within_tolerance_and_reports_the_ratio():
    result = _result(_run(1, 1500, 1000.0), _run(10, 15000, 1190.0))
    assert result.passed and result.every_frame_present and result.rss_ratio == 1.19


def test_rss_growth_beyond_20_percent_fails_with_the_ratio_in_the_reason():
    result = _result(_run(1, 1500, 1000.0), _run(10, 15000, 1210.0))
    assert not result.passed and result.every_frame_present
    assert result.problems == ["peak RSS grew 1.21x from the 1-minute clip to the 10-minute one (tolerance 1.20x)."]


def test_a_missing_frame_or_a_failed_run_fails():
    result = _result(_run(1, 1500, 1000.0), _run(10, 15000, 1000.0, out=14999))
    assert not result.passed and not result.every_frame_present
    assert "wrote 14999 frames (report 14999) of 15000" in result.problems[0]
    failed = _result(_run(1, 1500, 1000.0, code=3), _run(10, 15000, 1000.0))
    assert not failed.passed and "failed" in failed.problems[0]


@pytest.mark.slow
def test_a_miniature_soak_runs_the_cli_and_counts_every_frame(tmp_path):
    """Two short 200x200 clips through the real CLI in child processes: frames counted, RSS read."""
    code = main(["--minutes", "0.04", "--baseline-minutes", "0.02", "--size", "200x200", "--folder", str(tmp_path),
                 "--json", str(tmp_path / "soak.json"), "--", "--weights", "smoke", "--face-detector", "dlib",
                 "--generator", "musetalk"])
    data = json.loads((tmp_path / "soak.json").read_text())
    assert data["every_frame_present"], data["problems"]
    assert data["baseline"]["frames_in"] == 30 and data["long"]["frames_in"] == 60
    assert data["long"]["frames_out"] == 60 and data["baseline"]["peak_rss_mb"] > 100
    assert code == (0 if data["passed"] else 1)
