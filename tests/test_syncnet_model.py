"""SyncNet v2 (the lip-sync scorer): structure, numerics, its loader, its weights entry and its two graphs.

The original class cannot be imported here, so parity with it rests on the full-size state dict equal
to the reference list recorded from ``SyncNetModel.S`` (names, shapes, dtypes, order, value count) and
on each stream checked against a functional chain written out independently below from the
original's layer list.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentmuse.errors import CheckpointError
from latentmuse.graphs.registry import GRAPHS
from latentmuse.models import syncnet
from latentmuse.models.checkpoint import build_on_meta, count_parameters
from latentmuse.models.folder import load_model
from latentmuse.models.layouts import layout
from latentmuse.models.random_weights import write_random_weights
from latentmuse.models.smoke import smoke_model

from .conftest import reference, run_cli
from .hub_standin import HubStandIn
from .test_face_models import _randomised
from .test_weights_cli import _hub_tree

GRAPH_NAMES = ("syncnet_audio", "syncnet_lip")
RELEASED_PARAMETERS = 13_631_616  # 13,640,256 float values less the BatchNorm running statistics


def _mfcc(batch: int = 2, seed: int = 1) -> torch.Tensor:
    shape = (batch, 1, syncnet.MFCC_COEFFICIENTS, syncnet.MFCC_STEPS)
    return 10 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _frames(batch: int = 2, seed: int = 2) -> torch.Tensor:
    shape = (batch, 3, syncnet.LIP_FRAMES, syncnet.CROP, syncnet.CROP)
    return 255 * torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _tiny(seed: int = 0) -> syncnet.SyncNet:
    return _randomised(syncnet.build(syncnet.tiny_config()), seed)


@pytest.fixture(scope="module")
def full_file(tmp_path_factory) -> tuple[syncnet.SyncNet, Path]:
    """A full-size network with random weights and statistics, saved as the release is (a plain state dict)."""
    torch.manual_seed(0)
    model = _randomised(syncnet.build(), seed=3)
    path = tmp_path_factory.mktemp("syncnet") / syncnet.OFFICIAL_FILENAME
    torch.save(model.state_dict(), path)
    return model, path


# --------------------------------------------------------------------------------------------------
# Structure.


def test_full_model_matches_reference_state_dict() -> None:
    ref = reference("syncnet_v2_keys")
    model = build_on_meta(syncnet.build)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == ref["state_dict"]  # names, shapes, dtypes and order
    assert len(ours) == ref["num_keys"] == 102
    floats = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    assert floats == ref["num_float_values"] == 13_640_256
    statistics = sum(v.numel() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var")))
    assert count_parameters(model) == floats - statistics == RELEASED_PARAMETERS
    assert all(p.is_meta for p in model.parameters())


def test_configs_and_constants() -> None:
    full, tiny = syncnet.full_config(), syncnet.tiny_config()
    assert full == syncnet.SyncNetConfig() == syncnet.SyncNetConfig.full()
    assert tiny == syncnet.SyncNetConfig.tiny() != full
    assert full.embedding == tiny.embedding == syncnet.EMBEDDING == 1024  # same graph I/O at both sizes
    with pytest.raises(AttributeError):
        full.fc_width = 1  # frozen
    full_keys = list(build_on_meta(syncnet.build).state_dict())
    assert list(build_on_meta(lambda: syncnet.build(tiny)).state_dict()) == full_keys
    assert syncnet.OFFICIAL_FILENAME == "syncnet_v2.model"
    # The registry states the shapes without importing the network: they must agree with it.
    assert GRAPHS["syncnet_audio"].inputs[0].shape == ("N", 1, syncnet.MFCC_COEFFICIENTS, syncnet.MFCC_STEPS)
    assert GRAPHS["syncnet_lip"].inputs[0].shape == ("N", 3, syncnet.LIP_FRAMES, syncnet.CROP, syncnet.CROP)
    for name in GRAPH_NAMES:
        spec = GRAPHS[name]
        assert spec.model_key == "syncnet" and spec.outputs[0].shape == ("N", syncnet.EMBEDDING)
        assert spec.outputs[0].name == "embedding" and spec.profiles()[spec.inputs[0].name][1][0] == 20
    assert (GRAPHS["syncnet_audio"].inputs[0].name, GRAPHS["syncnet_lip"].inputs[0].name) == ("mfcc", "frames")


# --------------------------------------------------------------------------------------------------
# Numerics: each stream against the original's layer list, written as a functional chain.


def _conv_bn_relu(x, sd, prefix, i, conv, **conv_args):
    """Conv at index ``i`` of the Sequential ``prefix``, its BatchNorm at ``i + 1`` (eval), ReLU."""
    x = conv(x, sd[f"{prefix}.{i}.weight"], sd[f"{prefix}.{i}.bias"], **conv_args)
    bn = f"{prefix}.{i + 1}"
    x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                     training=False, eps=1e-5)
    return F.relu(x)


def _fc(x, sd, prefix):
    """Linear 0, BatchNorm1d 1 (eval), ReLU, Linear 3."""
    x = F.linear(x, sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"])
    x = F.batch_norm(x, sd[f"{prefix}.1.running_mean"], sd[f"{prefix}.1.running_var"], sd[f"{prefix}.1.weight"],
                     sd[f"{prefix}.1.bias"], training=False, eps=1e-5)
    return F.linear(F.relu(x), sd[f"{prefix}.3.weight"], sd[f"{prefix}.3.bias"])


def _audio_reference(sd, x):
    a = "netcnnaud"
    x = _conv_bn_relu(x, sd, a, 0, F.conv2d, padding=1)  # (then a 1x1 max pool: the identity)
    x = F.max_pool2d(_conv_bn_relu(x, sd, a, 4, F.conv2d, padding=1), (3, 3), (1, 2))  # 13x20 -> 11x9
    x = _conv_bn_relu(x, sd, a, 8, F.conv2d, padding=1)
    x = _conv_bn_relu(x, sd, a, 11, F.conv2d, padding=1)
    x = F.max_pool2d(_conv_bn_relu(x, sd, a, 14, F.conv2d, padding=1), (3, 3), (2, 2))  # -> 5x4
    x = _conv_bn_relu(x, sd, a, 18, F.conv2d)  # 5x4 kernel -> 1x1
    assert x.shape[2:] == (1, 1)
    return _fc(x.flatten(1), sd, "netfcaud")


def _lip_reference(sd, x):
    v = "netcnnlip"
    x = _conv_bn_relu(x, sd, v, 0, F.conv3d, stride=(1, 2, 2))  # 5 frames -> 1, 224 -> 109
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2))  # -> 54
    x = _conv_bn_relu(x, sd, v, 4, F.conv3d, stride=(1, 2, 2), padding=(0, 1, 1))  # -> 26
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), padding=(0, 1, 1))  # -> 13
    for i in (8, 11, 14):
        x = _conv_bn_relu(x, sd, v, i, F.conv3d, padding=(0, 1, 1))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2))  # -> 6
    x = _conv_bn_relu(x, sd, v, 18, F.conv3d)  # 6x6 kernel -> 1x1
    assert x.shape[2:] == (1, 1, 1)
    return _fc(x.flatten(1), sd, "netfclip")


def test_audio_stream_matches_the_layer_list() -> None:
    model = _tiny()
    x = _mfcc(batch=3)
    with torch.no_grad():
        got = model.forward_aud(x)
        expected = _audio_reference(model.state_dict(), x)
    assert got.shape == (3, syncnet.EMBEDDING)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.abs().max() > 1e-2  # the check has something to compare


def test_lip_stream_matches_the_layer_list() -> None:
    model = _tiny()
    x = _frames(batch=2)
    with torch.no_grad():
        got = model.forward_lip(x)
        expected = _lip_reference(model.state_dict(), x)
        moved = model.forward_lip(torch.cat([x[:, :, 1:], x[:, :, :1]], dim=2))  # the 5 frames reordered
    assert got.shape == (2, syncnet.EMBEDDING)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # 0-255 inputs: magnitudes of ~100
    assert not torch.allclose(got, moved)  # every frame enters, in order


def test_graph_wrappers_are_the_two_streams() -> None:
    model = smoke_model("syncnet")
    assert isinstance(model, syncnet.SyncNet) and model.config == syncnet.tiny_config()
    audio, lip = (GRAPHS[n].make_wrapper(model).eval() for n in GRAPH_NAMES)
    with torch.no_grad():
        assert torch.equal(audio(_mfcc()), model.forward_aud(_mfcc()))
        assert torch.equal(lip(_frames(batch=1)), model.forward_lip(_frames(batch=1)))
    assert (audio.input_names, audio.output_names) == (("mfcc",), ("embedding",))
    assert (lip.input_names, lip.output_names) == (("frames",), ("embedding",))


# --------------------------------------------------------------------------------------------------
# Loader.


def test_full_size_release_format_loads_strictly(full_file) -> None:
    model, path = full_file
    x, frames = _mfcc(), _frames(batch=1)
    with torch.no_grad():
        expected = model.forward_aud(x), model.forward_lip(frames)
    loaded = syncnet.load(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert count_parameters(loaded) == RELEASED_PARAMETERS
    with torch.no_grad():
        assert torch.equal(loaded.forward_aud(x), expected[0])
        assert torch.equal(loaded.forward_lip(frames), expected[1])
    # The release is 54,573,114 bytes: the same tensors, give or take the pickle's bookkeeping.
    assert abs(path.stat().st_size - 54_573_114) < 100_000, path.stat().st_size


@pytest.mark.parametrize("mutation", ["missing", "wrong_shape"])
def test_mismatched_checkpoint_names_the_key(full_file, mutation: str, tmp_path: Path) -> None:
    sd = dict(full_file[0].state_dict())
    key = "netcnnlip.18.weight"
    if mutation == "missing":
        del sd[key]
    else:
        sd[key] = torch.zeros(512, 256, 1, 5, 5)
    path = tmp_path / syncnet.OFFICIAL_FILENAME
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="does not match the architecture") as info:
        syncnet.load(path)
    assert key in str(info.value)
    assert {"missing": "1 missing key", "wrong_shape": "expected [512, 256, 1, 6, 6], got [512, 256, 1, 5, 5]"}[
        mutation] in str(info.value)


def test_tiny_checkpoint_is_refused_by_the_full_config(tmp_path: Path) -> None:
    path = tmp_path / syncnet.OFFICIAL_FILENAME
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match="wrong-shape key"):
        syncnet.load(path)


def test_code_carrying_pickle_is_refused_without_running(marker_pickle) -> None:
    path, marker = marker_pickle
    with pytest.raises(CheckpointError, match="needs code"):
        syncnet.load(path, syncnet.tiny_config())
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# The weights folder: random, check, convert, download.


def test_random_tiny_file_checks_loads_and_converts(tmp_path: Path, capsys) -> None:
    root = tmp_path / "w"
    code, out, _ = run_cli(capsys, "weights", "random", str(root), "--model", "syncnet", "--size", "tiny")
    assert code == 0 and "auxiliary/syncnet_v2.model" in out
    path = root / "auxiliary" / syncnet.OFFICIAL_FILENAME
    raw = torch.load(path, weights_only=True)  # a plain state dict, as released
    assert list(raw) == [k for k, *_ in reference("syncnet_v2_keys")["state_dict"]]
    assert json.loads((root / "latentmuse.json").read_text())["configs"]["syncnet"]["fc_width"] == 64

    model = syncnet.load(path, syncnet.tiny_config())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in raw.items())
    assert load_model(root, "syncnet").config == syncnet.tiny_config()  # the folder's recorded config

    code, out, _ = run_cli(capsys, "weights", "check", str(root), "--model", "syncnet")
    row = next(line for line in out.splitlines() if line.startswith("│ syncnet "))
    assert code == 0 and "yes" in row and f"{count_parameters(model):,}" in row
    assert f"released: {RELEASED_PARAMETERS:,}" in out

    code, out, _ = run_cli(capsys, "weights", "convert", str(root), "--model", "syncnet")
    assert code == 0 and "1 file(s) written" in out
    path.unlink()  # the loaders now find the safetensors copy
    assert layout("syncnet").locate(root) == root / "auxiliary" / "syncnet_v2.safetensors"
    converted = load_model(root, "syncnet")
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in raw.items())


def test_absent_syncnet_is_optional_in_check(tmp_path: Path, capsys) -> None:
    entry = layout("syncnet")
    assert entry.optional and entry.needed_for == "lip-sync score (LSE-C / LSE-D)"
    code, out, _ = run_cli(capsys, "weights", "check", str(tmp_path), "--model", "syncnet")
    row = next(line for line in out.splitlines() if line.startswith("│ syncnet "))
    assert code == 0 and "absent (optional)" in row and "lip-sync score" in row


@pytest.mark.parametrize("version", ["1.5", "1.6"])
def test_download_fetches_from_the_latentsync_1_5_repository(version: str, tmp_path: Path) -> None:
    # Through ``download`` rather than the CLI under ``capsys``: huggingface_hub binds a logging handler to
    # the sys.stderr of its first import, and a capsys stream is closed after its test.
    from latentmuse.models.folder import HubClient, download

    source = tmp_path / "source"
    write_random_weights(source, models=["syncnet"], seed=4)
    hub_root = tmp_path / "hub"
    _hub_tree(source, hub_root, ["syncnet"])
    assert (hub_root / "ByteDance" / "LatentSync-1.5" / "auxiliary" / "syncnet_v2.model").is_file()
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "latentmuse.json").write_bytes((source / "latentmuse.json").read_bytes())  # the tiny config
    lines: list[str] = []
    with HubStandIn(hub_root) as hub:
        (fetched,) = download(dest, latentsync_version=version, models=["syncnet"],
                              client=HubClient(endpoint=hub.endpoint), report=lines.append)
    got = dest / "auxiliary" / "syncnet_v2.model"
    assert (fetched.local, fetched.action) == (got, "downloaded")
    assert fetched.source == "ByteDance/LatentSync-1.5/auxiliary/syncnet_v2.model"
    assert got.read_bytes() == (source / "auxiliary" / "syncnet_v2.model").read_bytes()
    assert any(line.startswith("loading SyncNet v2") for line in lines)  # verified: loaded strictly


# --------------------------------------------------------------------------------------------------
# Export: a weights folder with and without the optional network.


def test_folder_export_includes_syncnet_graphs_only_when_present(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from latentmuse.artifacts.export_report import read_report
    from latentmuse.cli import export

    app = typer.Typer()
    app.command()(export.export)
    root = tmp_path / "w"
    write_random_weights(root, models=["bisenet"])
    res = CliRunner().invoke(app, ["--weights", str(root), "--out", str(tmp_path / "a"), "--no-fp16"])
    assert res.exit_code == 0, res.output
    assert "[1/1] bisenet" in res.output and "pass [1/1] syncnet" not in res.output  # left out, like UNet3D and S3FD
    text = " ".join(res.output.split())
    # and said so, with the command that fetches the weights
    assert ("note: not exported: syncnet_audio, syncnet_lip (no SyncNet v2 (lip-sync score) weights in "
            f"{root}, optional, for the lip-sync score (LSE-C / LSE-D); `latentmuse weights download --dir {root} "
            "--model syncnet` fetches them)") in text
    assert "not exported: unet3d_256, unet3d_256_b1, unet3d_512, unet3d_512_b1 (no LatentSync UNet3D" in text

    write_random_weights(root, models=["syncnet"])
    out = tmp_path / "b"
    res = CliRunner().invoke(app, ["--weights", str(root), "--graphs", ",".join(GRAPH_NAMES), "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = read_report(out / "export_report.json")
    for name in GRAPH_NAMES:
        assert f"pass [{GRAPH_NAMES.index(name) + 1}/2] {name}" in res.output
        assert report[name]["status"] == "pass" and report[name]["fp16_pass"] is True
        assert report[name]["fp32_max_abs"] < GRAPHS[name].atol


@pytest.mark.slow
def test_full_size_graphs_validate_within_tolerance(full_file, tmp_path: Path) -> None:
    """The released sizes with weights that keep activations alive; also on 0-255 frames, the real range."""
    import numpy as np

    from latentmuse.export.onnx_export import export_graph
    from latentmuse.export.validate import ort_runner
    from latentmuse.runners.compare import compare, run_all
    from latentmuse.runners.torch_runner import TorchRunner

    model = full_file[0]
    for name, x in zip(GRAPH_NAMES, (_mfcc(batch=3), _frames(batch=3))):
        spec = GRAPHS[name]
        r = export_graph(spec, model, tmp_path)
        assert r.status == "pass" and r.fp16_pass, r.to_dict()
        assert r.fp32_max_abs < spec.atol / 10, r.fp32_max_abs
        wrapper = spec.make_wrapper(model).eval()
        with ort_runner(spec, tmp_path / f"{name}.onnx") as onnx_runner:
            got, ref = run_all([onnx_runner, TorchRunner(name, wrapper, "cpu", torch.float32, spec)],
                               {spec.inputs[0].name: x})
        assert float(np.abs(ref["embedding"]).max()) > 10  # large outputs, where atol alone would not do
        assert compare(got, ref, spec.atol, spec.rtol)[2]
