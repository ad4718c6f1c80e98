"""The face front-end networks (S3FD, FAN-68, BiSeNet): structure, numerics, and their loaders.

The original classes cannot be imported here, so parity with them rests on two things: the full-size
state dicts equal the reference lists recorded from the originals (names, shapes, dtypes, order,
parameter counts), and each building block is checked against the formula it implements, written
out independently below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentmuse.errors import CheckpointError
from latentmuse.models import bisenet, fan, s3fd
from latentmuse.models.checkpoint import build_on_meta, count_parameters, save_safetensors

REFERENCE = Path(__file__).parent / "data" / "reference"

# Tests build TorchScript archives the way face-alignment released 2DFAN-4; torch >= 2.10 flags the
# tracing and saving APIs as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")

#: module, reference list, parameter count of the released architecture.
MODELS: dict[str, tuple[ModuleType, str, int]] = {
    "s3fd": (s3fd, "s3fd_keys.json", 22_459_110),
    "fan": (fan, "fan_keys.json", 23_820_176),
    "bisenet": (bisenet, "bisenet_keys.json", 13_300_416),
}

#: Official file names, one per released pickle format.
OFFICIAL_PICKLE = {"s3fd": "s3fd-619a316812.pth", "fan": "2DFAN4-11f355bf06.pth.tar", "bisenet": "79999_iter.pth"}


def _tiny_input(name: str, batch: int = 2) -> torch.Tensor:
    size = {"s3fd": (128, 96), "fan": (64, 64), "bisenet": (64, 96)}[name]
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


def _randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BatchNorm statistics, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype == torch.long:
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1 and name.endswith("weight"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
    return module.eval()


def _tiny(name: str) -> nn.Module:
    mod = MODELS[name][0]
    return _randomised(mod.build(mod.tiny_config()))


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    outs_a, outs_b = _outputs(a, x), _outputs(b, x)
    assert len(outs_a) == len(outs_b)
    for ta, tb in zip(outs_a, outs_b):
        assert torch.equal(ta, tb)


# --------------------------------------------------------------------------------------------------
# Structure: full-size models against the reference lists recorded from the original classes.


@pytest.mark.parametrize("name", MODELS)
def test_full_model_matches_reference_state_dict(name: str) -> None:
    mod, ref_file, params = MODELS[name]
    reference = json.loads((REFERENCE / ref_file).read_text())
    model = build_on_meta(mod.build)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == reference["state_dict"]  # names, shapes, dtypes and order
    assert len(ours) == reference["num_keys"]
    assert count_parameters(model) == reference["total_parameters"] == params
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_default_config_is_the_released_one(name: str) -> None:
    mod = MODELS[name][0]
    assert mod.full_config() == type(mod.full_config())() == type(mod.full_config()).full()
    assert mod.tiny_config() == type(mod.tiny_config()).tiny() != mod.full_config()
    full_keys = list(build_on_meta(mod.build).state_dict())
    tiny_keys = list(build_on_meta(lambda: mod.build(mod.tiny_config())).state_dict())
    if name != "fan":  # tiny FAN has two stacks instead of four; the rest keep every key
        assert tiny_keys == full_keys
    config = mod.full_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, dataclasses.fields(config)[0].name, None)


def test_fan_tiny_keys_are_a_prefix_of_the_stacks() -> None:
    full = list(build_on_meta(fan.build).state_dict())
    tiny = list(build_on_meta(lambda: fan.build(fan.tiny_config())).state_dict())

    def kept(key: str) -> bool:
        # Two stacks: the stem, stacks 0 and 1, and only stack 0's links to the next stack (bl/al).
        stack = re.fullmatch(r"(m|top_m_|conv_last|bn_end|l|bl|al)(\d+)", key.split(".")[0])
        if stack is None:
            return True
        kind, index = stack.group(1), int(stack.group(2))
        return index < 1 if kind in ("bl", "al") else index < 2

    assert tiny == [k for k in full if kept(k)]


# --------------------------------------------------------------------------------------------------
# S3FD numerics.


def test_l2norm_is_channel_l2_normalisation_times_weight() -> None:
    layer = s3fd.L2Norm(5, scale=10.0)
    assert torch.equal(layer.weight, torch.full((5,), 10.0))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0))
    expected = x / torch.linalg.vector_norm(x, dim=1, keepdim=True) * layer.weight.view(1, 5, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    # Unit length per position, scaled per channel.
    torch.testing.assert_close((layer(x) / layer.weight.view(1, 5, 1, 1)).norm(dim=1), torch.ones(2, 3, 4))
    # eps after the square root: an all-zero position stays zero, not NaN.
    assert torch.equal(layer(torch.zeros(1, 5, 2, 2)), torch.zeros(1, 5, 2, 2))


def test_s3fd_outputs_maxout_and_normalised_heads() -> None:
    model = _tiny("s3fd")
    x = _tiny_input("s3fd")
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in ("conv3_3", "conv3_3_norm_mbox_conf")
    ]
    outs = _outputs(model, x)
    for h in hooks:
        h.remove()

    # Six strides (4..128 for a 128x96 input; fc6's padding of 3 makes fc7 4 pixels larger).
    h, w = x.shape[2:]
    sizes = [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16), (h // 32 + 4, w // 32 + 4), (4, 4), (2, 2)]
    assert len(outs) == 12
    for i, (hw, (cls, reg)) in enumerate(zip(sizes, zip(outs[0::2], outs[1::2]))):
        assert cls.shape == (2, 2, *hw), i
        assert reg.shape == (2, 4, *hw), i

    # Max-out background: the stride-4 head's three background logits reduce to their maximum.
    conf = seen["conv3_3_norm_mbox_conf"]
    assert torch.equal(outs[0][:, 0], conf[:, :3].amax(dim=1))
    assert torch.equal(outs[0][:, 1], conf[:, 3])

    # reg1 = loc-conv(L2Norm(relu(conv3_3))), with L2Norm written from its formula.
    f = F.relu(seen["conv3_3"])
    f = f / f.pow(2).sum(1, keepdim=True).sqrt() * model.conv3_3_norm.weight.view(1, -1, 1, 1)
    loc = model.conv3_3_norm_mbox_loc
    torch.testing.assert_close(outs[1], F.conv2d(f, loc.weight, loc.bias, padding=1), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# FAN numerics.


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm from its formula."""
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def _conv_block_formula(block: fan.ConvBlock, x: torch.Tensor) -> torch.Tensor:
    out1 = F.conv2d(F.relu(_bn(x, block.bn1)), block.conv1.weight, padding=1)
    out2 = F.conv2d(F.relu(_bn(out1, block.bn2)), block.conv2.weight, padding=1)
    out3 = F.conv2d(F.relu(_bn(out2, block.bn3)), block.conv3.weight, padding=1)
    shortcut = x
    if block.downsample is not None:
        shortcut = F.conv2d(F.relu(_bn(x, block.downsample[0])), block.downsample[2].weight)
    return torch.cat([out1, out2, out3], dim=1) + shortcut


