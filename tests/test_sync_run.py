"""The lip-sync score in a run, a batch and ``latentmuse score``: the report's ``sync`` block, the table,
the quality gate (status low_sync, exit 4), the batch's column and counts, and the equality of the score
made in the stream with an independent scoring of the written frames.

Generation runs on the stand-in runners (tests/standins.py); SyncNet is the seeded tiny network
(the smoke weights' own), on PyTorch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latentmuse.graphs import wrappers
from latentmuse.models.smoke import smoke_model
from latentmuse.outcomes import ExitCode
from latentmuse.runners.torch_runner import TorchRunner
from latentmuse.runtime import media, sync
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions

from .conftest import run_cli
from .helpers import write_level_video, write_wav
from .standins import Notes, counted_standin_loads, standin_models, whisper_standin

COMMON = ("--weights", "smoke", "--face-detector", "dlib", "--generator", "musetalk", "--no-cache")
#: smoke weights are scored only when asked (auto never scores random weights)
SCORED = (*COMMON, "--sync-score", "on")


def syncnet_runners() -> dict:
    """The smoke SyncNet's two graphs on PyTorch: what a smoke run with --sync-score on loads."""
    model = smoke_model("syncnet")
    return {"syncnet_audio": TorchRunner("syncnet_audio", wrappers.SyncNetAudioGraph(model)),
            "syncnet_lip": TorchRunner("syncnet_lip", wrappers.SyncNetLipGraph(model))}


@pytest.fixture
def scored_loads(monkeypatch):
    """Stand-in generation plus the real tiny SyncNet, behind the load counter."""
    counter = counted_standin_loads(monkeypatch)
    counter["models"].runners.update(syncnet_runners())
    return counter


def test_the_stream_scores_the_written_frames(clip, tmp_path, monkeypatch):
    """The block in the report equals a ClipScorer fed, independently, the frames the sink received
    (pasted, in output order) with the dubbed face's boxes: the tap scores exactly what is encoded."""
    models, _ = standin_models(1, whisper_runner=whisper_standin())
    models.runners.update(syncnet_runners())
    boxes: list = []
    expect = sync.SyncTap.expect
    monkeypatch.setattr(sync.SyncTap, "expect", lambda self, face: (boxes.append(None if face is None else face.box),
                                                                    expect(self, face))[1])
    sink = media.MemorySink()
    options = RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                              generator="musetalk", sync_min_run=6, report=tmp_path / "r.json")
    report = run(options, Notes(), sink=sink, models=models)
    assert report.status == "ok" and len(sink.frames) == 20 == len(boxes)
    assert [b is None for b in boxes] == [False] * 5 + [True] * 5 + [False] * 10  # the cutaway has no face
    block = report.sync
    assert block["status"] == "scored" and block["passed"] is None and block["min_confidence"] is None
    assert [(r["first_frame"], r["last_frame"]) for r in block["runs"]] == [(10, 19)]
    assert block["runs_too_short"] == 1 and block["frames_too_short"] == 5 and block["frames_scored"] == 10
    assert report.stages["sync_score"] > 0

    waveform = media.load_audio(clip.video)
    scorer = sync.ClipScorer(waveform, 25, sync.RunnerEmbedder(*syncnet_runners().values()), min_run=6)
    for frame, box in zip(sink.frames, boxes):
        scorer.add(frame, box)
    expected = scorer.finish().to_dict()
    for key in ("confidence", "distance", "offset_frames", "frames_scored", "runs", "weakest"):
        assert block[key] == expected[key], key
    # what the pasted frames changed is seen: scoring the frames as read gives another figure
    raw = sync.ClipScorer(waveform, 25, sync.RunnerEmbedder(*syncnet_runners().values()), min_run=6)
    for frame, box in zip(media.iter_frames(clip.video), boxes):
        raw.add(frame, box)
    assert raw.finish().distance != pytest.approx(block["distance"], rel=1e-9)
    assert json.loads((tmp_path / "r.json").read_text())["sync"] == block


def test_run_shows_the_score_and_gates_it(capsys, clip, scored_loads, tmp_path):
    out_ok, out_low = tmp_path / "ok.mp4", tmp_path / "low.mp4"
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(out_ok), *SCORED, "--sync-min-run", "6",
                             "--min-sync-confidence", "-1000", "--report", str(tmp_path / "ok.json"))
    assert code == 0, err
    assert "lip sync" in out and "LSE-C" in out and "passes --min-sync-confidence -1000" in out
    ok = json.loads((tmp_path / "ok.json").read_text())
    assert ok["status"] == "ok" and ok["sync"]["passed"] is True

    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(out_low), *SCORED, "--sync-min-run", "6",
                             "--min-sync-confidence", "1000", "--report", str(tmp_path / "low.json"))
    assert code == ExitCode.LOW_SYNC == 4
    low = json.loads((tmp_path / "low.json").read_text())
    assert low["status"] == "low_sync" and low["exit_code"] == 4 and low["sync"]["passed"] is False
    assert f"{low['sync']['confidence']:.2f} is below --min-sync-confidence 1000" in low["error"]
    assert out_low.is_file() and media.probe(out_low).frame_count == 20  # the video is written, whole
    assert "BELOW" in out and err.count("\n") == 1 and "is below --min-sync-confidence 1000" in err
    assert "Traceback" not in out + err


