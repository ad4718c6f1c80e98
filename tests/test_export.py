"""ONNX export of every graph at the tiny configuration, validated against PyTorch on fresh inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from latentmuse.export import onnx_export as oe
from latentmuse.artifacts.export_report import read_report, write_report
from latentmuse.runners.compare import compare, run_all
from latentmuse.runners.ort_runner import OrtRunner
from latentmuse.runners.torch_runner import TorchRunner
from latentmuse.graphs.spec import GraphSpec, TensorSpec
from latentmuse.graphs.registry import GRAPHS

# Every graph but the UNet3D variants (exported once below, at a smaller test shape).
TWO_D = ("vae_encoder", "vae_decoder", "whisper_encoder", "whisper_post_ln", "musetalk_unet", "s3fd", "fan68", "bisenet",
         "syncnet_audio", "syncnet_lip")


def _unet3d_test_spec() -> GraphSpec:
    """unet3d_256 with 8 x 8 latents (16 frames, CFG batch 2 as released): same graph, quicker to run."""
    spec = GRAPHS["unet3d_256"]
    return dataclasses.replace(
        spec,
        inputs=(
            TensorSpec("sample", (2, 13, 16, 8, 8)),
            TensorSpec("timestep", (2,), torch.int64),
            TensorSpec("audio", (2, 16, 50, 384)),
        ),
        outputs=(TensorSpec("eps", (2, 4, 16, 8, 8)),),
    )


def _unet3d_model() -> torch.nn.Module:
    from latentmuse.models import unet3d

    cfg = unet3d.tiny_config()
    cfg["layers_per_block"] = 1  # halves the export time; every block type is still there
    torch.manual_seed(3)
    model = unet3d.build(cfg).eval().requires_grad_(False)
    # The motion modules' proj_out is zero-initialised (as released before training): make them count.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj_out" in name and not p.any():
                p.normal_(0, 0.02)
    return model


def test_registry_declares_every_graph() -> None:
    assert set(GRAPHS) == {*TWO_D, "unet3d_256", "unet3d_256_b1", "unet3d_512", "unet3d_512_b1"}
    assert GRAPHS["unet3d_256"].inputs[0].shape == (2, 13, 16, 32, 32)
    assert GRAPHS["unet3d_256_b1"].inputs[0].shape == (1, 13, 16, 32, 32)
    assert GRAPHS["unet3d_512"].outputs[0].shape == (2, 4, 16, 64, 64)
    assert GRAPHS["unet3d_512_b1"].inputs[2].shape == (1, 16, 50, 384)
    assert GRAPHS["unet3d_256"].inputs[1].dtype == torch.int64
    assert GRAPHS["vae_encoder"].profiles()["image"] == ((1, 3, 256, 256), (8, 3, 256, 256), (32, 3, 256, 256))
    assert GRAPHS["musetalk_unet"].profiles()["audio"] == ((1, 50, 384), (8, 50, 384), (32, 50, 384))
    assert GRAPHS["vae_encoder"].atol == 3e-4 and GRAPHS["whisper_encoder"].atol <= 1e-3


# One test per graph (export once, check everything): pytest-xdist spreads tests, not fixtures.
@pytest.mark.parametrize("name", TWO_D)
def test_graph_exports_validates_and_converts(name: str, tmp_path: Path) -> None:
    spec = GRAPHS[name]
    model = oe.smoke_model(spec.model_key)
    r = oe.export_graph(spec, model, tmp_path)

    # fp32: the dynamo exporter at opset 18, named I/O, within tolerance on fresh inputs.
    assert r.exporter == "dynamo" and r.opset == 18, r.exporter_note
    assert r.fp32_pass and r.fp32_max_abs <= spec.atol, (r.fp32_max_abs, spec.atol)
    assert r.fp32_max_abs < 2e-5  # tiny fp32 models: far inside every tolerance
    fp32 = onnx.load(str(tmp_path / f"{name}.onnx"))
    assert [i.name for i in fp32.graph.input] == [t.name for t in spec.inputs]
    assert [o.name for o in fp32.graph.output] == [t.name for t in spec.outputs]
    assert not r.external_data and not (tmp_path / f"{name}.onnx.data").exists()

    # dynamic batch: validated at N = 1 and 3 (traced at 2), and again here at 1 and 4.
    if spec.dynamic:
        dim = spec.dynamic[0].name
        assert [v.sizes for v in r.validations] == [{dim: 1}, {dim: 3}]
        wrapper = spec.make_wrapper(model).eval()
        onnx_runner = OrtRunner(name, tmp_path / f"{name}.onnx", "cpu", spec)
        torch_runner = TorchRunner(name, wrapper, "cpu", torch.float32, spec)
        for n in (1, 4):
            feeds = spec.random_feeds({dim: n}, seed=77 + n)
            got, ref = run_all([onnx_runner, torch_runner], feeds)
            assert next(iter(got.values())).shape[0] == n
            max_abs, _, ok = compare(got, ref, spec.atol, spec.rtol)
            assert ok and max_abs < 2e-5, max_abs

    # fp16: close to PyTorch fp32, float32 I/O, fp16 weights, casts around the fp32 islands.
    assert r.fp16_pass and r.fp16_cosine >= spec.min_cosine_fp16, r.fp16_cosine
    assert r.fp16_max_abs is not None and np.isfinite(r.fp16_max_abs)
    half = onnx.load(str(tmp_path / f"{name}.fp16.onnx"))
    for value in (*half.graph.input, *half.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    floats = [t.data_type for t in half.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats.count(onnx.TensorProto.FLOAT16) > floats.count(onnx.TensorProto.FLOAT)
    assert "Cast" in {n.op_type for n in half.graph.node}


def test_unet3d_external_data_reloads_and_runs(tmp_path: Path) -> None:
    out = tmp_path
    spec, model = _unet3d_test_spec(), _unet3d_model()
    r = oe.export_graph(spec, model, out, external_data_threshold_bytes=0)
    assert r.external_data and r.exporter == "dynamo"
    # With the motion modules switched on (random proj_out) fp32 re-association reaches a few 1e-5 on
    # outputs of magnitude ~1: inside the 1e-3 UNet tolerance by 25x.
    assert r.fp32_pass and r.fp32_max_abs < 1e-4 and r.fp32_rel < 1e-4, (r.fp32_max_abs, r.fp32_rel)
    assert sorted(p.name for p in out.iterdir()) == [  # the staging folder is gone
        "export_report.json", "unet3d_256.fp16.onnx", "unet3d_256.fp16.onnx.data", "unet3d_256.onnx",
        "unet3d_256.onnx.data",
    ]
    loaded = onnx.load(str(out / "unet3d_256.onnx"))  # pulls the side file in
    assert sum(t.data_type == onnx.TensorProto.FLOAT for t in loaded.graph.initializer) > 0
    wrapper = spec.make_wrapper(model).eval()
    feeds = spec.random_feeds({}, seed=5)
    torch_runner = TorchRunner("unet3d_256", wrapper, "cpu", torch.float32)  # no spec: batch 1 below too
    got, ref = run_all([OrtRunner("unet3d_256", out / "unet3d_256.onnx", "cpu", spec), torch_runner], feeds)
    assert got["eps"].shape == (2, 4, 16, 8, 8)
    assert float(np.abs(got["eps"] - ref["eps"]).max()) < 1e-4
    # CFG halves never mix: each batch item equals its own batch-1 run.
    (single,) = run_all([torch_runner], {k: t[1:] for k, t in feeds.items()})
    assert float(np.abs(single["eps"] - ref["eps"][1:]).max()) < 1e-4

    # fp16 (also with external data): close to fp32 PyTorch, I/O types as declared.
    assert r.fp16_pass and r.fp16_cosine >= 0.999, r.fp16_cosine
    half = onnx.load(str(out / "unet3d_256.fp16.onnx"), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)}
    assert types == {"sample": onnx.TensorProto.FLOAT, "timestep": onnx.TensorProto.INT64,
                     "audio": onnx.TensorProto.FLOAT, "eps": onnx.TensorProto.FLOAT}


def test_report_json_has_the_fields(tmp_path: Path) -> None:
    spec = GRAPHS["s3fd"]
    results = [
        oe.export_graph(spec, oe.smoke_model("s3fd"), tmp_path / "a"),
        oe.export_graph(dataclasses.replace(spec, name="s3fd_ext"), oe.smoke_model("s3fd"), tmp_path / "b",
                        external_data_threshold_bytes=0, fp16=False),
    ]
    path = write_report(results, tmp_path / "export_report.json", weights="smoke")
    data = json.loads(path.read_text())
    assert data["passed"] is True and data["schema"] == 2
    assert set(data["graphs"]) == {"s3fd", "s3fd_ext"}
    for entry in data["graphs"].values():
        assert entry["weights"] == "smoke" and entry["status"] == "pass"
        for key in ("file", "bytes", "external_data", "exporter", "opset", "seconds", "fp32_max_abs", "fp32_rel",
                    "fp32_pass", "fp16_cosine", "fp16_max_abs", "fp16_pass", "sha256", "memory_bytes",
                    "validation_seconds", "skipped"):
            assert key in entry, key
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0
    assert data["graphs"]["s3fd"]["external_data"] is False and data["graphs"]["s3fd"]["fp16_pass"] is True
    assert data["graphs"]["s3fd_ext"]["external_data"] is True and data["graphs"]["s3fd_ext"]["fp16_pass"] is None
    assert (tmp_path / "b" / "s3fd_ext.onnx.data").is_file()


def test_report_is_merged_per_graph_not_overwritten(tmp_path: Path) -> None:
    report = tmp_path / "export_report.json"
    first = oe.export_graph(GRAPHS["s3fd"], oe.smoke_model("s3fd"), tmp_path, fp16=False)
    write_report([first], report, weights="smoke", seed=0)
    second = oe.export_graph(GRAPHS["bisenet"], oe.smoke_model("bisenet"), tmp_path, fp16=False)
    write_report([second], report, weights="w2", seed=1)
    graphs = read_report(report)
    assert set(graphs) == {"s3fd", "bisenet"}
    assert (graphs["s3fd"]["weights"], graphs["bisenet"]["weights"]) == ("smoke", "w2")  # stamped per graph
    assert graphs["s3fd"]["sha256"] == first.sha256 and graphs["s3fd"]["status"] == "pass"
    assert json.loads(report.read_text())["passed"] is True


def test_graph_too_big_for_this_machine_is_recorded_unvalidated(tmp_path: Path) -> None:
    spec = GRAPHS["s3fd"]
    r = oe.export_graph(spec, oe.smoke_model("s3fd"), tmp_path, available_bytes=1_000_000)
    # the files are written and checked; neither validation ran, and the report says why in numbers
    assert (tmp_path / "s3fd.onnx").is_file() and (tmp_path / "s3fd.fp16.onnx").is_file()
    assert r.status == "unvalidated" and not r.passed
    assert r.fp32_pass is None and r.fp32_max_abs is None and r.validations == []
    assert r.fp16_pass is None and r.fp16_cosine is None
    assert r.memory_bytes > 1_000_000
    assert [s.split(":")[0] for s in r.skipped] == ["fp32 validation", "fp16 validation"]
    assert "ONNX Runtime CPU would need about" in r.skipped[0] and "0.0 GB are available" in r.skipped[0]
    # the same graph with the memory it needs validates: the estimate is what decided
    ok = oe.export_graph(spec, oe.smoke_model("s3fd"), tmp_path / "b", available_bytes=r.memory_bytes)
    assert ok.status == "pass" and ok.memory_bytes == r.memory_bytes


def test_one_graph_failing_does_not_stop_the_others(tmp_path: Path, monkeypatch) -> None:
    real = oe.export_graph

    def flaky(spec, *args, **kwargs):
        if spec.name == "s3fd":
            raise RuntimeError("onnxruntime: bad allocation\nmore detail")
        return real(spec, *args, **kwargs)

    monkeypatch.delenv("LATENTMUSE_DEBUG", raising=False)
    monkeypatch.setattr(oe, "export_graph", flaky)
    done = []
    results = oe.export_many(["s3fd", "bisenet"], oe.SMOKE, tmp_path, fp16=False, on_done=done.append)
    assert [(r.name, r.status) for r in results] == [("s3fd", "FAIL"), ("bisenet", "pass")] == [
        (r.name, r.status) for r in done]
    assert results[0].error == "RuntimeError: onnxruntime: bad allocation"
    report = read_report(tmp_path / "export_report.json")  # both recorded, as each finished
    assert (report["s3fd"]["status"], report["bisenet"]["status"]) == ("FAIL", "pass")
    monkeypatch.setenv("LATENTMUSE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="bad allocation"):
        oe.export_many(["s3fd"], oe.SMOKE, tmp_path, fp16=False)


def test_torchscript_fallback_is_recorded(tmp_path: Path) -> None:
    r = oe.export_graph(GRAPHS["s3fd"], oe.smoke_model("s3fd"), tmp_path, dynamo=False, fp16=False)
    assert (r.exporter, r.opset) == ("torchscript", 17) and r.exporter_note == "dynamo=False requested"
    assert r.fp32_pass and r.fp32_max_abs < 2e-5 and r.fp16_pass is None and r.status == "pass"


def test_trace_below_two_is_refused(tmp_path: Path) -> None:
    from latentmuse.errors import LatentmuseError

    with pytest.raises(LatentmuseError, match="below 2"):
        oe.export_graph(GRAPHS["fan68"], oe.smoke_model("fan68"), tmp_path, sizes={"N": 1})


def test_cli_exports_smoke_graphs_and_writes_report(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from latentmuse.cli import export

    app = typer.Typer()
    app.command()(export.export)
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["--weights", "smoke", "--graphs", "s3fd", "--out", str(tmp_path / "o"),
                                   "--report", str(report)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "pass [1/1] s3fd: dynamo opset 18" in res.output
    assert json.loads(report.read_text())["graphs"]["s3fd"]["fp32_pass"] is True
    assert read_report(tmp_path / "o" / "export_report.json")["s3fd"]["status"] == "pass"  # what build reads
    assert (tmp_path / "o" / "s3fd.onnx").is_file() and (tmp_path / "o" / "s3fd.fp16.onnx").is_file()

    res = CliRunner().invoke(app, ["--weights", "smoke", "--graphs", "nope", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0


def test_cli_exit_code_tells_failed_from_unvalidated(tmp_path: Path, monkeypatch) -> None:
    import typer
    from typer.testing import CliRunner

    from latentmuse.cli import export
    from latentmuse.export import memory

    app = typer.Typer()
    app.command()(export.export)
    out = tmp_path / "o"
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    res = CliRunner().invoke(app, ["--weights", "smoke", "--graphs", "s3fd", "--out", str(out), "--no-fp16"])
    assert res.exit_code == 0, res.output
    assert "unvalidated [1/1] s3fd" in res.output and "refuses them unless given --unvalidated" in res.output
    assert read_report(out / "export_report.json")["s3fd"]["status"] == "unvalidated"

    monkeypatch.undo()
    monkeypatch.setitem(GRAPHS, "s3fd", dataclasses.replace(GRAPHS["s3fd"], atol=0.0, rtol=0.0))
    res = CliRunner().invoke(app, ["--weights", "smoke", "--graphs", "s3fd", "--out", str(out), "--no-fp16"])
    assert res.exit_code == 1, res.output
    assert "FAIL [1/1] s3fd" in res.output
    entry = read_report(out / "export_report.json")["s3fd"]
    assert entry["status"] == "FAIL" and entry["fp32_pass"] is False and entry["fp32_max_abs"] > 0
