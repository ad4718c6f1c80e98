"""Both TensorRT flavours at run time, against the doubles in ``tests/fake_tensorrt`` (running a plan needs
a GPU): one engines folder holding both kinds of plan, the per-flavour choice of ``--backend auto``, a
plan never handed to the other flavour's runtime, and TensorRT for RTX's runtime cache.

The doubles' plans record their flavour and version and their runtimes refuse any other, as the real
libraries do; the RTX double "compiles a kernel" per new set of input shapes unless its runtime cache
holds it (``tensorrt_rtx.compiles`` lists the compilations).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from latentmuse.artifacts import manifest as mf
from latentmuse.engines.orchestrate import build_all
from latentmuse.errors import LatentmuseError
from latentmuse.graphs.registry import GRAPHS
from latentmuse.runners.base import RunnerError
from latentmuse.runners.select import EngineStore, Selector, TorchModels
from latentmuse.runners.trt_runner import TrtRunner
from latentmuse.system import GpuInfo

from .helpers import SPECS, alpha_onnx

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")  # the GPU the fixture injects into standard builds
L4 = GpuInfo("NVIDIA L4", "8.9")
RTX_3090 = GpuInfo("NVIDIA GeForce RTX 3090", "8.6")
GRAPH = "whisper_post_ln"  # small, dynamic (T), and a graph a run uses


@pytest.fixture
def both(engines, fake_rtx, tmp_path) -> Path:
    """A copy of the smoke engines folder with a standard plan (built on the injected H100) and an RTX
    plan (targets 8.9 and 12.0) of ``whisper_post_ln`` and ``vae_decoder``."""
    root = tmp_path / "engines"
    shutil.copytree(engines, root)
    graphs = [GRAPH, "vae_decoder"]
    assert {r.action for r in build_all(root / "onnx", root, GRAPHS, graphs=graphs, precision="fp32")} == {"built"}
    rtx = build_all(root / "onnx", root, GRAPHS, graphs=graphs, precision="fp32", flavor="tensorrt-rtx",
                    compute_capabilities="12.0,8.9")
    assert {r.action for r in rtx} == {"built"}
    return root


def _selector(root: Path, gpu: GpuInfo, notes: list | None = None, backend: str = "auto") -> Selector:
    return Selector(backend, torch.device("cpu"), torch.float32, EngineStore(root, "smoke"), TorchModels("smoke"),
                    note=(notes.append if notes is not None else lambda m: None), gpu=gpu)


def test_both_flavours_share_one_engines_folder(both, fake_rtx):
    manifest = mf.load(both)
    for graph in (GRAPH, "vae_decoder"):
        standard, rtx = manifest.get(graph, "tensorrt"), manifest.get(graph, "tensorrt-rtx")
        assert (standard.plan, rtx.plan) == (f"{graph}.plan", f"{graph}.rtx.plan")
        assert (standard.gpu_name, standard.compute_capabilities) == (H100.name, ["9.0"])
        assert (rtx.gpu_name, rtx.compute_capabilities, rtx.tensorrt_version) == ("", ["8.9", "12.0"], fake_rtx.__version__)
        plan = json.loads((both / rtx.plan).read_text())  # what the RTX double's builder was configured with
        assert plan["flavor"] == "tensorrt-rtx" and plan["compute_capabilities"] == ["SM89", "SM120"]
        assert plan["flags"] == ["TF32"]  # the double's default, untouched: no TF32 or timing-cache options for RTX
        assert json.loads((both / standard.plan).read_text())["flavor"] == "tensorrt"
    # each flavour's rebuild skips its own plans; only standard TensorRT has a timing cache
    assert {r.action for r in build_all(both / "onnx", both, GRAPHS, graphs=[GRAPH], precision="fp32")} == {"skipped"}
    again = build_all(both / "onnx", both, GRAPHS, graphs=[GRAPH], precision="fp32", flavor="tensorrt-rtx",
                      compute_capabilities="8.9,12.0")
    assert [(r.action, r.reason) for r in again] == [("skipped", "up to date")]
    assert [p.name for p in both.glob("timing-*.cache")] == ["timing-NVIDIA-H100-80GB-HBM3-sm9.0-trt11.0.0.fake.cache"]


def test_auto_takes_standard_on_its_gpu_and_rtx_on_a_targeted_one(both, fake_rtx):
    session = ort.InferenceSession(str(both / "onnx" / f"{GRAPH}.onnx"), providers=["CPUExecutionProvider"])
    states = torch.randn(7, 5, 384)
    want = session.run(["normed"], {"states": states.numpy()})[0]

    on_h100 = _selector(both, H100)  # its own standard plan
    runner = on_h100.select(GRAPH)
    choice = on_h100.choices[GRAPH]
    assert (choice.backend, choice.flavor, runner.flavor.name) == ("trt", "tensorrt", "tensorrt")
    assert choice.as_dict()["flavor"] == "tensorrt" and choice.skipped == []
    np.testing.assert_allclose(runner({"states": states})["normed"].numpy(), want, rtol=1e-6, atol=1e-6)

    notes: list[str] = []
    on_l4 = _selector(both, L4, notes)  # the standard plan is for another GPU; the RTX plan targets 8.9
    runner = on_l4.select(GRAPH)
    choice = on_l4.choices[GRAPH]
    assert (choice.backend, choice.flavor, runner.flavor.name) == ("trt", "tensorrt-rtx", "tensorrt-rtx")
    assert choice.reason.startswith(f"TensorRT for RTX: {GRAPH}.rtx.plan built ") and choice.reason.endswith(
        "for compute capability 8.9")
    assert runner.runtime_cache == both / "runtime-cache" / f"{GRAPH}-NVIDIA-L4-sm8.9-rtx{fake_rtx.__version__}.cache"
    np.testing.assert_allclose(runner({"states": states})["normed"].numpy(), want, rtol=1e-6, atol=1e-6)
    assert notes == []  # a plan was found: nothing skipped worth a line

    notes.clear()
    on_3090 = _selector(both, RTX_3090, notes)  # neither plan: 8.6 is not a target; ONNX Runtime serves it
    on_3090.select(GRAPH)
    choice = on_3090.choices[GRAPH]
    assert choice.backend == "ort"
    assert choice.skipped[0] == ("TensorRT: built for GPU NVIDIA H100 80GB HBM3, this machine has NVIDIA GeForce RTX 3090; "
                                 "TensorRT for RTX: built for compute capabilities 8.9, 12.0, this GPU "
                                 "(NVIDIA GeForce RTX 3090) has 8.6")
    assert notes == [f"{GRAPH}: TensorRT skipped: {choice.skipped[0].removeprefix('TensorRT: ')}"]


def test_rtx_plans_are_skipped_on_hopper_with_the_reason(both, fake_rtx):
    manifest = mf.load(both)
    manifest.remove(GRAPH, "tensorrt")  # only the RTX plan is left
    mf.save(manifest, both)
    selector = _selector(both, H100)
    selector.select(GRAPH)
    choice = selector.choices[GRAPH]
    assert choice.backend == "ort"
    assert choice.skipped[0] == ("TensorRT: no engine in " + str(both / "manifest.json") + "; TensorRT for RTX: "
                                 "NVIDIA H100 80GB HBM3 has compute capability 9.0, which TensorRT for RTX does not "
                                 "support (it runs on 7.5, 8.0, 8.6, 8.9, 12.0, 12.1; Hopper and B200 need standard "
                                 "TensorRT)")
    with pytest.raises(LatentmuseError, match=f"{GRAPH} cannot run on TensorRT: no engine in .*TensorRT for RTX: NVIDIA H100"):
        _selector(both, H100, backend="trt").select(GRAPH)
    # on an L4 the same folder serves the graph with the RTX plan, even under --backend trt
    assert _selector(both, L4, backend="trt").select(GRAPH).flavor.name == "tensorrt-rtx"


def test_a_plan_is_never_handed_to_the_other_flavours_runtime(both, fake_rtx):
    rtx_plan, plan = both / f"{GRAPH}.rtx.plan", both / f"{GRAPH}.plan"
    with pytest.raises(RunnerError, match=rf"{GRAPH}\.rtx\.plan is a TensorRT for RTX plan; TensorRT cannot load it"):
        TrtRunner(GRAPH, rtx_plan, device="cpu", flavor="tensorrt").open()
    with pytest.raises(RunnerError, match=rf"{GRAPH}\.plan is a TensorRT plan; TensorRT for RTX cannot load it"):
        TrtRunner(GRAPH, plan, device="cpu", flavor="tensorrt-rtx").open()
    # the bytes themselves (a renamed file, a plan passed as bytes): each runtime refuses the other's plans
    with pytest.raises(RunnerError, match="TensorRT could not deserialize"):
        TrtRunner(GRAPH, rtx_plan.read_bytes(), device="cpu", flavor="tensorrt").open()
    with pytest.raises(RunnerError, match="TensorRT for RTX could not deserialize"):
        TrtRunner(GRAPH, plan.read_bytes(), device="cpu", flavor="tensorrt-rtx").open()
    # and selection hands each plan to its own flavour: an RTX plan renamed to look standard is refused
    manifest = mf.load(both)
    manifest.remove(GRAPH, "tensorrt-rtx")
    entry = manifest.get(GRAPH, "tensorrt")
    shutil.copy(rtx_plan, plan)
    entry.plan_bytes = plan.stat().st_size
    mf.save(manifest, both)
    selector = _selector(both, H100)
    selector.select(GRAPH)
    assert selector.choices[GRAPH].backend == "ort"
    assert "TensorRT could not deserialize" in selector.choices[GRAPH].skipped[0]


def test_rtx_runtime_cache_compiles_once_per_gpu_and_drops_a_corrupt_one(both, fake_rtx, monkeypatch):
    from latentmuse.runners import trt_runner

    writes: list[Path] = []
    real_write = trt_runner.atomic_write
    monkeypatch.setattr(trt_runner, "atomic_write", lambda path, blob: (writes.append(Path(path)), real_write(path, blob)))
    cache = both / "runtime-cache" / "post_ln-L4.cache"
    plan = both / f"{GRAPH}.rtx.plan"
    fake_rtx.compiles.clear()

    def run(warn=None, shapes=(3, 3, 9)) -> TrtRunner:
        runner = TrtRunner(GRAPH, plan, device="cpu", flavor="tensorrt-rtx", runtime_cache=cache,
                           warn=(warn.append if warn is not None else lambda m: None))
        for t in shapes:
            runner({"states": torch.randn(t, 5, 384)})
        runner.close()
        return runner

    run()  # first run on this GPU: two shapes, two compilations, each written back at once
    assert len(fake_rtx.compiles) == 2 and writes == [cache, cache]
    kernels = json.loads(cache.read_bytes())["kernels"]
    assert len(kernels) == 2 and all(k.startswith(f"{GRAPH}.onnx:") for k in kernels)
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # atomic: no temporary left behind

    fake_rtx.compiles.clear()
    writes.clear()
    run()  # a later run: everything from the cache, nothing compiled, nothing rewritten
    assert fake_rtx.compiles == [] and writes == []
    run(shapes=(4,))  # a new shape compiles once and extends the cache
    assert len(fake_rtx.compiles) == 1 and len(json.loads(cache.read_bytes())["kernels"]) == 3

    for bad in (b"\x00garbage", json.dumps({"magic": "fake-runtime-cache", "version": "0.9", "kernels": []}).encode()):
        cache.write_bytes(bad)  # corrupt, or from another TensorRT for RTX version
        fake_rtx.compiles.clear()
        warnings: list[str] = []
        run(warnings)
        assert warnings == [f"{GRAPH}: runtime cache {cache} is corrupt or from another GPU or TensorRT for RTX "
                            "version: dropped, kernels compile again and replace it."]
        assert len(fake_rtx.compiles) == 2 and len(json.loads(cache.read_bytes())["kernels"]) == 2  # replaced

    blocked = both / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    runner = TrtRunner(GRAPH, plan, device="cpu", flavor="tensorrt-rtx", runtime_cache=blocked / "x.cache",
                       warn=(warnings := []).append)
    for t in (2, 5):
        runner({"states": torch.randn(t, 5, 384)})
    runner.close()
    assert len(warnings) == 1 and warnings[0].startswith(f"{GRAPH}: runtime cache not written to {blocked / 'x.cache'}")


def test_standard_plans_get_no_runtime_config(both, fake_trt):
    runner = TrtRunner(GRAPH, both / f"{GRAPH}.plan", device="cpu", flavor="tensorrt",
                       runtime_cache=both / "runtime-cache" / "unused.cache").open()
    assert runner.context.runtime_config is None
    runner({"states": torch.randn(2, 5, 384)})
    runner.close()
    assert not (both / "runtime-cache").exists()


def test_fake_rtx_builds_alpha_for_chosen_targets(fake_rtx, tmp_path):
    """The builder passes --compute-capability through Polygraphy's CreateConfigRTX to the builder config."""
    (tmp_path / "onnx").mkdir()
    alpha_onnx(tmp_path / "onnx" / "alpha.onnx")
    out = tmp_path / "engines"
    (result,) = build_all(tmp_path / "onnx", out, SPECS, graphs=["alpha"], flavor="tensorrt-rtx", gpu=None,
                          compute_capabilities=["7.5"])
    assert result.action == "built" and result.plan == out / "alpha.rtx.plan"
    assert json.loads(result.plan.read_text())["compute_capabilities"] == ["SM75"]
    assert mf.load(out).get("alpha", "tensorrt-rtx").compute_capabilities == ["7.5"]