def test_nothing_scorable_is_said_and_not_gated(capsys, clip, scored_loads, tmp_path):
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(tmp_path / "o.mp4"), *SCORED,
                             "--min-sync-confidence", "1000", "--report", str(tmp_path / "r.json"))
    assert code == 0, err  # runs of 5 and 10 frames, both under the default 50
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "ok" and report["sync"]["status"] == "no_scorable_run"
    assert report["sync"]["passed"] is None and report["sync"]["runs_too_short"] == 2
    assert any("not gated" in w for w in report["warnings"])
    assert "not scored: no run of the dubbed face of 50 frames or more" in out


def test_a_gate_without_a_score_is_an_error_before_any_work(capsys, clip, tmp_path):
    """Smoke weights under --sync-score auto are not scored: a gate then would pass everything silently."""
    output = tmp_path / "o.mp4"
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(output), *COMMON, "--min-sync-confidence", "5")
    assert code == 1 and not output.exists()
    assert err.count("\n") == 1 and "--min-sync-confidence 5.0 needs the lip-sync score" in err and "random weights" in err


def test_the_gate_is_checked_before_the_networks_load(capsys, clip, loads, tmp_path):
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(tmp_path / "o.mp4"), *COMMON,
                             "--min-sync-confidence", "5", "--sync-score", "off")
    assert code == 1 and loads["n"] == 0 and "(--sync-score off; turned off)" in err


@pytest.mark.parametrize("argv, message", [
    (("--sync-min-run", "3"), "'--sync-min-run'"),
    (("--sync-score", "maybe"), "'--sync-score'"),
    (("--min-sync-confidence", "high"), "'--min-sync-confidence'"),
])
def test_bad_sync_options_are_usage_errors(capsys, clip, tmp_path, argv, message):
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(tmp_path / "o.mp4"), *COMMON, *argv)
    assert code == 2 and message in err


def test_auto_never_scores_random_weights(tmp_path):
    from latentmuse.models.random_weights import write_random_weights
    from latentmuse.runtime.options import LoadOptions
    from latentmuse.runtime.session import sync_wanted

    write_random_weights(tmp_path / "random", models=["syncnet"])
    real = tmp_path / "real"
    shutil.copytree(tmp_path / "random", real)
    (real / "latentmuse.json").unlink()  # as a downloaded folder: no random-weights note
    assert not sync_wanted(LoadOptions(weights=str(tmp_path / "random")))
    assert not sync_wanted(LoadOptions(weights="smoke"))
    assert sync_wanted(LoadOptions(weights=str(tmp_path / "random"), sync_score="on"))
    assert sync_wanted(LoadOptions(weights="smoke", sync_score="on"))
    assert sync_wanted(LoadOptions(weights=str(real)))
    assert not sync_wanted(LoadOptions(weights=str(real), sync_score="off"))


def test_a_failing_score_is_reported_and_the_video_kept(capsys, clip, scored_loads, tmp_path, monkeypatch):
    def broken(self, frame, box):
        raise RuntimeError("scorer broke")

    monkeypatch.setattr(sync.ClipScorer, "add", broken)
    output = tmp_path / "o.mp4"
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(output), *SCORED, "--sync-min-run", "6",
                             "--min-sync-confidence", "1000", "--report", str(tmp_path / "r.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "ok" and output.is_file() and report["frames_written"] == 20
    assert report["sync"]["status"] == "error" and report["sync"]["error"] == "RuntimeError: scorer broke"
    assert report["sync"]["passed"] is None
    assert any("lip-sync score failed (RuntimeError: scorer broke)" in w and "not gated" in w for w in report["warnings"])
    assert "not scored: RuntimeError: scorer broke" in out


def test_sync_score_on_without_syncnet_weights_says_how_to_get_them(capsys, clip, tmp_path):
    (tmp_path / "weights").mkdir()
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(tmp_path / "o.mp4"), "--weights",
                             str(tmp_path / "weights"), "--sync-score", "on", "--face-detector", "dlib")
    assert code == 1 and "SyncNet weights" in err and "--model syncnet" in err and err.count("\n") == 1