@pytest.mark.parametrize(("cin", "cout"), [(16, 16), (8, 16)])
def test_fan_conv_block_matches_formula(cin: int, cout: int) -> None:
    block = _randomised(fan.ConvBlock(cin, cout))
    assert (block.downsample is None) == (cin == cout)
    assert [block.conv1.out_channels, block.conv2.out_channels, block.conv3.out_channels] == [cout // 2, cout // 4, cout // 4]
    x = torch.randn(2, cin, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(block(x), _conv_block_formula(block, x), rtol=1e-5, atol=1e-5)


def test_fan_hourglass_matches_formula() -> None:
    hg = _randomised(fan.HourGlass(depth=2, features=8))
    assert list(dict(hg.named_children())) == ["b1_2", "b2_2", "b1_1", "b2_1", "b2_plus_1", "b3_1", "b3_2"]
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(4))

    def block(name: str, t: torch.Tensor) -> torch.Tensor:
        return _conv_block_formula(hg.get_submodule(name), t)

    def level(n: int, t: torch.Tensor) -> torch.Tensor:
        low = block(f"b2_{n}", F.avg_pool2d(t, 2))
        low = level(n - 1, low) if n > 1 else block("b2_plus_1", low)
        low = block(f"b3_{n}", low)
        return block(f"b1_{n}", t) + low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    with torch.no_grad():
        torch.testing.assert_close(hg(x), level(2, x), rtol=1e-5, atol=1e-5)


def test_fan_heatmaps_shape_for_a_256_crop() -> None:
    model = _tiny("fan")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    outs = _outputs(model, x)
    assert len(outs) == fan.tiny_config().num_stacks == 2
    assert all(o.shape == (1, 68, 64, 64) for o in outs)
    with torch.no_grad():
        assert torch.equal(model.heatmaps(x), outs[-1])
    # The second stack sees the first one's heatmaps through al0: changing it changes only stack 2.
    with torch.no_grad():
        model.al0.weight.mul_(2)
    changed = _outputs(model, x)
    assert torch.equal(changed[0], outs[0]) and not torch.equal(changed[1], outs[1])


# --------------------------------------------------------------------------------------------------
# BiSeNet numerics.


@pytest.mark.parametrize("size", [(64, 96), (57, 89)])
def test_bisenet_logits_at_input_resolution(size: tuple[int, int]) -> None:
    model = _tiny("bisenet")
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(6))
    seen: dict[str, torch.Tensor] = {}
    hook = model.conv_out.register_forward_hook(lambda m, i, o: seen.__setitem__("low", o))
    outs = _outputs(model, x)
    hook.remove()
    assert len(outs) == 3
    assert all(o.shape == (2, 19, *size) for o in outs)
    labels = model.parse(x)
    assert labels.shape == (2, *size) and labels.dtype == torch.long
    assert int(labels.min()) >= 0 and int(labels.max()) < 19
    assert torch.equal(labels, outs[0].argmax(dim=1))

    low = seen["low"]  # the main head at stride 8, before upsampling
    assert low.shape[2:] == (-(-size[0] // 8), -(-size[1] // 8))
    if size == (57, 89):
        # Bilinear with align_corners=True maps output pixel i to input i * (h - 1) / (H - 1): here
        # exactly i / 8, so every 8th output pixel is a stride-8 logit (align_corners=False would
        # blend neighbours there).
        torch.testing.assert_close(outs[0][:, :, ::8, ::8], low, rtol=1e-5, atol=1e-5)


def test_bisenet_attention_and_fusion_match_formula() -> None:
    g = torch.Generator().manual_seed(7)
    arm = _randomised(bisenet.AttentionRefinementModule(8, 4))
    ffm = _randomised(bisenet.FeatureFusionModule(8, 8))
    x = torch.randn(2, 8, 6, 5, generator=g)
    a, b = torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 4, 6, 5, generator=g)
    with torch.no_grad():
        feat = F.relu(_bn(F.conv2d(x, arm.conv.conv.weight, padding=1), arm.conv.bn))
        atten = torch.sigmoid(_bn(F.conv2d(feat.mean((2, 3), keepdim=True), arm.conv_atten.weight), arm.bn_atten))
        torch.testing.assert_close(arm(x), feat * atten, rtol=1e-5, atol=1e-5)

        feat = F.relu(_bn(F.conv2d(torch.cat([a, b], 1), ffm.convblk.conv.weight), ffm.convblk.bn))
        atten = torch.sigmoid(F.conv2d(F.relu(F.conv2d(feat.mean((2, 3), keepdim=True), ffm.conv1.weight)), ffm.conv2.weight))
        torch.testing.assert_close(ffm(a, b), feat * (1 + atten), rtol=1e-5, atol=1e-5)


def test_bisenet_backbone_strides() -> None:
    model = _tiny("bisenet")
    with torch.no_grad():
        feats = model.cp.resnet(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]


# --------------------------------------------------------------------------------------------------
# Loaders: every release format round-trips, bit for bit.


@pytest.mark.parametrize("name", MODELS)
def test_tiny_official_pickle_and_safetensors_reload(name: str, tmp_path: Path) -> None:
    mod = MODELS[name][0]
    model = _tiny(name)
    x = _tiny_input(name)
    pickle_path = tmp_path / OFFICIAL_PICKLE[name]
    torch.save(model.state_dict(), pickle_path)
    st_path = tmp_path / f"{name}.safetensors"
    save_safetensors(model.state_dict(), st_path)
    for path in (pickle_path, st_path):
        loaded = mod.load(path, mod.tiny_config())
        assert not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        _assert_same_outputs(model, loaded, x)
    as_double = mod.load(st_path, mod.tiny_config(), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in as_double.parameters())


@pytest.fixture(scope="module")
def fan_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A tiny FAN and its TorchScript archive (tracing is the slow part: done once)."""
    model = _tiny("fan")
    path = tmp_path_factory.mktemp("torchscript") / "2DFAN4-cd938726ad.zip"
    torch.jit.save(torch.jit.trace(model, _tiny_input("fan"), strict=False, check_trace=False), str(path))
    return model, path


def test_fan_torchscript_archive_reloads(fan_archive: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = fan_archive
    assert fan.is_torchscript_archive(path)
    assert not fan.is_torchscript_archive(tmp_path / "missing.zip")
    torch.save(model.state_dict(), tmp_path / "plain.pth")  # also a zip, but not TorchScript
    assert not fan.is_torchscript_archive(tmp_path / "plain.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loader keeps torch.jit's deprecation notice to itself
        loaded = fan.load(path, fan.tiny_config(), trust_torchscript=path)  # not the pinned release: trusted
    _assert_same_outputs(model, loaded, _tiny_input("fan"))


class _LastHeatmaps(nn.Module):
    """What a release traced to return one tensor might look like: FAN behind a wrapper attribute."""

    def __init__(self, inner: fan.FAN) -> None:
        super().__init__()
        self.fan = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fan(x)[-1]


def test_fan_torchscript_wrapper_prefix_is_removed(tmp_path: Path) -> None:
    model = _tiny("fan")
    x = _tiny_input("fan")
    path = tmp_path / "2DFAN4-cd938726ad.zip"
    torch.jit.save(torch.jit.trace(_LastHeatmaps(model).eval(), x, check_trace=False), str(path))
    assert all(k.startswith("fan.") for k in fan.read_fan_state_dict(path, trust_torchscript=path))
    _assert_same_outputs(model, fan.load(path, fan.tiny_config(), trust_torchscript=path), x)


def test_fan_legacy_wrapped_checkpoint_reloads(tmp_path: Path) -> None:
    """A 2018-style file: legacy serialisation, a ``state_dict`` wrapper, ``module.`` keys, no BN counters."""
    model = _tiny("fan")
    x = _tiny_input("fan")
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "2DFAN4-11f355bf06.pth.tar"
    torch.save({"state_dict": sd, "epoch": 40}, path, _use_new_zipfile_serialization=False)
    loaded = fan.load(path, fan.tiny_config())
    _assert_same_outputs(model, loaded, x)
    assert all(int(t) == 0 for k, t in loaded.state_dict().items() if k.endswith("num_batches_tracked"))


def test_fan_some_batch_counters_missing_is_an_error(tmp_path: Path) -> None:
    sd = _tiny("fan").state_dict()
    del sd["bn1.num_batches_tracked"]
    path = tmp_path / "fan.safetensors"
    save_safetensors(sd, path)
    with pytest.raises(CheckpointError, match=r"bn1\.num_batches_tracked"):
        fan.load(path, fan.tiny_config())


# --------------------------------------------------------------------------------------------------
# Loaders: mismatches and unsafe files are refused with a readable error.

#: A real key of each tiny model, to delete or reshape.
SOME_KEY = {"s3fd": "conv4_3_norm.weight", "fan": "m1.b2_plus_1.conv2.weight", "bisenet": "cp.arm32.bn_atten.running_var"}


def _mutations() -> dict[str, Callable[[dict[str, torch.Tensor], str], str]]:
    def missing(sd: dict[str, torch.Tensor], key: str) -> str:
        del sd[key]
        return key

    def extra(sd: dict[str, torch.Tensor], key: str) -> str:
        sd["head.extra_layer.weight"] = torch.zeros(3)
        return "head.extra_layer.weight"

    def wrong_shape(sd: dict[str, torch.Tensor], key: str) -> str:
        sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
        return key

    return {"missing": missing, "extra": extra, "wrong_shape": wrong_shape}


@pytest.mark.parametrize("mutation", ["missing", "extra", "wrong_shape"])
@pytest.mark.parametrize("name", MODELS)
def test_mismatched_checkpoint_names_the_key(name: str, mutation: str, tmp_path: Path) -> None:
    mod = MODELS[name][0]
    sd = dict(_tiny(name).state_dict())
    bad_key = _mutations()[mutation](sd, SOME_KEY[name])
    path = tmp_path / OFFICIAL_PICKLE[name]
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        mod.load(path, mod.tiny_config())
    assert bad_key in str(info.value)
    assert {"missing": "missing key", "extra": "unexpected key", "wrong_shape": "wrong-shape key"}[mutation] in str(info.value)


def test_full_config_rejects_a_tiny_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "79999_iter.pth"
    torch.save(_tiny("bisenet").state_dict(), path)
    with pytest.raises(CheckpointError, match="wrong-shape key"):
        bisenet.load(path)


class _Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", MODELS)
def test_malicious_pickle_is_refused_without_running(name: str, legacy: bool, tmp_path: Path) -> None:
    mod = MODELS[name][0]
    marker = tmp_path / "pwned"
    path = tmp_path / OFFICIAL_PICKLE[name]
    torch.save({"conv1.weight": _Evil(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="needs code"):
        mod.load(path, mod.tiny_config())
    assert not marker.exists()


def test_plain_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "s3fd-619a316812.pth"
    path.write_bytes(pickle.dumps({"conv1_1.weight": _Evil(marker)}, protocol=2))
    with pytest.raises(CheckpointError):
        s3fd.load(path, s3fd.tiny_config())
    assert not marker.exists()


def test_crafted_torchscript_archive_is_refused_without_running(
    fan_archive: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    """A TorchScript archive whose data.pkl calls os.system: the C++ unpickler does not resolve it."""
    good = fan_archive[1]
    marker = tmp_path / "pwned"
    evil = tmp_path / "2DFAN4-cd938726ad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item.endswith("/data.pkl"):
                data = pickle.dumps(_Evil(marker), protocol=2)
            dst.writestr(item, data)
    assert fan.is_torchscript_archive(evil)
    with pytest.raises(CheckpointError, match="needs code"):  # even when trusted: defence in depth
        fan.load(evil, fan.tiny_config(), trust_torchscript=evil)
    assert not marker.exists()


@pytest.mark.parametrize("name", MODELS)
def test_missing_or_corrupt_file(name: str, tmp_path: Path) -> None:
    mod = MODELS[name][0]
    with pytest.raises(CheckpointError, match="does not exist"):
        mod.load(tmp_path / OFFICIAL_PICKLE[name], mod.tiny_config())
    corrupt = tmp_path / OFFICIAL_PICKLE[name]
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError):
        mod.load(corrupt, mod.tiny_config())
