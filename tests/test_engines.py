"""Engine build orchestration, manifest and the TensorRT runner, against a CPU double of ``tensorrt``.

``tests/fake_tensorrt`` holds a ``tensorrt`` module with the TensorRT 10/11 names the code uses; its
"plans" name the ONNX file and its engines run it with ONNX Runtime. The GPU is injected (no GPU here).
"""

from __future__ import annotations

import importlib
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from latentmuse.artifacts import manifest as mf
from latentmuse.engines import orchestrate
from latentmuse.engines.orchestrate import GpuInfo, build_all, engines_unavailable_reason
from latentmuse.errors import LatentmuseError
from latentmuse.runners.base import RunnerError
from latentmuse.artifacts.onnx_files import onnx_sha256

from .helpers import B, SPECS, W, alpha_onnx, beta_onnx, record

ROOT = Path(__file__).parent.parent
GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def onnx_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "onnx"
    folder.mkdir()
    alpha_onnx(folder / "alpha.onnx")
    beta_onnx(folder / "beta.onnx")
    return folder


def actions(results) -> dict[str, tuple[str, str]]:
    return {r.graph: (r.action, r.reason) for r in results}


def test_build_writes_plans_and_a_complete_manifest(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    lines: list[str] = []
    results = build_all(onnx_dir, out, SPECS, report=lines.append)
    assert {r.graph: r.action for r in results} == {"alpha": "built", "beta": "built"}
    manifest = mf.load(out)
    assert set(manifest.graphs) == {"alpha", "beta"}
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["schema"] == 2
    for entry in manifest.entries():
        name = entry.graph
        assert entry.flavor == "tensorrt" and entry.plan == f"{name}.plan"
        assert entry.compute_capabilities == [GPU.compute_capability]
        assert (out / entry.plan).stat().st_size == entry.plan_bytes > 0
        plan = json.loads((out / entry.plan).read_text())  # the fake's plan records how it was built
        assert plan["strongly_typed"] and plan["profile"] == entry.profiles
        assert entry.onnx_sha256 == onnx_sha256(onnx_dir / f"{name}.onnx")
        assert Path(entry.onnx) == (onnx_dir / f"{name}.onnx").resolve()
        assert entry.precision == "fp32"
        assert entry.tensorrt_version == fake_trt.__version__
        assert (entry.gpu_name, entry.compute_capability) == (GPU.name, GPU.compute_capability)
        assert entry.build_seconds >= 0 and entry.built_at.endswith("+00:00")
        # the manifest's profiles are the spec's (min, opt, max), input by input
        assert {k: tuple(tuple(s) for s in v) for k, v in entry.profiles.items()} == SPECS[name].profiles()
        assert set(raw["graphs"][name]["tensorrt"]) == {f.name for f in dataclasses.fields(mf.EngineEntry)}
        # what the builder's network says of each input, with the profile TensorRT's profile object holds
        assert entry.inputs == {k: {"dtype": "FLOAT", "shape": [-1, *v[0][1:]], "profile": v}
                                for k, v in entry.profiles.items()}
        assert entry.builder_peak_rss_bytes > 10 * 2**20  # a Python process importing numpy and onnx
    assert manifest.get("alpha", "tensorrt").export == {"torch": "2.13.0", "opset": 17, "exporter": "dynamo", "fp32_pass": True,
                                               "sha256": manifest.get("alpha", "tensorrt").onnx_sha256}
    beta = manifest.get("beta", "tensorrt")
    assert beta.validated and beta.export["fp32_pass"] is True
    assert manifest.get("alpha", "tensorrt").profiles["x"] == [[1, 4], [2, 4], [4, 4]]
    # one timing cache for this GPU + TensorRT, loaded and saved by each build
    (cache,) = out.glob("timing-*.cache")
    assert "H100" in cache.name and json.loads(cache.read_text())["builds"] == 2
    assert any("alpha: built" in line for line in lines)


def test_rebuilds_only_what_changed(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    build_all(onnx_dir, out, SPECS)
    first = mf.load(out)
    assert actions(build_all(onnx_dir, out, SPECS)) == {"alpha": ("skipped", "up to date"),
                                                        "beta": ("skipped", "up to date")}
    alpha_onnx(onnx_dir / "alpha.onnx", bias=B + 1)
    assert actions(build_all(onnx_dir, out, SPECS)) == {"alpha": ("built", "onnx changed"),
                                                        "beta": ("skipped", "up to date")}
    second = mf.load(out)
    assert second.get("alpha", "tensorrt").onnx_sha256 != first.get("alpha", "tensorrt").onnx_sha256
    assert second.get("beta", "tensorrt") == first.get("beta", "tensorrt")
    other = GpuInfo("NVIDIA L4", "8.9")
    results = actions(build_all(onnx_dir, out, SPECS, gpu=other, graphs=["beta"]))
    assert results == {"beta": ("built", "built for GPU NVIDIA H100 80GB HBM3, this machine has NVIDIA L4")}
    assert mf.load(out).get("beta", "tensorrt").gpu_name == "NVIDIA L4"
    assert {r.action for r in build_all(onnx_dir, out, SPECS, gpu=other, force=True)} == {"built"}


def test_entry_is_current_names_the_mismatch(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    entry = mf.load(out).get("alpha", "tensorrt")
    target = mf.Target("tensorrt", entry.tensorrt_version, GPU.name, (GPU.compute_capability,))
    sha = entry.onnx_sha256
    assert mf.entry_is_current(entry, sha, target) == (True, "up to date")
    assert mf.entry_is_current(None, sha, target) == (False, "not built yet")
    assert mf.entry_is_current(entry, "0" * 64, target) == (False, "onnx changed")
    ok, reason = mf.entry_is_current(entry, sha, dataclasses.replace(target, version="10.9.0"))
    assert not ok and reason == "built with TensorRT 11.0.0.fake, this machine has 10.9.0"
    ok, reason = mf.entry_is_current(entry, sha, dataclasses.replace(target, compute_capabilities=("8.6",)))
    assert not ok and reason == "built for compute capability 9.0, this GPU has 8.6"
    rtx = mf.Target("tensorrt-rtx", "1.7.0", "", ("8.6", "8.9"))
    assert mf.entry_is_current(entry, sha, rtx) == (False, "built with TensorRT, this build uses TensorRT for RTX")
    as_rtx = dataclasses.replace(entry, flavor="tensorrt-rtx", tensorrt_version="1.7.0", gpu_name="",
                                 compute_capability="", compute_capabilities=["8.6", "8.9"])
    assert mf.entry_is_current(as_rtx, sha, rtx) == (True, "up to date")
    assert mf.entry_is_current(as_rtx, sha, dataclasses.replace(rtx, compute_capabilities=("8.9", "8.6"))) == (
        True, "up to date")  # the same set of targets
    ok, reason = mf.entry_is_current(as_rtx, sha, dataclasses.replace(rtx, compute_capabilities=("8.6", "12.0")))
    assert not ok and reason == "built for compute capabilities 8.6, 8.9, asked for 8.6, 12.0"
    # where a plan runs: standard on its GPU model only, RTX on any GPU of a targeted compute capability
    assert mf.entry_runs_on(entry, entry.tensorrt_version, GPU)[0]
    assert mf.entry_runs_on(entry, entry.tensorrt_version, GpuInfo("NVIDIA H100 PCIe", "9.0")) == (
        False, "built for GPU NVIDIA H100 80GB HBM3, this machine has NVIDIA H100 PCIe")
    assert mf.entry_runs_on(as_rtx, "1.7.0", GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))[0]
    assert mf.entry_runs_on(as_rtx, "1.7.0", GpuInfo("NVIDIA L40S", "8.9"))[0]
    assert mf.entry_runs_on(as_rtx, "1.7.0", GPU) == (
        False, "built for compute capabilities 8.6, 8.9, this GPU (NVIDIA H100 80GB HBM3) has 9.0")
    assert mf.entry_runs_on(as_rtx, "1.8.0", GpuInfo("NVIDIA L4", "8.9")) == (
        False, "built with TensorRT for RTX 1.7.0, this machine has 1.8.0")


def test_schema_1_manifest_reads_as_standard_tensorrt(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    entry = json.loads((out / "manifest.json").read_text())["graphs"]["alpha"]["tensorrt"]
    for key in ("flavor", "compute_capabilities", "builder_peak_rss_bytes", "inputs"):
        del entry[key]  # what schema 1 wrote
    (out / "manifest.json").write_text(json.dumps({"schema": 1, "graphs": {"alpha": entry}}))
    old = mf.load(out).get("alpha", "tensorrt")
    assert old.flavor == "tensorrt" and old.compute_capabilities == [GPU.compute_capability]
    assert actions(build_all(onnx_dir, out, SPECS, graphs=["alpha"])) == {"alpha": ("skipped", "up to date")}


def test_other_tensorrt_version_rebuilds_and_old_plans_do_not_load(fake_trt, onnx_dir, tmp_path, monkeypatch):
    from latentmuse.runners.trt_runner import TrtRunner

    out = tmp_path / "engines"
    build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    monkeypatch.setenv("FAKE_TENSORRT_VERSION", "10.13.0")
    sys.modules.pop("tensorrt", None)
    new = importlib.import_module("tensorrt")
    assert new.__version__ == "10.13.0"
    with pytest.raises(LatentmuseError, match="could not deserialize"):  # None from deserialize_cuda_engine
        TrtRunner("alpha", out / "alpha.plan", device="cpu").open()
    (result,) = build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    assert result.action == "built" and result.reason == "built with TensorRT 11.0.0.fake, this machine has 10.13.0"
    assert mf.load(out).get("alpha", "tensorrt").tensorrt_version == "10.13.0"


def test_crashing_builder_is_a_clean_error_naming_the_graph(fake_trt, onnx_dir, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    monkeypatch.setenv("FAKE_TENSORRT_CRASH", "alpha")
    with pytest.raises(orchestrate.BuildError, match=r"alpha.*crashed \(SIGABRT\)") as info:
        build_all(onnx_dir, out, SPECS)
    assert actions(info.value.results)["beta"][0] == "built"
    manifest = mf.load(out)  # still valid JSON, with the graph that did build
    assert set(manifest.graphs) == {"beta"}
    assert not (out / "alpha.plan").exists()
    monkeypatch.delenv("FAKE_TENSORRT_CRASH")
    assert actions(build_all(onnx_dir, out, SPECS)) == {"alpha": ("built", "not built yet"),
                                                        "beta": ("skipped", "up to date")}


def test_fp16_graph_preferred_and_missing_onnx_named(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    alpha_onnx(onnx_dir / "alpha.fp16.onnx")
    (result,) = build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    entry = mf.load(out).get("alpha", "tensorrt")
    assert entry.precision == "fp16" and entry.onnx.endswith("alpha.fp16.onnx")
    (onnx_dir / "beta.onnx").unlink()
    with pytest.raises(LatentmuseError, match="beta: no ONNX"):
        build_all(onnx_dir, out, SPECS, graphs=["beta"])
    with pytest.raises(LatentmuseError, match="unknown graph"):
        build_all(onnx_dir, out, SPECS, graphs=["gamma"])


def test_only_validated_onnx_is_built_unless_asked(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    alpha_onnx(onnx_dir / "alpha.onnx", validated=False)  # out of tolerance against PyTorch
    beta_onnx(onnx_dir / "beta.onnx")
    with pytest.raises(orchestrate.BuildError) as info:
        build_all(onnx_dir, out, SPECS)
    reasons = actions(info.value.results)
    assert reasons["alpha"] == ("failed", "alpha.onnx is not built because its validation against PyTorch failed.")
    assert reasons["beta"][0] == "built" and not (out / "alpha.plan").exists()

    record(onnx_dir / "alpha.onnx", None)  # not validated (e.g. too big for this machine's memory)
    with pytest.raises(orchestrate.BuildError, match="alpha.onnx is not built because it was not validated"):
        build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    alpha_onnx(onnx_dir / "alpha.onnx")
    model = onnx.load(str(onnx_dir / "alpha.onnx"))
    model.doc_string = "edited after its validation"
    onnx.save(model, str(onnx_dir / "alpha.onnx"))
    with pytest.raises(orchestrate.BuildError, match="not the one the export report validated"):
        build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    (onnx_dir / "export_report.json").unlink()
    with pytest.raises(orchestrate.BuildError, match="the export report has no entry for it"):
        build_all(onnx_dir, out, SPECS, graphs=["alpha"])

    (result,) = build_all(onnx_dir, out, SPECS, graphs=["alpha"], allow_unvalidated=True)
    assert result.action == "built"
    entry = mf.load(out).get("alpha", "tensorrt")
    assert entry.validated is False and entry.export == {}
    assert mf.load(out).get("beta", "tensorrt").validated is True


def test_auto_precision_takes_fp32_when_only_fp32_validated(fake_trt, onnx_dir, tmp_path):
    out = tmp_path / "engines"
    alpha_onnx(onnx_dir / "alpha.fp16.onnx", validated=False)  # fp16 overflow, say
    (result,) = build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    assert mf.load(out).get("alpha", "tensorrt").precision == "fp32"
    with pytest.raises(orchestrate.BuildError, match="alpha.fp16.onnx is not built because its validation"):
        build_all(onnx_dir, out, SPECS, graphs=["alpha"], precision="fp16")
    alpha_onnx(onnx_dir / "alpha.fp16.onnx")  # re-exported, now validated: auto prefers it again
    (result,) = build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    assert result.action == "built" and result.reason == "precision changed (fp32 -> fp16)"


@pytest.fixture
def polygraphy_here(fake_trt):
    """Polygraphy imported afresh in this process, so its lazy ``tensorrt`` is this test's fake; dropped after."""

    def drop() -> None:
        for name in [m for m in sys.modules if m == "polygraphy" or m.startswith("polygraphy.")]:
            del sys.modules[name]

    drop()
    yield importlib.import_module("polygraphy.backend.trt")
    drop()


ALPHA_PROFILE = {"x": [[1, 4], [2, 4], [4, 4]]}


def test_build_plan_runs_polygraphy_loaders(polygraphy_here, fake_trt, onnx_dir, tmp_path, monkeypatch, capsys):
    from latentmuse.engines.trt_build import build_plan

    loaders, calls, built = polygraphy_here, [], []

    def spy(name: str) -> None:
        real = getattr(loaders, name)

        def make(*args, **kwargs):
            calls.append((name, args, kwargs))
            loader = real(*args, **kwargs)
            if name != "EngineBytesFromNetwork":
                return loader

            def run():
                payload = loader()
                built.append(bytes(payload))
                return payload
            return run

        monkeypatch.setattr(loaders, name, make)

    for name in ("NetworkFromOnnxPath", "CreateConfig", "EngineBytesFromNetwork"):
        spy(name)
    cache, plan = tmp_path / "timing.cache", tmp_path / "engines" / "alpha.plan"
    result = build_plan(onnx_dir / "alpha.onnx", plan, ALPHA_PROFILE, cache, workspace_bytes=1 << 20)
    assert [c[0] for c in calls] == ["NetworkFromOnnxPath", "EngineBytesFromNetwork", "CreateConfig"]
    (_, args, kwargs), = (c for c in calls if c[0] == "NetworkFromOnnxPath")
    assert args == (str(onnx_dir / "alpha.onnx"),) and kwargs == {"strongly_typed": True}
    (_, _, options), = (c for c in calls if c[0] == "CreateConfig")
    (profile,) = options["profiles"]
    assert {k: [list(s) for s in v] for k, v in profile.items()} == ALPHA_PROFILE
    assert options["memory_pool_limits"] == {fake_trt.MemoryPoolType.WORKSPACE: 1 << 20}
    assert options["tf32"] is True and "load_timing_cache" not in options  # no cache file yet
    assert built == [plan.read_bytes()] and result["plan_bytes"] == len(built[0])
    data = json.loads(plan.read_text())
    assert data["strongly_typed"] and data["flags"] == ["TF32"]  # TensorRT's default kept (Polygraphy clears it)
    assert data["profile"] == ALPHA_PROFILE
    assert json.loads(cache.read_text()) == {"builds": 1}
    calls.clear()
    build_plan(onnx_dir / "alpha.onnx", plan, ALPHA_PROFILE, cache)
    (_, _, options), = (c for c in calls if c[0] == "CreateConfig")
    assert options["memory_pool_limits"] is None and options["load_timing_cache"].name == str(cache)
    assert json.loads(cache.read_text()) == {"builds": 2}  # loaded by CreateConfig, written back by us
    assert [p.name for p in plan.parent.iterdir()] == ["alpha.plan"] and not list(tmp_path.rglob("*.lock"))
    assert capsys.readouterr() == ("", "")  # Polygraphy kept quiet


def test_build_plan_errors_name_the_onnx(polygraphy_here, fake_trt, onnx_dir, tmp_path, monkeypatch, capsys):
    from latentmuse.engines.trt_build import build_plan

    plan = tmp_path / "engines" / "alpha.plan"
    (onnx_dir / "bad.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(LatentmuseError, match=r"TensorRT could not parse .*bad\.onnx: cannot read"):
        build_plan(onnx_dir / "bad.onnx", plan, ALPHA_PROFILE)
    with pytest.raises(LatentmuseError, match=r"ONNX file .*gone\.onnx does not exist"):
        build_plan(onnx_dir / "gone.onnx", plan, ALPHA_PROFILE)
    with pytest.raises(LatentmuseError, match=r"profile max shape \(4, 5\) of input x does not fit"):
        build_plan(onnx_dir / "alpha.onnx", plan, {"x": [[1, 4], [2, 4], [4, 5]]})
    with pytest.raises(LatentmuseError, match=r"input x has dynamic shape \(-1, 4\) but no optimisation profile"):
        build_plan(onnx_dir / "alpha.onnx", plan, {})

    def refuse(self, network, config):
        self.logger.log(fake_trt.Logger.ERROR, "out of tactics")
        return None

    monkeypatch.setattr(fake_trt.Builder, "build_serialized_network", refuse)
    with pytest.raises(LatentmuseError, match=r"failed to build the engine from .*alpha\.onnx.*: out of tactics"):
        build_plan(onnx_dir / "alpha.onnx", plan, ALPHA_PROFILE)
    assert not plan.exists()
    assert "\n" not in capsys.readouterr().out  # Polygraphy's lines went to stderr, not the result channel


def test_build_without_polygraphy_is_a_clean_error(fake_trt, onnx_dir, tmp_path, monkeypatch):
    from latentmuse.engines.trt_build import build_plan

    monkeypatch.setitem(sys.modules, "polygraphy", None)  # import polygraphy -> ImportError
    with pytest.raises(LatentmuseError, match=r"polygraphy is not importable .*install the 'gpu' extra"):
        build_plan(onnx_dir / "alpha.onnx", tmp_path / "alpha.plan", ALPHA_PROFILE)
    assert not (tmp_path / "alpha.plan").exists()
    # importing the engine code needs no polygraphy, and neither does the builder's --help
    script = ("import sys\nimport latentmuse.engines, latentmuse.engines.trt_build as b\n"
              "print(sorted(m for m in sys.modules if m.startswith('polygraphy')))\n"
              "sys.modules['polygraphy'] = None\nb.main(['--help'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[]\nusage: python -m latentmuse.engines.trt_build")


def test_broken_manifest_is_a_readable_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LatentmuseError, match="unreadable"):
        mf.load(tmp_path)
    assert mf.load(tmp_path / "absent").graphs == {}


def test_runner_matches_onnx_runtime_and_torch(fake_trt, onnx_dir, tmp_path):
    import onnxruntime as ort

    from latentmuse.runners.trt_runner import EngineShapeError, TrtRunner

    out = tmp_path / "engines"
    build_all(onnx_dir, out, SPECS)
    alpha = TrtRunner("alpha", out / "alpha.plan", device="cpu").open()
    beta = TrtRunner("beta", out / "beta.plan", device="cpu").open()
    assert (alpha.input_names, alpha.output_names) == (("x",), ("y",))
    assert (beta.input_names, beta.output_names) == (("a", "b"), ("s", "p"))
    session = ort.InferenceSession(str(onnx_dir / "alpha.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # inside the profile (1..4)
        x = torch.randn(n, 4)
        y = alpha({"x": x})["y"]
        assert y.shape == (n, 3) and y.dtype == torch.float32
        torch.testing.assert_close(y, x @ torch.from_numpy(W) + torch.from_numpy(B), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y.numpy(), session.run(["y"], {"x": x.numpy()})[0], rtol=1e-6, atol=1e-6)
        a, b = torch.randn(n, 2, 4, 4), torch.randn(n, 2, 4, 4, dtype=torch.float64)  # cast to the engine's type
        got = beta({"a": a, "b": b})
        torch.testing.assert_close(got["s"], a + b.float())
        torch.testing.assert_close(got["p"], a * b.float())
    with pytest.raises(EngineShapeError, match=r"input x has shape \(5, 4\), outside the engine's profile"):
        alpha({"x": torch.randn(5, 4)})
    with pytest.raises(EngineShapeError):
        alpha({"x": torch.randn(2, 5)})
    with pytest.raises(RunnerError, match=r"beta: missing inputs \['b'\]"):
        beta({"a": torch.randn(1, 2, 4, 4)})


def test_runtime_refuses_engines_built_elsewhere(fake_trt, onnx_dir, tmp_path, monkeypatch):
    from latentmuse.runners.select import EngineStore
    from latentmuse.runners.trt_runner import TrtRunner
    from latentmuse.system import TENSORRT

    out = tmp_path / "engines"
    build_all(onnx_dir, out, SPECS, graphs=["alpha"])
    store, version = EngineStore(out, "smoke"), importlib.import_module("tensorrt").__version__
    plan, why = store.plan("alpha", TENSORRT, version, GPU)
    assert plan == out / "alpha.plan" and "built" in why
    assert TrtRunner("alpha", plan, device="cpu")({"x": torch.ones(2, 4)})["y"].shape == (2, 3)
    plan, why = store.plan("alpha", TENSORRT, version, GpuInfo("NVIDIA L4", "8.9"))
    assert plan is None and why == "built for GPU NVIDIA H100 80GB HBM3, this machine has NVIDIA L4"
    plan, why = store.plan("alpha", TENSORRT, "10.9.0", GPU)
    assert plan is None and "built with TensorRT 11.0.0.fake, this machine has 10.9.0" in why
    plan, why = store.plan("beta", TENSORRT, version, GPU)
    assert plan is None and why.startswith("no engine in")
    (out / "alpha.plan").write_bytes(b"{}")
    plan, why = store.plan("alpha", TENSORRT, version, GPU)
    assert plan is None and "missing or changed" in why


def test_without_tensorrt_one_line_reason(monkeypatch, tmp_path, onnx_dir):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    reason = engines_unavailable_reason()
    assert reason and "\n" not in reason and reason.startswith("TensorRT engines not built: TensorRT: tensorrt not importable")
    assert "TensorRT for RTX: tensorrt_rtx not importable" in reason and "install the 'trt-rtx' extra" in reason
    with pytest.raises(LatentmuseError, match="not importable") as info:
        build_all(onnx_dir, tmp_path / "engines", SPECS)
    assert "pip install 'latentmuse[trt-rtx]'" in info.value.fix
    assert not (tmp_path / "engines").exists()


def test_without_gpu_standard_tensorrt_cannot_build_and_rtx_can(fake_trt, monkeypatch, onnx_dir, tmp_path):
    assert engines_unavailable_reason() is None
    assert orchestrate.resolve_flavor("auto", GPU)[0].name == "tensorrt"  # a GPU and standard TensorRT: it
    monkeypatch.setattr(orchestrate, "gpu_info", lambda: None)
    assert engines_unavailable_reason() is None  # TensorRT for RTX builds without one
    assert orchestrate.resolve_flavor("auto", None)[0].name == "tensorrt-rtx"
    assert engines_unavailable_reason("tensorrt") == ("TensorRT engines not built: TensorRT: it builds on the GPU "
                                                      "the plans will run on, and no CUDA GPU is visible to torch")
    with pytest.raises(LatentmuseError, match="no CUDA GPU is visible"):
        build_all(onnx_dir, tmp_path / "engines", SPECS, flavor="tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert "TensorRT for RTX: tensorrt_rtx not importable" in engines_unavailable_reason()


def test_build_command_exits_1_with_one_line_when_unavailable(monkeypatch, capsys, tmp_path):
    import typer

    from latentmuse.cli.build import build

    cli_app = importlib.import_module("latentmuse.cli.app")  # the module (the package exports the Typer as app)

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    if not any(getattr(c, "name", None) == "build" for c in cli_app.app.registered_commands):
        test_app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        test_app.command("build")(build)
        test_app.callback()(lambda: None)
        monkeypatch.setattr(cli_app, "app", test_app)
    with pytest.raises(SystemExit) as info:
        cli_app.main(["build", "--onnx", str(tmp_path), "--out", str(tmp_path / "engines")])
    _out, err = capsys.readouterr()
    assert info.value.code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT engines not built" in lines[0]
    assert not (tmp_path / "engines").exists()


def test_build_command_builds_exported_graphs(fake_trt, onnx_dir, monkeypatch, capsys, tmp_path):
    import types

    import typer

    from latentmuse.cli.build import build

    cli_app = importlib.import_module("latentmuse.cli.app")
    monkeypatch.setitem(sys.modules, "latentmuse.graphs.registry", types.SimpleNamespace(GRAPHS=SPECS))
    if not any(getattr(c, "name", None) == "build" for c in cli_app.app.registered_commands):
        test_app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        test_app.command("build")(build)
        test_app.callback()(lambda: None)
        monkeypatch.setattr(cli_app, "app", test_app)
    (onnx_dir / "beta.onnx").unlink()  # only exported graphs are built by default
    out = tmp_path / "engines"
    with pytest.raises(SystemExit) as info:
        cli_app.main(["build", "--onnx", str(onnx_dir), "--out", str(out)])
    assert info.value.code == 0, capsys.readouterr().err
    assert set(mf.load(out).graphs) == {"alpha"}
    with pytest.raises(SystemExit) as info:
        cli_app.main(["build", "--onnx", str(onnx_dir), "--out", str(out), "--graphs", "beta"])
    assert info.value.code == 1 and "beta: no ONNX" in capsys.readouterr().err


# A builder that hangs: it writes half a plan where it was told to, starts a helper that outlives it
# unless its whole session is killed, records the helper's pid, and sleeps.
HANGING_BUILDER = r"""
import subprocess, sys, time
from pathlib import Path
Path(sys.argv[sys.argv.index("--plan") + 1]).write_bytes(b"half a plan")
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
Path(sys.argv[-1]).write_text(str(helper.pid))
time.sleep(300)
"""


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (a zombie awaiting a reaper counts as ended)."""
    import time

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_hanging_builder_is_killed_after_the_timeout(fake_trt, onnx_dir, tmp_path, monkeypatch):
    import time

    T = 8  # long enough for beta's real builder process (imports included) on a loaded 2-core machine
    helper_pid = tmp_path / "helper.pid"
    real = orchestrate.builder_command

    def hang_on_alpha(onnx, plan, *args):
        command = real(onnx, plan, *args)
        if onnx.name != "alpha.onnx":
            return command
        assert command[1:3] == ["-m", "latentmuse.engines.trt_build"]
        return [sys.executable, "-c", HANGING_BUILDER, *command[3:], str(helper_pid)]

    monkeypatch.setattr(orchestrate, "builder_command", hang_on_alpha)
    out, lines = tmp_path / "engines", []
    start = time.monotonic()
    with pytest.raises(orchestrate.BuildError, match=rf"alpha: builder for graph alpha timed out after {T} s") as info:
        build_all(onnx_dir, out, SPECS, timeout_s=T, report=lines.append)
    assert time.monotonic() - start < 60
    assert actions(info.value.results) == {
        "alpha": ("failed", f"builder for graph alpha timed out after {T} s and was stopped."),
        "beta": ("built", "not built yet")}
    assert set(mf.load(out).graphs) == {"beta"}  # recorded: the graph that built; nothing for alpha
    (cache,) = out.glob("timing-*.cache")
    # no partial plan, no private build folder: only what finished builds wrote
    assert sorted(p.name for p in out.iterdir()) == sorted(["beta.plan", "manifest.json", cache.name])
    assert json.loads(cache.read_text()) == {"builds": 1}
    failed = [line for line in lines if "alpha" in line and "failed" in line]
    assert len(failed) == 1 and f"timed out after {T} s" in failed[0]
    assert _gone(int(helper_pid.read_text())), "the builder's helper outlived the timeout"

    monkeypatch.setattr(orchestrate, "builder_command", real)  # a later build, given time, succeeds
    assert actions(build_all(onnx_dir, out, SPECS)) == {"alpha": ("built", "not built yet"),
                                                        "beta": ("skipped", "up to date")}


def test_build_command_rejects_bad_values_before_building(fake_trt, onnx_dir, monkeypatch, capsys, tmp_path):
    import types

    cli_app = importlib.import_module("latentmuse.cli.app")
    monkeypatch.setitem(sys.modules, "latentmuse.graphs.registry", types.SimpleNamespace(GRAPHS=SPECS))
    out = tmp_path / "engines"
    for argv, says in ((["--precision", "fp8"], "'fp8' is not one of 'auto', 'fp16', 'fp32'"),
                       (["--timeout", "0"], "Invalid value for '--timeout'"), (["--graphs", "alpha,gamma"], "unknown graph 'gamma'")):
        with pytest.raises(SystemExit) as info:
            cli_app.main(["build", "--onnx", str(onnx_dir), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert info.value.code == 2 and says in err and "Traceback" not in err, err
    assert not out.exists()
    with pytest.raises(SystemExit) as info:
        cli_app.main(["build", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "auto|fp16|fp32" in help_text.replace(" ", "") and "--timeout" in help_text
