"""Runs against engines: ONNX Runtime runners equal to PyTorch in values, per-graph backend selection with
its reasons, a UNet3D engine failing mid-run (TensorRT test double) handed to MuseTalk, and the lean
import set of an engines-only run.

The smoke export of the graphs a run needs (``engines``, tests/conftest.py) is shared by the session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentmuse.artifacts import manifest as mf
from latentmuse.errors import LatentmuseError
from latentmuse.graphs.registry import GRAPHS
from latentmuse.runners.compare import compare, run_all
from latentmuse.runners.ort_runner import OrtRunner
from latentmuse.runners.select import EngineStore, Selector, TorchModels
from latentmuse.runtime import media
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions
from latentmuse.samples import build_sample
from latentmuse.system import GpuInfo

from .conftest import RUN_GRAPHS, run_cli
from .helpers import psnr

ROOT = Path(__file__).resolve().parents[1]
GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("clip"), seconds=1.6, cutaway=(0.6, 1.0))


# -------------------------------------------------------------------------------- runner parity


@pytest.mark.parametrize("graph", RUN_GRAPHS)
def test_ort_runner_equals_the_torch_runner(engines, graph):
    """ORT with its graph optimisations on (the runtime's setting, unlike validation's) vs PyTorch."""
    spec = GRAPHS[graph]
    torch_runner = TorchModels("smoke", 0).runner(spec, torch.device("cpu"), torch.float32)
    with OrtRunner(graph, engines / "onnx" / f"{graph}.onnx", "cpu", spec) as ort_runner:
        sizes = {d.name: min(d.max, 3) for d in spec.dynamic}
        feeds = spec.random_feeds(sizes, seed=11)
        got, ref = run_all([ort_runner, torch_runner], feeds)
    assert set(got) == set(ref) == {t.name for t in spec.outputs}
    max_abs, _rel, ok = compare(got, ref, spec.atol, spec.rtol)
    assert ok, (graph, max_abs)
    assert max(float(np.abs(v).max()) for v in ref.values()) > 10 * max_abs  # not vacuous: outputs are not ~0


def test_runner_checks_inputs_against_the_spec(engines):
    from latentmuse.runners.base import RunnerError

    spec = GRAPHS["vae_decoder"]
    with OrtRunner("vae_decoder", engines / "onnx" / "vae_decoder.onnx", "cpu", spec) as runner:
        with pytest.raises(RunnerError, match=r"vae_decoder: input latent has shape \(2, 4, 16, 16\), the graph takes"):
            runner({"latent": torch.zeros(2, 4, 16, 16)})
        with pytest.raises(RunnerError, match=r"vae_decoder: missing inputs \['latent'\]"):
            runner({"image": torch.zeros(2, 4, 32, 32)})
    assert not runner.is_open


# ------------------------------------------------------------------------------ the whole run


@pytest.mark.parametrize("generator", ["musetalk", "latentsync"])
def test_a_run_on_onnx_runtime_matches_pytorch(engines, clip, tmp_path, generator):
    def frames(backend):
        sink = media.MemorySink()
        report = run(RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                                generator=generator, backend=backend, engines=engines, steps=2), sink=sink)
        return sink.frames, report

    (ort_frames, ort), (torch_frames, ref) = frames("ort"), frames("torch")
    assert ort.frames_out == ref.frames_out == len(ort_frames) == 40
    assert ort.frames_by_generator == ref.frames_by_generator == {generator: 30} and ort.fallbacks == []
    assert psnr(ort_frames, torch_frames) >= 40.0
    processed = [i for i in range(40) if not np.array_equal(torch_frames[i], np.asarray(ort_frames[i]))]
    assert ort.backend == "ort" and ref.backend == "torch"
    exported = {role: r for role, r in ort.runners.items() if r["graph"] in GRAPHS and "fallback" not in role}
    assert exported and all(r["backend"] == "ort" and "validated" in r["reason"] for r in exported.values())
    assert len(processed) <= 30  # the 10 cutaway frames are passed through identically on both
    if generator == "latentsync":  # its MuseTalk fallback's UNet is PyTorch, and was never needed
        assert ort.runners["musetalk_unet (fallback)"]["reason"].endswith("(not loaded: no window fell back)")


def test_backend_ort_without_engines_is_one_clear_error(clip, tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", str(clip.video), "-o", str(tmp_path / "o.mp4"), "--weights", "smoke",
                             "--backend", "ort", "--engines", str(tmp_path / "none"))
    assert code == 1 and "Traceback" not in out + err
    assert "needs an engines folder" in out + err and "make engines" in out + err
    assert not (tmp_path / "o.mp4").exists()


def test_backend_ort_for_other_weights_is_refused(engines, clip, tmp_path):
    with pytest.raises(LatentmuseError, match="exported from smoke weights of seed 0, this run uses seed 5"):
        store = EngineStore(engines, "smoke", seed=5)
        Selector("ort", torch.device("cpu"), torch.float32, store, TorchModels("smoke", 5)).select("vae_decoder")


def test_engines_only_run_imports_neither_diffusers_nor_transformers(engines, clip, tmp_path):
    script = (
        "import sys, json\n"
        "from latentmuse.runtime.lipsync import run\n"
        "from latentmuse.runtime.options import RunOptions\n"
        f"r = run(RunOptions.flat(video={str(clip.video)!r}, output={str(tmp_path / 'o.mp4')!r}, weights='smoke',"
        f" face_detector='dlib', backend='ort', engines={str(engines)!r}, steps=1))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers'))\n"
        "print(json.dumps({'heavy': heavy, 'generator': r.generator, 'backend': r.backend,"
        " 'frames': r.frames_by_generator}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"heavy": [], "generator": "latentsync", "backend": "ort", "frames": {"latentsync": 30}}


def test_help_and_doctor_import_only_what_they_use():
    script = ("import sys\nfrom latentmuse.cli import app\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'onnxruntime',"
              " 'matplotlib', 'tensorrt', 'tensorrt_rtx', 'polygraphy', 'cv2', 'av'}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -------------------------------------------------------------------------- backend selection


@pytest.fixture
def built(engines, fake_trt, tmp_path) -> Path:
    """A copy of the smoke engines folder with plans built by the TensorRT double."""
    from latentmuse.engines.orchestrate import build_all

    root = tmp_path / "engines"
    shutil.copytree(engines, root)
    results = build_all(root / "onnx", root, GRAPHS, graphs=["vae_encoder", "vae_decoder", "musetalk_unet",
                                                              "unet3d_256"], precision="fp32")
    assert all(r.action == "built" for r in results), results
    return root


def _selector(root: Path, backend: str = "auto", notes: list | None = None) -> Selector:
    return Selector(backend, torch.device("cpu"), torch.float32, EngineStore(root, "smoke"), TorchModels("smoke"),
                    note=(notes.append if notes is not None else lambda m: None), gpu=GPU)


def test_auto_falls_through_tensorrt_onnx_runtime_and_pytorch_with_reasons(built, fake_trt):
    manifest = mf.load(built)
    manifest.get("vae_encoder", "tensorrt").gpu_name = "NVIDIA L4"  # a manifest for another GPU
    manifest.remove("musetalk_unet", "tensorrt")  # a missing engine
    mf.save(manifest, built)
    plan = built / manifest.get("vae_decoder", "tensorrt").plan  # a corrupt plan of the recorded size
    plan.write_bytes(b"\0" * plan.stat().st_size)
    (built / "onnx" / "bisenet.onnx").unlink()  # no engine at all: PyTorch
    notes: list[str] = []
    selector = _selector(built, notes=notes)
    runners = selector.select_all(["unet3d_256", "vae_encoder", "vae_decoder", "musetalk_unet", "bisenet"])
    c = selector.choices
    assert {g: ch.backend for g, ch in c.items()} == {"unet3d_256": "trt", "vae_encoder": "ort", "vae_decoder": "ort",
                                                      "musetalk_unet": "ort", "bisenet": "torch"}
    assert runners["unet3d_256"].backend == "trt" and runners["bisenet"].backend == "torch"
    assert c["vae_encoder"].skipped == ["TensorRT: built for GPU NVIDIA L4, this machine has NVIDIA H100 80GB HBM3"]
    assert c["vae_decoder"].skipped[0].startswith("TensorRT: vae_decoder: TensorRT could not deserialize the engine")
    assert c["musetalk_unet"].skipped[0].startswith("TensorRT: no engine in")
    assert c["bisenet"].skipped[1].startswith("ONNX Runtime: no ") and c["bisenet"].reason == "no usable engine"
    assert all(f"{g}.onnx validated against PyTorch (max-abs " in ch.reason for g, ch in c.items() if ch.backend == "ort")
    assert len(notes) == 5  # one line per skipped option
    assert not runners["bisenet"].is_open  # PyTorch weights load on first call only


def test_explicit_backend_names_the_graph_and_the_reason(built, fake_trt):
    manifest = mf.load(built)
    manifest.remove("musetalk_unet", "tensorrt")
    mf.save(manifest, built)
    with pytest.raises(LatentmuseError, match="musetalk_unet cannot run on TensorRT: no engine in"):
        _selector(built, "trt").select("musetalk_unet")
    assert _selector(built, "trt").select("unet3d_256").backend == "trt"
    deep = _selector(built, "trt")
    assert deep.select("unet3d_caching_256").backend == "torch"  # no engine runs DeepCache's pair
    assert deep.choices["unet3d_caching_256"].reason == "no engine runs it (PyTorch only)"


def test_a_unet3d_engine_failing_mid_run_sends_its_window_to_musetalk(built, fake_trt, clip, tmp_path, monkeypatch):
    calls = {"n": 0}
    execute = fake_trt.IExecutionContext.execute_async_v3

    def flaky(self, stream):
        if self.engine.plan["onnx"].endswith("unet3d_256.onnx"):
            calls["n"] += 1
            if calls["n"] == 3:  # the second window's first step (2 steps per window)
                return False
        return execute(self, stream)

    monkeypatch.setattr(fake_trt.IExecutionContext, "execute_async_v3", flaky)
    monkeypatch.setattr("latentmuse.runners.select.trt_gpu", lambda device: GPU)
    sink = media.MemorySink()
    report = run(RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                            backend="auto", engines=built, steps=2), sink=sink)
    assert report.runners["unet3d"]["backend"] == "trt"
    (record,) = report.fallbacks
    assert record["generator"] == "latentsync" and record["to"] == "musetalk"
    assert "TensorRT execution failed" in record["reason"]
    # windows of 16 consecutive process frames: 0-14 before the cutaway, 25-39 after it (mirror padded)
    assert record["frames"] == [[25, 39]] and record["count"] == 15
    assert report.frames_by_generator == {"latentsync": 15, "musetalk": 15} and len(sink.frames) == 40


def test_an_unchanged_onnx_file_is_not_hashed_again_and_a_touched_one_is(engines, tmp_path, monkeypatch):
    root = tmp_path / "engines"
    shutil.copytree(engines, root)  # copy2 keeps mtimes: the report's recorded stat still matches
    recorded = json.loads((root / "onnx" / "export_report.json").read_text())["graphs"]["vae_decoder"]["sha256"]
    hashed = []
    monkeypatch.setattr("latentmuse.runners.select.onnx_sha256", lambda path: hashed.append(path) or "f" * 64)
    path, why = EngineStore(root, "smoke").onnx("vae_decoder", "fp32")
    assert path is not None and hashed == [] and "validated" in why
    assert EngineStore(root, "smoke").sha256(path, "vae_decoder", "fp32") == recorded
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # touched: same size, new mtime
    path2, why = EngineStore(root, "smoke").onnx("vae_decoder", "fp32")
    assert hashed == [path] and path2 is None and "not the one the export report validated" in why
