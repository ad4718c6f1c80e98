"""Real engines: every smoke graph parsed and built by the real TensorRT for RTX builder, here, without a GPU.

TensorRT for RTX (``pip install tensorrt-rtx``, the ``test`` extra) builds plans ahead of time on a
machine with no GPU; only deserialising and running a plan needs one (those paths are tested against the
doubles in ``tests/fake_tensorrt``, see ``test_trt_flavors.py``). These tests run the production path:
``build_all`` starting one real builder subprocess per graph, Polygraphy's loaders with
``CreateConfigRTX``, strongly typed fp16 networks from the exported fp16 ONNX, profiles from the graph
specs, and what the real builder's network says of each input read back into the manifest.
"""

from __future__ import annotations

import json

import pytest
import torch

from latentmuse.artifacts import manifest as mf
from latentmuse.engines.orchestrate import build_all
from latentmuse.errors import LatentmuseError
from latentmuse.graphs.registry import GRAPHS
from latentmuse.system import RTX_DEFAULT_TARGETS, TENSORRT_RTX, tensorrt_probe

from .conftest import run_cli

RTX = TENSORRT_RTX.name


def rtx_version() -> str:
    probe = tensorrt_probe(TENSORRT_RTX)
    assert probe.ok, f"TensorRT for RTX must be installed for the engine tests (the 'test' extra): {probe.detail}"
    return probe.detail


def expected_inputs(spec) -> dict[str, dict]:
    """What TensorRT's network should say of each input, worked out from the spec alone: float32 I/O (the
    fp16 graphs keep float32 inputs), int64 timesteps, -1 for each named dimension, the spec's profile."""
    profiles = spec.profiles()
    return {t.name: {"dtype": "INT64" if t.dtype == torch.int64 else "FLOAT",
                     "shape": [d if isinstance(d, int) else -1 for d in t.shape],
                     "profile": [list(s) for s in profiles[t.name]]} for t in spec.inputs}


@pytest.fixture(scope="module")
def rtx_engines(smoke_onnx_fp16, tmp_path_factory):
    """Every smoke graph built once by the real builder; (engines folder, results, progress lines)."""
    out = tmp_path_factory.mktemp("rtx") / "engines"
    lines: list[str] = []
    results = build_all(smoke_onnx_fp16, out, GRAPHS, flavor="tensorrt-rtx", gpu=None, report=lines.append,
                        timeout_s=1800)
    return out, results, lines


def test_every_smoke_graph_builds_with_the_real_tensorrt_for_rtx_builder(rtx_engines, smoke_onnx_fp16):
    out, results, lines = rtx_engines
    version = rtx_version()
    assert {r.graph: r.action for r in results} == {g: "built" for g in GRAPHS}, [r.reason for r in results]
    assert lines[0] == f"building with TensorRT for RTX {version} ahead of time for compute capabilities 8.0, 8.6, 8.9, 12.0"
    manifest = mf.load(out)
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["schema"] == 2 and set(raw["graphs"]) == set(GRAPHS)
    for name, spec in GRAPHS.items():
        entry = manifest.get(name, RTX)
        assert raw["graphs"][name][RTX]["flavor"] == RTX and list(raw["graphs"][name]) == [RTX]
        assert (entry.tensorrt_version, entry.gpu_name, entry.compute_capability) == (version, "", "")
        assert entry.compute_capabilities == list(RTX_DEFAULT_TARGETS)
        assert entry.precision == "fp16" and entry.onnx == str((smoke_onnx_fp16 / f"{name}.fp16.onnx").resolve())
        assert entry.validated and entry.export["fp16_pass"] is True
        plan = out / entry.plan
        assert plan.name == f"{name}.rtx.plan" and plan.stat().st_size == entry.plan_bytes
        head = plan.read_bytes()[:64]
        assert not head.lstrip().startswith(b"{"), "a test double's plan, not a real one"
        # the real network: input names, types and shapes as declared, and the profile TensorRT holds
        assert entry.inputs == expected_inputs(spec), name
        assert {k: [list(s) for s in v] for k, v in spec.profiles().items()} == entry.profiles
        assert 50 * 2**20 < entry.builder_peak_rss_bytes < 3 * 2**30  # the builder alone, not the test process
        assert entry.build_seconds > 0
    # no private build folder, no timing cache (TensorRT for RTX has none), no standard plan
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *(f"{g}.rtx.plan" for g in GRAPHS)])


