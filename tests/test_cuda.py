"""On a CUDA GPU (``make test-gpu``; skipped elsewhere, see conftest): every runner's parity on the device,
the whole pipeline in fp16 on CUDA against fp32 on the CPU, and the bench.

What each test would catch: a tensor left on the CPU (device mismatch), an fp16 overflow turning into
NaN, ONNX Runtime's CUDA provider silently running on the CPU, I/O binding writing to the wrong
buffer, a CUDA-graph replay returning stale outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentmuse.graphs.registry import GRAPHS
from latentmuse.runners.compare import cosine, run_all
from latentmuse.runners.select import TorchModels
from latentmuse.runtime import media
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions
from latentmuse.samples import build_sample

from .conftest import RUN_GRAPHS, run_cli
from .helpers import psnr

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("clip"), seconds=1.6, cutaway=(0.6, 1.0))


def _feeds(spec):
    return spec.random_feeds({d.name: min(d.max, 3) for d in spec.dynamic}, seed=3)


@pytest.mark.parametrize("graph", RUN_GRAPHS)
def test_torch_fp16_on_cuda_matches_fp32_on_cpu(graph):
    spec, models = GRAPHS[graph], TorchModels("smoke", 0)
    feeds = _feeds(spec)
    got, ref = run_all([models.runner(spec, CUDA, torch.float16), models.runner(spec, torch.device("cpu"), torch.float32)],
                       feeds)
    assert cosine(got, ref) >= 0.999, graph


@pytest.mark.parametrize("graph", RUN_GRAPHS)
def test_onnx_runtime_cuda_matches_torch(engines, graph):
    from latentmuse.runners.base import RunnerError
    from latentmuse.runners.ort_runner import OrtRunner

    spec = GRAPHS[graph]
    runner = OrtRunner(graph, engines / "onnx" / f"{graph}.onnx", CUDA, spec)
    try:
        runner.open()
    except RunnerError as exc:
        pytest.skip(f"ONNX Runtime has no working CUDA provider here: {exc.message}")
    feeds = {k: v.to(CUDA) for k, v in _feeds(spec).items()}
    out = runner(feeds)
    assert all(t.device.type == "cuda" for t in out.values())  # I/O bound on the device
    ref = run_all([TorchModels("smoke", 0).runner(spec, torch.device("cpu"), torch.float32)], _feeds(spec))[0]
    got = {k: v.float().cpu().numpy() for k, v in out.items()}
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], atol=spec.atol * 10, rtol=spec.rtol * 10)


def test_tensorrt_runner_replays_cuda_graphs_correctly(engines, tmp_path):
    pytest.importorskip("tensorrt")
    from latentmuse.engines.orchestrate import build_all
    from latentmuse.runners.trt_runner import TrtRunner

    build_all(engines / "onnx", tmp_path, GRAPHS, graphs=["unet3d_256"], precision="fp32")
    spec = GRAPHS["unet3d_256"]
    runner = TrtRunner("unet3d_256", tmp_path / "unet3d_256.plan", CUDA, spec)
    assert runner.cuda_graph  # static graph on CUDA
    torch_runner = TorchModels("smoke", 0).runner(spec, torch.device("cpu"), torch.float32)
    for seed in (1, 2, 3):  # the first call captures, later ones replay with new inputs
        feeds = spec.random_feeds({}, seed=seed)
        got = runner({k: v.to(CUDA) for k, v in feeds.items()})["eps"].float().cpu()
        ref = torch_runner(feeds)["eps"]
        assert cosine({"eps": got.numpy()}, {"eps": ref.numpy()}) >= 0.999, seed


@pytest.mark.parametrize("generator", ["musetalk", "latentsync"])
def test_the_pipeline_in_fp16_on_cuda_matches_fp32_on_the_cpu(clip, tmp_path, generator):
    def frames(device, precision):
        sink = media.MemorySink()
        report = run(RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                                generator=generator, backend="torch", device=device, precision=precision, steps=2),
                     sink=sink)
        return sink.frames, report

    (gpu, r_gpu), (cpu, r_cpu) = frames("cuda", "fp16"), frames("cpu", "fp32")
    assert r_gpu.frames_by_generator == r_cpu.frames_by_generator == {generator: 30} and r_gpu.fallbacks == []
    assert r_gpu.device.startswith("cuda") and r_gpu.precision == "fp16"
    assert psnr(gpu, cpu) >= 30.0


def test_bench_on_cuda_reports_device_memory_and_flops(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, _stdout, err = run_cli(capsys, "bench", "--weights", "smoke", "--generator", "musetalk", "--backends",
                                 "torch,ort", "--device", "cuda", "--frames", "10", "--repeats", "2", "--json", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    torch_unet = data["graphs"]["musetalk_unet"]["torch"]
    assert torch_unet["peak_device_mb"] > 0 and torch_unet["tflops"] > 0
    assert data["graphs"]["musetalk_unet"]["flops_per_frame"] > 0