@pytest.mark.parametrize("gpu, build_std, run_std, run_rtx", [
    (None, "no", "no", "no"), (L4, "yes", "yes", "yes"), (H100, "yes", "yes", "no")])
def test_doctor_shows_each_flavour_and_what_it_can_do_here(both, fake_rtx, capsys, monkeypatch, gpu, build_std,
                                                           run_std, run_rtx):
    from .conftest import run_cli

    monkeypatch.setattr("latentmuse.cli.doctor.gpu_info", lambda: gpu)
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _err = run_cli(capsys, "doctor", "--engines", str(both))
    assert code == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]] for line in out.splitlines()
            if line.count("│") >= 4}
    assert rows["tensorrt"] == ["ok", "11.0.0.fake"] and rows["tensorrt-rtx"] == ["ok", "1.7.0.fake"]
    assert rows["tensorrt: build here"][0] == build_std
    assert rows["tensorrt-rtx: build here"] == ["yes", "yes (ahead of time, no GPU needed)"]
    assert rows["tensorrt: run here"][0] == run_std and rows["tensorrt-rtx: run here"][0] == run_rtx
    if gpu is H100:
        assert "compute capability 9.0, which TensorRT for RTX does not support" in rows["tensorrt-rtx: run here"][1]
    assert rows["engines: tensorrt"][1].startswith(f"2 plan(s) in {both}, TensorRT 11.0.0.fake, compute capability 9.0")
    assert rows["engines: tensorrt-rtx"][1].startswith("2 plan(s)") and "compute capability 8.9, 12.0" in rows[
        "engines: tensorrt-rtx"][1]


def test_no_flavour_importable_is_said_once_for_every_graph(engines, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(LatentmuseError, match=r"--backend trt: TensorRT cannot run here: TensorRT is not importable "
                                              r"\(.*\); TensorRT for RTX is not importable \(.*\)\.") as info:
        _selector(engines, L4, backend="trt")
    assert "'trt-rtx' extra" in info.value.fix
    notes: list[str] = []
    selector = _selector(engines, L4, notes)
    selector.select_all([GRAPH, "vae_decoder"])
    assert [c.backend for c in selector.choices.values()] == ["ort", "ort"]
    assert len(notes) == 1 and notes[0].startswith("TensorRT skipped for every graph: TensorRT is not importable")