def test_a_dynamic_batch_gets_its_spec_profile(rtx_engines):
    """The VAE encoder's N runs 1..32, optimum 8 (graphs/registry.py): min/opt/max as TensorRT holds them."""
    out, _results, _lines = rtx_engines
    entry = mf.load(out).get("vae_encoder", RTX)
    assert entry.inputs["image"] == {"dtype": "FLOAT", "shape": [-1, 3, 256, 256],
                                     "profile": [[1, 3, 256, 256], [8, 3, 256, 256], [32, 3, 256, 256]]}
    post_ln = mf.load(out).get("whisper_post_ln", RTX)  # T: 1..1500, optimum 1500 (30 s of audio)
    assert post_ln.inputs["states"]["profile"] == [[1, 5, 384], [1500, 5, 384], [1500, 5, 384]]
    unet = mf.load(out).get("unet3d_256", RTX)  # static: min = opt = max, int64 timesteps
    assert unet.inputs["timestep"] == {"dtype": "INT64", "shape": [2], "profile": [[2], [2], [2]]}


def test_rebuild_skips_up_to_date_plans_and_new_targets_rebuild(rtx_engines, smoke_onnx_fp16, tmp_path):
    import shutil

    src, _results, _lines = rtx_engines
    out = tmp_path / "engines"
    shutil.copytree(src, out)
    again = build_all(smoke_onnx_fp16, out, GRAPHS, flavor="tensorrt-rtx", gpu=None)
    assert {r.action for r in again} == {"skipped"} and {r.reason for r in again} == {"up to date"}
    default_bytes = mf.load(out).get("whisper_post_ln", RTX).plan_bytes
    (result,) = build_all(smoke_onnx_fp16, out, GRAPHS, graphs=["whisper_post_ln"], flavor="tensorrt-rtx", gpu=None,
                          compute_capabilities="8.9,8.6")
    assert (result.action, result.reason) == ("built", "built for compute capabilities 8.0, 8.6, 8.9, 12.0, asked for 8.6, 8.9")
    entry = mf.load(out).get("whisper_post_ln", RTX)
    assert entry.compute_capabilities == ["8.6", "8.9"] and entry.plan_bytes == (out / entry.plan).stat().st_size
    assert entry.plan_bytes != default_bytes  # kernels for two architectures, not four
    (result,) = build_all(smoke_onnx_fp16, out, GRAPHS, graphs=["whisper_post_ln"], flavor="tensorrt-rtx", gpu=None,
                          compute_capabilities="8.6,8.9")
    assert result.action == "skipped"
    with pytest.raises(LatentmuseError, match=r"compute capability 9\.0 is not one TensorRT for RTX targets"):
        build_all(smoke_onnx_fp16, out, GRAPHS, graphs=["whisper_post_ln"], flavor="tensorrt-rtx", gpu=None,
                  compute_capabilities="8.6,9.0")


def test_build_command_on_a_machine_without_gpu_uses_tensorrt_for_rtx(smoke_onnx_fp16, tmp_path, capsys, monkeypatch):
    import latentmuse.system
    from latentmuse.engines import orchestrate

    for where in (latentmuse.system, orchestrate):  # no GPU, as here and in CI, whatever torch says
        monkeypatch.setattr(where, "gpu_info", lambda: None)
    out = tmp_path / "engines"
    code, stdout, err = run_cli(capsys, "build", "--onnx", str(smoke_onnx_fp16), "--out", str(out),
                                "--graphs", "whisper_post_ln,s3fd", "--compute-capability", "8.6")
    assert code == 0, err
    assert "TensorRT for RTX" in stdout and "whisper_post_ln.rtx.plan" in stdout
    assert {e.graph: e.compute_capabilities for e in mf.load(out).entries()} == {"whisper_post_ln": ["8.6"], "s3fd": ["8.6"]}
    for argv, says in ((["--flavor", "tensorrt"], "TensorRT engines not built: TensorRT: "),
                       (["--compute-capability", "9.0"], "compute capability 9.0 is not one TensorRT for RTX targets"),
                       (["--flavor", "tensorrt-rtx", "--compute-capability", "8.6,sm90"], "compute capability sm90")):
        code, _out, err = run_cli(capsys, "build", "--onnx", str(smoke_onnx_fp16), "--out", str(tmp_path / "other"),
                                  "--graphs", "s3fd", *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and says in err and "Traceback" not in err, err
        assert not (tmp_path / "other").exists()
    code, _out, err = run_cli(capsys, "build", "--flavor", "rtx")
    assert code == 2 and "'rtx' is not one of" in err
