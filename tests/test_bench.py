"""``latentmuse bench`` on smoke weights: every graph on every backend side by side, each measurement in its
own worker process, the temporary ONNX export for ONNX Runtime (and its cleanup), the JSON schema, the
plot, TensorRT skipped on a CPU machine, the UNet3D per step for LatentSync, and one-line usage errors.

Speed is never asserted: only that every figure is there and consistent with the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from latentmuse.bench.measure import percentile, summary

from .conftest import run_cli

MUSETALK = ("whisper_encoder", "vae_encoder", "vae_decoder", "musetalk_unet", "bisenet")
MEASURED = ("frames_per_s", "p50_s", "p90_s", "calls", "peak_rss_mb", "peak_device_mb", "tflops")
END_TO_END = ("frames", "seconds", "frames_per_s", "peak_rss_mb", "peak_device_mb", "stages", "runners")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*argv: str) -> tuple[int, str, str]:
    """The command in-process (module fixtures cannot use capsys); (exit code, stdout, stderr)."""
    from latentmuse.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def private_tempdir(path: Path):
    """Route the bench's temporary folders into ``path`` so that their removal can be checked."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = saved


@contextlib.contextmanager
def single_threaded_workers():
    """One torch thread per worker process: the CPU here is shared with other jobs, and two OpenMP threads
    on an oversubscribed CPU stall at every barrier (calls 10x slower and erratic). Speed is not asserted."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


@pytest.fixture(scope="module")
def musetalk(tmp_path_factory, engines):
    """One smoke run of the MuseTalk graphs on torch, ort and trt (skipped here: no GPU), end to end included.

    Batch 2 (not the default 8) keeps the calls short. The engines folder is the session's smoke export
    less ``whisper_post_ln``: the bench links the graphs it has and exports that one (cheap) itself."""
    shared = engines
    root = tmp_path_factory.mktemp("bench")
    engines = root / "engines"
    (engines / "onnx").mkdir(parents=True)
    for path in (shared / "onnx").iterdir():
        if not path.name.startswith("whisper_post_ln"):
            shutil.copy2(path, engines / "onnx" / path.name)
    before = sorted(p.name for p in (engines / "onnx").iterdir())
    scratch = root / "scratch"
    scratch.mkdir()
    out, plot = root / "bench.json", root / "bench.png"
    with private_tempdir(scratch), single_threaded_workers():
        code, stdout, stderr = cli("bench", "--weights", "smoke", "--generator", "musetalk", "--backends", "torch,ort,trt",
                                   "--frames", "10", "--repeats", "2", "--batch-size", "2",
                                   "--engines", str(engines),
                                   "--json", str(out), "--plot", str(plot))
    return {"code": code, "stdout": stdout, "stderr": stderr, "json": out, "plot": plot, "scratch": scratch,
            "engines": engines, "engines_before": before}


def test_smoke_bench_succeeds_and_writes_json_and_plot(musetalk):
    assert musetalk["code"] == 0, musetalk["stderr"] + musetalk["stdout"][-3000:]
    assert musetalk["json"].is_file() and musetalk["plot"].is_file()
    assert musetalk["plot"].read_bytes()[:8] == PNG_MAGIC and musetalk["plot"].stat().st_size > 10_000


def test_every_graph_has_every_figure_for_both_backends(musetalk):
    data = json.loads(musetalk["json"].read_text())
    assert data["generator"] == "musetalk" and data["weights"] == "smoke" and data["device"] == "cpu"
    assert data["batch_size"] == 2 and data["backends"] == ["torch", "ort", "trt"]
    assert data["command"][:2] == ["latentmuse", "bench"] and "--backends" in data["command"]
    assert data["machine"]["cpus"] >= 1 and data["machine"]["torch"] and data["machine"]["gpu"] is None
    assert list(data["graphs"]) == list(MUSETALK)
    for graph, entry in data["graphs"].items():
        assert entry["frames_per_call"] == (750 if graph == "whisper_encoder" else 2)  # --batch-size
        assert entry["sizes"] == ({} if graph == "whisper_encoder" else {"B" if graph == "musetalk_unet" else "N": 2})
        assert entry["flops_per_frame"] is None  # counted on a GPU only
        for backend in ("torch", "ort"):
            measured = entry[backend]
            assert "skipped" not in measured, (graph, backend, measured)
            assert set(MEASURED) <= set(measured), (graph, backend)
            assert measured["calls"] == 2 and len(measured["seconds"]) == 2
            assert 0 < measured["p50_s"] <= measured["p90_s"] <= max(measured["seconds"]) + 1e-6
            assert math.isclose(measured["frames_per_s"], entry["frames_per_call"] / measured["p50_s"], rel_tol=1e-3)
            assert measured["peak_rss_mb"] > 100  # a process with torch imported
            assert measured["peak_device_mb"] is None and measured["tflops"] is None
        assert entry["torch"]["runner"].startswith("TorchRunner") and entry["ort"]["runner"].startswith("OrtRunner")


def test_end_to_end_per_backend_with_stages_and_runners(musetalk):
    data = json.loads(musetalk["json"].read_text())
    for backend in ("torch", "ort"):
        e2e = data["end_to_end"][backend]
        assert "skipped" not in e2e, e2e
        assert set(END_TO_END) <= set(e2e)
        assert e2e["frames"] == 10 and e2e["seconds"] > 0 and e2e["peak_rss_mb"] > 100 and e2e["peak_device_mb"] is None
        assert math.isclose(e2e["frames_per_s"], 10 / e2e["seconds"], rel_tol=1e-2)
        assert {"audio_features", "faces", "generate_and_write", "generate.musetalk.unet"} <= set(e2e["stages"])
        assert all(set(s) == {"seconds", "frames_per_s"} for s in e2e["stages"].values())
        assert e2e["stages"]["load_models"]["frames_per_s"] is None and e2e["stages"]["faces"]["frames_per_s"] > 0
        assert e2e["runners"] and all(r["backend"] == backend for r in e2e["runners"].values()), e2e["runners"]


def test_ratios_against_torch(musetalk):
    data = json.loads(musetalk["json"].read_text())
    assert set(data["ratios"]) == {*MUSETALK, "end_to_end"}
    for item, ratios in data["ratios"].items():
        assert set(ratios) == {"ort/torch"}, item  # trt did not run: no ratio
        entry = data["end_to_end"] if item == "end_to_end" else data["graphs"][item]
        assert math.isclose(ratios["ort/torch"], entry["ort"]["frames_per_s"] / entry["torch"]["frames_per_s"], rel_tol=2e-3)
    assert re.search(r"ort \d+\.\d\dx", musetalk["stdout"])
    assert "vae_encoder: 2 frames per call" in musetalk["stdout"] and "end to end" in musetalk["stdout"]


def test_onnx_was_exported_into_a_temporary_folder_and_removed(musetalk):
    data = json.loads(musetalk["json"].read_text())
    export = data["onnx_export"]
    # what the graphs and the pipeline need, less the one the engines folder has (linked, not exported)
    assert export["graphs"] == ["whisper_post_ln"] and sorted(export["reused"]) == sorted(MUSETALK)
    assert export["fp16"] is False
    assert sorted(p.name for p in (musetalk["engines"] / "onnx").iterdir()) == musetalk["engines_before"]
    assert all(r["status"] == "pass" for r in export["results"].values()), export["results"]
    assert export["removed"] is True and not Path(export["folder"]).exists()
    assert Path(export["folder"]).is_relative_to(musetalk["scratch"])
    assert list(musetalk["scratch"].iterdir()) == []  # nothing of the bench's temporary folder is left
    assert "exporting them (fp32)" in musetalk["stdout"]
    assert all(e["ort"]["reason"].endswith(")") and "validated" in e["ort"]["reason"] for e in data["graphs"].values())


def test_trt_without_a_gpu_is_skipped_with_its_reason(musetalk):
    data = json.loads(musetalk["json"].read_text())
    for entry in [*data["graphs"].values(), data["end_to_end"]]:
        assert set(entry["trt"]) == {"skipped"} and "CUDA" in entry["trt"]["skipped"]
    assert musetalk["stdout"].count("trt skipped") == 1  # one line, not one per graph
    assert data["ran"] == ["torch", "ort"]


def test_latentsync_reports_the_unet3d_seconds_per_step(tmp_path):
    out = tmp_path / "bench.json"
    with single_threaded_workers():
        code, stdout, stderr = cli("bench", "--weights", "smoke", "--generator", "latentsync", "--backends", "torch",
                                   "--steps", "1", "--guidance", "1", "--frames", "10", "--repeats", "1",
                                   "--batch-size", "2", "--json", str(out))
    assert code == 0, stderr + stdout[-3000:]
    data = json.loads(out.read_text())
    assert data["generator"] == "latentsync" and data["steps"] == 1 and data["guidance"] == 1 and data["resolution"] == 256
    assert set(data["graphs"]) == {"whisper_encoder", "vae_encoder", "vae_decoder", "unet3d_256", "unet3d_256_b1"}
    steps = data["unet3d"]["steps"]
    assert steps["cfg_on"]["graph"] == "unet3d_256" and steps["cfg_on"]["batch"] == 2
    assert steps["cfg_off"]["graph"] == "unet3d_256_b1" and steps["cfg_off"]["batch"] == 1
    for step in steps.values():
        measured = data["graphs"][step["graph"]]["torch"]
        assert step["seconds_per_step"]["torch"] == measured["seconds_per_step"] == measured["p50_s"] > 0
        assert data["graphs"][step["graph"]]["frames_per_call"] == 16
    e2e = data["end_to_end"]["torch"]
    assert e2e["stages"]["generate.latentsync.sampling"]["seconds"] > 0 and e2e["frames_per_s"] > 0
    assert e2e["runners"]["unet3d"]["graph"] == "unet3d_256_b1"  # guidance 1: the CFG-off graph
    assert data["onnx_export"] is None and data["ratios"]["end_to_end"] == {}
    assert "seconds per DDIM step" in stdout and "CFG on (batch 2)" in stdout


@pytest.mark.parametrize("argv, words", [
    (["--frames", "0"], "--frames 0 is not positive"),
    (["--repeats", "0"], "--repeats 0 is not positive"),
    (["--batch-size", "64"], "--batch-size 64 is outside 1..32"),
    (["--json", "/no/such/folder/bench.json"], "the folder /no/such/folder does not exist"),
    (["--plot", "chart.jpg"], "must end in .png"),
])
def test_usage_mistakes_are_one_line_and_exit_1(capsys, tmp_path, argv, words):
    code, out, err = run_cli(capsys, "bench", "--weights", "smoke", *argv)
    assert code == 1 and words in err and "Traceback" not in out + err, (out, err)
    assert len(err.strip().splitlines()) == 1 and out == ""  # checked before any measurement or progress bar


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_unwritable_output_is_refused_before_any_work(capsys):
    """/proc takes no new files, whoever asks (permission bits would not bind root)."""
    code, out, err = run_cli(capsys, "bench", "--weights", "smoke", "--json", "/proc/bench.json")
    assert code == 1 and "--json /proc/bench.json is not writable" in err and out == ""


def test_a_missing_matplotlib_is_a_one_line_error_with_the_fix(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, out, err = run_cli(capsys, "bench", "--weights", "smoke", "--plot", "bench.png")
    assert code == 1 and "matplotlib" in err and "pip install" in err and out == ""


def test_no_backend_that_runs_is_an_error_after_the_json(tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, stderr = cli("bench", "--weights", "smoke", "--generator", "musetalk", "--backends", "trt",
                               "--no-end-to-end", "--json", str(out))
    assert code == 1 and "no backend ran" in stderr and "Traceback" not in stderr
    data = json.loads(out.read_text())
    assert all(set(e["trt"]) == {"skipped"} for e in data["graphs"].values())
    assert data["end_to_end"] == {"trt": {"skipped": "--no-end-to-end"}} and data["ran"] == []


def test_percentiles_and_the_summary():
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5 and percentile([1.0, 2.0, 3.0, 4.0], 0.9) == pytest.approx(3.7)
    assert percentile([5.0], 0.9) == 5.0
    figures = summary([0.5, 0.25, 1.0], frames_per_call=8, flops_per_frame=1e12)
    assert figures["p50_s"] == 0.5 and figures["frames_per_s"] == 16 and figures["calls"] == 3
    assert figures["tflops"] == 16.0 and figures["p90_s"] == pytest.approx(0.9)


def test_a_worker_that_crashes_is_recorded_with_its_last_line(tmp_path):
    from latentmuse.bench.suite import Workers
    from latentmuse.progress import SilentProgress

    got = Workers(tmp_path, SilentProgress()).run({"job": "no-such-job"})
    assert set(got) == {"skipped"} and got["skipped"].startswith("failed: the worker exited with 1: KeyError")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    code, out, err = run_cli(capsys, "bench", "--weights", "smoke", "--device", "cuda")
    assert code == 1 and "no CUDA device" in err and out == ""
