"""The LatentSync generator from real weights folders and the CLI: missing or broken UNet3D weights fall
back to MuseTalk (or stop with --no-fallback), bad options are one-line errors, and every network runs
through a runner (float64 runners as the proxy for a GPU: a tensor that bypasses one fails on dtype)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latentmuse.models.random_weights import write_random_weights
from latentmuse.runtime import media
from latentmuse.runtime.runner_set import load_torch_models
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions
from latentmuse.samples import build_sample

from .conftest import run_cli


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("sample"), seconds=1.6, cutaway=(0.6, 1.0))


@pytest.fixture(scope="module")
def weights_without_unet3d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_random_weights(root, models=["musetalk_unet", "vae", "whisper", "bisenet"])
    return root


@pytest.fixture
def weights_with_broken_unet3d(weights_without_unet3d, tmp_path) -> Path:
    root = tmp_path / "weights"
    shutil.copytree(weights_without_unet3d, root)
    (root / "latentsync").mkdir()
    (root / "latentsync" / "latentsync_unet.pt").write_bytes(b"PK\x03\x04 truncated download")
    return root


def test_auto_without_unet3d_weights_is_musetalk(sample, weights_without_unet3d, tmp_path):
    report = run(RunOptions.flat(video=sample.video, output=tmp_path / "o.mp4", weights=weights_without_unet3d,
                            face_detector="dlib"), sink=media.MemorySink())
    assert report.generator == "musetalk" and report.frames_by_generator == {"musetalk": 30}
    assert report.fallbacks == [] and report.steps is None


def test_a_random_weights_folder_runs_the_hybrid_path_like_smoke(sample, weights_without_unet3d, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(weights_without_unet3d, root)
    write_random_weights(root, models=["unet3d"])  # `latentmuse weights random` writes all seven
    report = run(RunOptions.flat(video=sample.video, output=tmp_path / "o.mp4", weights=root, face_detector="dlib",
                            steps=1), sink=media.MemorySink())
    assert report.generator == "latentsync" and report.frames_by_generator == {"latentsync": 30}
    assert report.fallbacks == [] and report.resolution == 256


def test_missing_unet3d_weights_fall_back_to_musetalk_for_every_frame(sample, weights_without_unet3d, tmp_path):
    report = run(RunOptions.flat(video=sample.video, output=tmp_path / "o.mp4", weights=weights_without_unet3d,
                            face_detector="dlib", generator="latentsync"), sink=media.MemorySink())
    assert report.generator == "latentsync" and report.frames_by_generator == {"musetalk": 30}
    (record,) = report.fallbacks
    assert record["reason"].startswith("UNet3D weights not found (latentsync/latentsync_unet")
    assert record["to"] == "musetalk" and record["frames"] == [[0, 14], [25, 39]]
    assert any("LatentSync unavailable" in w for w in report.warnings)


def test_unet3d_that_fails_to_load_falls_back(sample, weights_with_broken_unet3d, tmp_path):
    report = run(RunOptions.flat(video=sample.video, output=tmp_path / "o.mp4", weights=weights_with_broken_unet3d,
                            face_detector="dlib"), sink=media.MemorySink())
    assert report.generator == "latentsync"  # auto: the weights have a UNet3D file
    (record,) = report.fallbacks
    assert record["reason"].startswith("UNet3D failed to load from") and "latentsync_unet.pt" in record["reason"]
    assert report.frames_by_generator == {"musetalk": 30} and report.frames_out == 40


def test_no_fallback_with_broken_unet3d_is_a_one_line_error(capsys, sample, weights_with_broken_unet3d, tmp_path):
    output = tmp_path / "o.mp4"
    code, out, err = run_cli(capsys, "run", str(sample.video), "-o", str(output), "--weights",
                             str(weights_with_broken_unet3d), "--face-detector", "dlib", "--no-fallback")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: the LatentSync generator is unavailable")
    assert "Fix:" in lines[0] and "Traceback" not in out + err
    assert not output.exists() and [p.name for p in tmp_path.iterdir()] == ["weights"]


@pytest.mark.parametrize("argv, words", [
    (["--guidance", "0.5"], "--guidance 0.5 is below 1"),
    (["--steps", "0"], "--steps 0 is outside 1..1000"),
])
def test_bad_latentsync_options(capsys, sample, tmp_path, argv, words):
    output = tmp_path / "o.mp4"
    code, out, err = run_cli(capsys, "run", str(sample.video), "-o", str(output), "--weights", "smoke",
                             "--face-detector", "dlib", *argv)
    assert code == 1 and words in err and "Fix:" in err and "Traceback" not in out + err
    assert not output.exists()


def test_run_cli_on_the_sample_with_latentsync(capsys, sample, tmp_path):
    output, report_path = tmp_path / "out.mp4", tmp_path / "report.json"
    code, out, err = run_cli(capsys, "run", str(sample.video), "-o", str(output), "--weights", "smoke",
                             "--face-detector", "dlib", "--steps", "2", "--seed", "3", "--report", str(report_path))
    assert code == 0, err
    assert "frames per generator" in out and "30 latentsync" in out and "256 px, 2 steps, guidance 1.5, seed 3" in out
    data = json.loads(report_path.read_text())
    for key in ("frames_by_generator", "frames_no_face", "frames_failed", "steps", "guidance", "resolution", "seed",
                "windows", "fallbacks", "stages"):
        assert key in data
    assert data["frames_by_generator"] == {"latentsync": 30} and data["frames_no_face"] == 10
    assert data["steps"] == 2 and data["guidance"] == 1.5 and data["resolution"] == 256 and data["seed"] == 3
    assert data["stages"]["generate.latentsync.sampling"] > 0 and "generate.latentsync.vae_encode" in data["stages"]
    assert media.probe(output).frame_count == 40


# ------------------------------------------------------------------------------ the float64 proxy


def test_a_module_applied_to_a_tensor_of_another_dtype_fails(sample):
    """The proxy is sensitive: the old code path (the Whisper LayerNorm applied directly to CPU float32
    states while the model sat elsewhere) fails on dtype, as it failed on device on CUDA."""
    models = load_torch_models("smoke", torch.device("cpu"), unet3d=False, dtype=torch.float64)
    whisper = models["whisper_post_ln"].open().graph.whisper
    with pytest.raises(RuntimeError):
        whisper.post_layer_norm(torch.zeros(3, 5, whisper.encoder.layer_norm.normalized_shape[0]))


@pytest.fixture(scope="module")
def short_sample(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("short"), seconds=0.8, cutaway=(0.4, 0.6))  # 20 frames, a short cut


@pytest.mark.parametrize("generator", ["latentsync", "musetalk"])
def test_pipeline_runs_with_every_runner_in_float64(short_sample, tmp_path, generator):
    def frames_with(dtype):
        models = load_torch_models("smoke", torch.device("cpu"), unet3d=generator == "latentsync", dtype=dtype)
        sink = media.MemorySink()
        report = run(RunOptions.flat(video=short_sample.video, output=tmp_path / "o.mp4", weights="smoke",
                                face_detector="dlib", generator=generator, steps=1), sink=sink, models=models)
        cut = len(short_sample.cutaway_frames)
        assert report.fallbacks == [] and report.frames_no_face == cut > 0
        assert report.frames_by_generator == {generator: report.frames_out - cut}
        return sink.frames

    wide, narrow = frames_with(torch.float64), frames_with(torch.float32)
    diff = np.abs(np.stack(wide).astype(int) - np.stack(narrow).astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.002  # the same computation, only rounding differs
