"""The scale benchmark's report check: a command whose jobs skipped the work must fail the benchmark.

A clip that is all cutaway (no face) runs fast because every frame is passed through; timing it as lip
sync would be a wrong number. ``check_reports`` reads each job's report and refuses such runs.
"""

from __future__ import annotations

import json

import pytest

from latentmuse.bench.scale import check_reports


def _report(path, *, frames=10, processed=10, status="ok", cache="off", latents=None, generator="musetalk"):
    if latents is None:
        latents = {"off": "off", "miss": "miss", "hit": "hit"}[cache]
    path.with_name(path.name + ".json").write_text(json.dumps(
        {"status": status, "frames_in": frames, "frames_out": frames, "frames_processed": processed,
         "frames_passthrough": frames - processed, "face_cache": cache, "latent_cache": latents,
         "generator": generator}))
    return path


def test_reports_that_did_the_work_sum_their_generated_frames(tmp_path):
    outputs = [_report(tmp_path / "a.mp4", cache="miss"), _report(tmp_path / "b.mp4", cache="hit")]
    assert check_reports("batch", outputs, 10, ["miss", "hit"]) == 20


def test_a_passthrough_job_fails_the_benchmark_naming_it(tmp_path):
    outputs = [_report(tmp_path / "a.mp4"), _report(tmp_path / "b.mp4", processed=0)]
    with pytest.raises(SystemExit, match=r"batch: b\.mp4 did not do the benchmarked work: got \{'frames_processed': 0\}"):
        check_reports("batch", outputs, 10, ["off", "off"])


def test_an_unexpected_cache_status_or_a_missing_report_fails(tmp_path):
    with pytest.raises(SystemExit, match="'face_cache': 'miss'"):
        check_reports("warm", [_report(tmp_path / "a.mp4", cache="miss")], 10, ["hit"])
    with pytest.raises(SystemExit, match="no readable report for c.mp4"):
        check_reports("run", [tmp_path / "c.mp4"], 10, ["off"])


def test_the_latent_cache_must_follow_the_face_cache_for_musetalk_only(tmp_path):
    assert check_reports("ls", [_report(tmp_path / "a.mp4", cache="hit", latents="unused", generator="latentsync")],
                         10, ["hit"]) == 10
    with pytest.raises(SystemExit, match="'latent_cache': 'miss'"):  # a face hit whose latents were encoded again
        check_reports("warm", [_report(tmp_path / "b.mp4", cache="hit", latents="miss")], 10, ["hit"])