def test_batch_has_the_score_column_and_counts_low_sync_apart(capsys, clip, scored_loads, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(clip.video, work / "talk.mp4")
    write_wav(work / "a.wav", 0.8, freq=220.0)
    jobs = work / "jobs.jsonl"
    jobs.write_text(json.dumps({"video": "talk.mp4", "audio": "a.wav", "output": "out/a.mp4"}) + "\n"
                    + json.dumps({"video": "talk.mp4", "output": "out/own.mp4", "min_sync_confidence": -1000}) + "\n")
    argv = ("batch", str(jobs), *SCORED, "--sync-min-run", "6", "--min-sync-confidence", "1000")
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.LOW_SYNC, err
    summary = json.loads((work / "jobs.jsonl.summary.json").read_text())
    first, second = summary["jobs"]
    assert first["outcome"] == "low_sync" and second["outcome"] == "ok"
    assert summary["counts"]["low_sync"] == 1 and summary["counts"]["done"] == 2 and summary["exit_code"] == 4
    report = json.loads((work / "out" / "a.mp4.json").read_text())
    assert first["sync_confidence"] == report["sync"]["confidence"] is not None
    assert first["sync_distance"] == report["sync"]["distance"]
    assert "LSE-C" in out and f"{first['sync_confidence']:.2f}" in out and "1 below the lip-sync gate" in out
    assert "1 of 2 videos are below --min-sync-confidence" in err

    # a rerun keeps it as done (even with --retry-failed); --retry-low-sync runs it again
    loads = scored_loads["n"]
    code, out, err = run_cli(capsys, *argv, "--retry-failed")
    summary = json.loads((work / "jobs.jsonl.summary.json").read_text())
    assert code == 4 and [j["status"] for j in summary["jobs"]] == ["skipped", "skipped"]
    assert "--retry-low-sync reruns it" in summary["jobs"][0]["reason"] and scored_loads["n"] == loads
    assert summary["jobs"][0]["sync_confidence"] == first["sync_confidence"]
    # the gate is not in the key: a lower one judges the recorded score again, regenerating nothing
    code, out, err = run_cli(capsys, *argv[:-1], "-1000")
    summary = json.loads((work / "jobs.jsonl.summary.json").read_text())
    assert code == 0, err
    assert [j["status"] for j in summary["jobs"]] == ["skipped", "skipped"] and scored_loads["n"] == loads
    assert [j["outcome"] for j in summary["jobs"]] == ["ok", "ok"] and summary["counts"]["low_sync"] == 0
    code, out, err = run_cli(capsys, *argv, "--retry-low-sync")
    summary = json.loads((work / "jobs.jsonl.summary.json").read_text())
    assert code == 4 and [j["status"] for j in summary["jobs"]] == ["done", "skipped"]
    assert scored_loads["n"] == loads + 1


def test_score_a_video_with_no_face(capsys, tmp_path):
    audio = write_wav(tmp_path / "a.wav", 0.64)
    video = write_level_video(tmp_path / "faceless.mp4", 16, 25, audio)
    code, out, err = run_cli(capsys, "score", str(video), "--weights", "smoke", "--face-detector", "dlib",
                             "--json", str(tmp_path / "s.json"), "--min-sync-confidence", "5")
    assert code == 0, err
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["frames"] == 16 and result["frames_with_face"] == 0
    assert result["sync"]["status"] == "no_scorable_run" and result["sync"]["confidence"] is None
    assert "not scored: no run of the dubbed face of 50 frames or more" in out
    assert "random weights: their lip-sync score means nothing" in out
    assert result["status"] == "ok" and result["exit_code"] == 0 and result["sync"]["passed"] is None
    assert any("not gated by --min-sync-confidence" in w for w in result["warnings"])


def test_score_errors_are_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "score", str(tmp_path / "missing.mp4"), "--weights", "smoke")
    assert code == 1 and err.count("\n") == 1 and "missing.mp4" in err
    (tmp_path / "w").mkdir()
    video = write_level_video(tmp_path / "v.mp4", 5, 25, write_wav(tmp_path / "a.wav", 0.2))
    code, out, err = run_cli(capsys, "score", str(video), "--weights", str(tmp_path / "w"))
    assert code == 1 and "no SyncNet weights" in err and "--model syncnet" in err


def test_score_of_the_output_equals_the_runs_own_within_the_codec(capsys, clip, scored_loads, tmp_path):
    """The run scores the frames it encodes; `latentmuse score` decodes the lossy output and finds the
    faces again: the two figures agree to within the codec's loss."""
    output = tmp_path / "o.mp4"
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(output), *SCORED, "--sync-min-run", "6",
                             "--report", str(tmp_path / "r.json"))
    assert code == 0, err
    in_stream = json.loads((tmp_path / "r.json").read_text())["sync"]
    code, out, err = run_cli(capsys, "score", str(output), "--weights", "smoke", "--face-detector", "dlib",
                             "--sync-min-run", "6", "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    scored = json.loads((tmp_path / "s.json").read_text())["sync"]
    assert [(r["first_frame"], r["last_frame"]) for r in scored["runs"]] == [(r["first_frame"], r["last_frame"])
                                                                           for r in in_stream["runs"]]
    assert scored["offset_frames"] == in_stream["offset_frames"]
    assert scored["distance"] == pytest.approx(in_stream["distance"], rel=0.01)
    assert scored["confidence"] == pytest.approx(in_stream["confidence"], abs=0.01 * in_stream["distance"])
    assert np.isfinite(scored["confidence"])
    # the gate, as in a run: exit 4, the verdict in the JSON
    code, out, err = run_cli(capsys, "score", str(output), "--weights", "smoke", "--face-detector", "dlib",
                             "--sync-min-run", "6", "--json", str(tmp_path / "g.json"), "--min-sync-confidence", "1000")
    gated = json.loads((tmp_path / "g.json").read_text())
    assert code == 4 and gated["status"] == "low_sync" and gated["exit_code"] == 4
    assert gated["sync"]["passed"] is False and gated["sync"]["min_confidence"] == 1000
    assert err.count("\n") == 1 and "is below --min-sync-confidence 1000" in err


@pytest.mark.parametrize("failed, allowed, gate, expected", [
    (0, False, None, ("ok", 0)), (0, False, 5.0, ("low_sync", 4)), (0, False, 1.0, ("ok", 0)),
    (3, False, 5.0, ("failed_frames", 3)), (3, True, 5.0, ("low_sync", 4)), (3, True, 1.0, ("failed_frames", 0)),
])
def test_a_recorded_score_is_judged_again_as_a_run_would_judge_it(failed, allowed, gate, expected):
    """batch/resume.rejudge gives the status a run ends with (runtime/report.finished): failed frames
    not accepted come first, then the gate."""
    from latentmuse.batch.resume import rejudge

    earlier = {"video": "v.mp4", "audio": "v.mp4", "output": "o.mp4", "frames_in": 100, "frames_out": 100,
               "frames_failed": failed, "status": "ok", "exit_code": 0, "fallbacks": [],
               "sync": {"status": "scored", "confidence": 3.0, "distance": 8.0, "offset_frames": 1,
                        "frames_scored": 90, "weakest": None, "min_confidence": None, "passed": None}}
    judged = rejudge(earlier, gate, allowed)
    assert (judged["status"], judged["exit_code"]) == expected
    assert judged["sync"]["passed"] is (None if gate is None else 3.0 >= gate)
    assert rejudge({**earlier, "sync": None}, 5.0) is None  # a gate and no score: the job runs
    assert rejudge({**earlier, "sync": None}, None)["status"] == "ok"


def test_the_bench_measures_syncnet_when_the_run_scores(tmp_path):
    """With SyncNet weights that are not random, the bench times its graphs and the end-to-end run's
    sync_score stage is rated per scored frame; smoke weights (never scored) add nothing."""
    from types import SimpleNamespace

    from latentmuse.bench.suite import BenchOptions, prepare
    from latentmuse.bench.worker import stage_rates
    from latentmuse.models.layouts import Sidecar
    from latentmuse.models.random_weights import write_random_weights

    root = tmp_path / "w"
    write_random_weights(root)
    sidecar = Sidecar.read(root)
    sidecar.note = ""  # as a downloaded folder: the bench cannot tell it holds random weights
    sidecar.write(root)
    plan = prepare(BenchOptions(weights=str(root), generator="musetalk", backends="torch"))
    assert {"syncnet_audio", "syncnet_lip"} <= set(plan.graphs) and {"syncnet_audio", "syncnet_lip"} <= set(plan.pipeline_graphs)
    assert plan.graphs["syncnet_lip"] == {"frames_per_call": 8, "sizes": {"N": 8}}
    smoke = prepare(BenchOptions(weights="smoke", generator="musetalk", backends="torch"))
    assert not {"syncnet_audio", "syncnet_lip"} & {*smoke.graphs, *smoke.pipeline_graphs}

    report = SimpleNamespace(frames_in=125, frames_out=125, frames_by_generator={}, sync={"frames_scored": 100},
                             stages={"sync_score": 4.0, "faces": 2.5})
    rates = stage_rates(report)
    assert rates["sync_score"] == {"seconds": 4.0, "frames_per_s": 25.0}  # 100 scored frames in 4 s
