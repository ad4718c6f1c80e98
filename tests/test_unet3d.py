"""LatentSync UNet3D: structure against the reference key list, numerics against independent
computations (diffusers' 2D UNet, permutation symmetry, a motion module written from its formula),
input conventions, strict and safe loading, and config validation."""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from latentmuse.errors import CheckpointError, LatentmuseError
from latentmuse.models.checkpoint import build_on_meta, count_parameters, save_safetensors
from latentmuse.models.unet3d import build, full_config, load, load_unet3d, resolve_config, tiny_config
from latentmuse.models.unet3d.config import MotionConfig
from latentmuse.models.unet3d.motion import MotionModule

REFERENCE = Path(__file__).parent / "data" / "reference" / "latentsync_unet3d_keys.json"

# The `model:` section of LatentSync's configs/unet/stage2.yaml, verbatim (1.5 and 1.6 share it).
STAGE2_MODEL_YAML = """
act_fn: silu
add_audio_layer: true
attention_head_dim: 8
block_out_channels: [320, 640, 1280, 1280]
center_input_sample: false
cross_attention_dim: 384
down_block_types:
  [
    "CrossAttnDownBlock3D",
    "CrossAttnDownBlock3D",
    "CrossAttnDownBlock3D",
    "DownBlock3D",
  ]
mid_block_type: UNetMidBlock3DCrossAttn
up_block_types:
  [
    "UpBlock3D",
    "CrossAttnUpBlock3D",
    "CrossAttnUpBlock3D",
    "CrossAttnUpBlock3D",
  ]
downsample_padding: 1
flip_sin_to_cos: true
freq_shift: 0
in_channels: 13 # 49
layers_per_block: 2
mid_block_scale_factor: 1
norm_eps: 1e-5
norm_num_groups: 32
out_channels: 4 # 16
sample_size: 64
resnet_time_scale_shift: default # Choose between [default, scale_shift]

use_motion_module: true
motion_module_resolutions: [1, 2, 4, 8]
motion_module_mid_block: false
motion_module_decoder_only: false
motion_module_type: Vanilla
motion_module_kwargs:
  num_attention_heads: 8
  num_transformer_block: 1
  attention_block_types:
    - Temporal_Self
    - Temporal_Self
  temporal_position_encoding: true
  temporal_position_encoding_max_len: 24
  temporal_attention_dim_div: 1
  zero_initialize: true
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These models are tiny: one thread is fastest and immune to a busy machine's oversubscription.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomize_motion(model: torch.nn.Module, seed: int = 1) -> None:
    """Give the motion modules' zero-initialised proj_out layers random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal_transformer.proj_out" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _tiny(seed: int = 0, *, motion: bool = True, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    # requires_grad off, as in loaded models: PyTorch picks a different (last-bit) matmul folding for
    # 3D linear inputs when the weight requires grad, even under no_grad.
    model = build({**tiny_config(), **overrides}).eval().requires_grad_(False)
    if motion:
        _randomize_motion(model, seed + 1)
    return model


def _inputs(batch: int = 2, frames: int = 4, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 13, frames, size, size, generator=gen), torch.randn(batch, frames, 50, 384, generator=gen)


# 1. Structure -----------------------------------------------------------------------------------


def test_full_size_state_dict_matches_reference_on_meta() -> None:
    ref = json.loads(REFERENCE.read_text())
    model = build_on_meta(lambda: build())
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in ref["state_dict"]]  # names, shapes and order
    assert len(ours) == ref["num_keys"] == 1246
    assert [n for n, _ in model.named_buffers()] == ref["persistent_buffers"]
    assert len(ref["persistent_buffers"]) == 40

    assert count_parameters(model) == ref["total_parameters"] == 1_267_099_844
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]
        groups[group] = groups.get(group, 0) + p.numel()
    assert groups == ref["parameters_by_group"]
    motion = sum(p.numel() for n, p in model.named_parameters() if ".motion_modules." in n)
    assert motion == ref["motion_module_parameters"] == 417_137_600
    assert sum(1 for n, _ in model.named_modules() if n.endswith(".temporal_transformer")) == 20


# 2. Numerics --------------------------------------------------------------------------------------


def test_single_frame_equals_diffusers_unet2d() -> None:
    """At F = 1 with zero motion proj_out the UNet3D *is* the 2D UNet it was inflated from:

    * GroupNorm over (channels of a group, F, H, W) with F = 1 is the 2D GroupNorm over (…, H, W);
    * convolutions, up/downsampling and spatial transformers run per frame, i.e. as the 2D layers;
    * audio (B, 1, 50, 384) becomes (B, 50, 384), the 2D cross-attention context;
    * a motion module returns its input plus proj_out(...), and a zero proj_out adds exactly 0.
    diffusers' UNet2DConditionModel is an independent implementation of that 2D network with the
    same parameter names, so copying the spatial weights across must give the same prediction.
    """
    from diffusers import UNet2DConditionModel

    cfg = tiny_config()
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(
        sample_size=8,
        in_channels=13,
        out_channels=4,
        down_block_types=tuple(t.replace("3D", "2D") for t in cfg["down_block_types"]),
        up_block_types=tuple(t.replace("3D", "2D") for t in cfg["up_block_types"]),
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        cross_attention_dim=384,
        attention_head_dim=cfg["attention_head_dim"],
        norm_num_groups=cfg["norm_num_groups"],
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
    ).eval()
    with torch.no_grad():  # make norms and biases non-trivial (default init leaves them 1 and 0)
        for name, p in unet2d.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    ours = _tiny(3, motion=False)
    spatial = unet2d.state_dict()
    ours_sd = ours.state_dict()
    assert set(spatial) <= set(ours_sd)
    assert all(".motion_modules." in k for k in set(ours_sd) - set(spatial))
    ours.load_state_dict({**ours_sd, **spatial})

    sample, audio = _inputs(batch=2, frames=1, seed=5)
    with torch.no_grad():
        expected = unet2d(sample[:, :, 0], torch.tensor([981, 21]), audio[:, 0]).sample
        got = ours(sample, torch.tensor([981, 21]), audio)
    assert got.shape == (2, 4, 1, 8, 8)
    assert expected.abs().max() > 0.1
    assert (got[:, :, 0] - expected).abs().max() < 5e-5


def _permuted(sample: torch.Tensor, audio: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return sample[:, :, perm], audio[:, perm]


def test_frame_order_only_matters_through_temporal_position_encoding() -> None:
    """Permuting frames permutes the output unless the motion modules see position encodings.

    GroupNorm statistics over frames are sums, hence order-invariant; per-frame layers commute with a
    permutation; temporal self-attention without position codes is permutation-equivariant. So with
    motion modules zeroed, or with random motion weights but no position encoding, the network is
    frame-equivariant; random motion weights plus the sinusoidal encoding must break that.
    """
    sample, audio = _inputs(batch=1, frames=5, seed=7)
    sample, audio = sample.double(), audio.double()  # float64: "equal" can then mean 1e-10
    perm = torch.tensor([3, 0, 4, 1, 2])
    no_pe = {**tiny_config()["motion_module_kwargs"], "temporal_position_encoding": False}
    cases = [
        (_tiny(0, motion=False), True),  # the released zero_initialize state
        (_tiny(0, motion_module_kwargs=no_pe), True),
        (_tiny(0), False),
    ]
    for model, equivariant in cases:
        model.double()
        with torch.no_grad():
            out = model(sample, 500, audio)
            sample_p, audio_p = _permuted(sample, audio, perm)
            out_perm = model(sample_p, 500, audio_p)
        diff = (out[:, :, perm] - out_perm).abs().max()
        assert (diff < 1e-10) == equivariant, (equivariant, float(diff))
        if not equivariant:
            assert diff > 1e-3

    # Frames interact: changing one frame's input changes the other frames' outputs (GroupNorm over
    # frames even with motion modules zeroed).
    model = _tiny(0, motion=False).double()
    changed = sample.clone()
    changed[:, :, 0] += 1.0
    with torch.no_grad():
        delta = (model(sample, 500, audio) - model(changed, 500, audio))[:, :, 1:].abs().max()
    assert delta > 1e-4


def _pe_table(frames: int, dim: int) -> torch.Tensor:
    """Transformer sinusoids: channel 2k is sin(f / 10000^(2k/dim)), channel 2k+1 the cosine."""
    frame = torch.arange(frames, dtype=torch.float64)[:, None]
    k = torch.arange(0, dim, 2, dtype=torch.float64)
    angle = frame * torch.pow(10000.0, -k / dim)
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(frames, dim)


def _reference_motion_module(x: torch.Tensor, sd: dict[str, torch.Tensor], heads: int, blocks: int, attns: int) -> torch.Tensor:
    """The Vanilla motion module written from its formula, in float64, element by element in spirit:
    per-frame GroupNorm(32, eps 1e-6) -> linear -> [LN -> +PE(frame) -> temporal MHA, residual]*attns
    -> LN -> GEGLU MLP, residual -> linear, plus the input."""
    x = x.double()
    sd = {k: v.double() for k, v in sd.items()}
    b, c, f, h, w = x.shape
    p = "temporal_transformer."
    # GroupNorm per (sample, frame): statistics over the group's channels and the frame's pixels.
    g = x.reshape(b, 32, c // 32, f, h * w)
    mean = g.mean(dim=(2, 4), keepdim=True)
    var = g.var(dim=(2, 4), unbiased=False, keepdim=True)
    normed = ((g - mean) / torch.sqrt(var + 1e-6)).reshape(b, c, f, h, w)
    normed = normed * sd[p + "norm.weight"][:, None, None, None] + sd[p + "norm.bias"][:, None, None, None]
    z = torch.einsum("bcfhw,dc->bhwfd", normed, sd[p + "proj_in.weight"]) + sd[p + "proj_in.bias"]  # (b,h,w,f,d)
    d = z.shape[-1]

    def layer_norm(t: torch.Tensor, key: str) -> torch.Tensor:
        mu = t.mean(-1, keepdim=True)
        sigma2 = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(sigma2 + 1e-5) * sd[key + ".weight"] + sd[key + ".bias"]

    pe = _pe_table(f, d)

    for i in range(blocks):
        q_ = f"{p}transformer_blocks.{i}."
        for j in range(attns):
            a = f"{q_}attention_blocks.{j}."
            n = layer_norm(z, f"{q_}norms.{j}") + pe
            q = (n @ sd[a + "to_q.weight"].T).unflatten(-1, (heads, d // heads))
            kk = (n @ sd[a + "to_k.weight"].T).unflatten(-1, (heads, d // heads))
            v = (n @ sd[a + "to_v.weight"].T).unflatten(-1, (heads, d // heads))
            scores = torch.einsum("...fnd,...gnd->...nfg", q, kk) / math.sqrt(d // heads)
            mixed = torch.einsum("...nfg,...gnd->...fnd", scores.softmax(-1), v).flatten(-2)
            z = z + mixed @ sd[a + "to_out.0.weight"].T + sd[a + "to_out.0.bias"]
        n = layer_norm(z, f"{q_}ff_norm")
        hidden, gate = (n @ sd[q_ + "ff.net.0.proj.weight"].T + sd[q_ + "ff.net.0.proj.bias"]).chunk(2, dim=-1)
        act = hidden * 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2.0)))
        z = z + act @ sd[q_ + "ff.net.2.weight"].T + sd[q_ + "ff.net.2.bias"]
    out = z @ sd[p + "proj_out.weight"].T + sd[p + "proj_out.bias"]  # (b,h,w,f,c)
    return out.permute(0, 4, 3, 1, 2) + x


def test_motion_module_matches_formula() -> None:
    cfg = MotionConfig(
        num_attention_heads=4,
        num_transformer_block=2,
        attention_block_types=("Temporal_Self", "Temporal_Self"),
        temporal_position_encoding=True,
        temporal_position_encoding_max_len=24,
        temporal_attention_dim_div=1,
        zero_initialize=False,
    )
    torch.manual_seed(11)
    module = MotionModule(64, cfg).double().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 64, 6, 3, 2, dtype=torch.float64)
    params = {k: v for k, v in module.state_dict().items() if not k.endswith("pos_encoder.pe")}
    with torch.no_grad():
        got = module(x)
    expected = _reference_motion_module(x, params, heads=4, blocks=2, attns=2)
    assert (got - x).abs().max() > 0.1  # the module does something
    # Everything runs in float64 except the position table, which (like the checkpoint's) is float32.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    pe = module.state_dict()["temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"]
    assert pe.shape == (1, 24, 64)
    torch.testing.assert_close(pe[0, :6], _pe_table(6, 64).to(pe.dtype), rtol=0, atol=1e-6)


def test_more_frames_than_position_encoding_is_refused() -> None:
    model = _tiny(0, motion_module_kwargs={**tiny_config()["motion_module_kwargs"], "temporal_position_encoding_max_len": 3})
    sample, audio = _inputs(batch=1, frames=4)
    with pytest.raises(ValueError, match="temporal position encoding"):
        model(sample, 1, audio)


# 3. Input conventions -----------------------------------------------------------------------------


def test_timestep_audio_layouts_and_batch_independence() -> None:
    model = _tiny(2)
    sample, audio = _inputs(batch=2, frames=4, seed=3)
    with torch.no_grad():
        ref = model(sample, torch.tensor([501, 501]), audio)
        for t in (501, 501.0, torch.tensor(501), torch.tensor([501])):
            torch.testing.assert_close(model(sample, t, audio), ref, rtol=0, atol=1e-6)
        flat = model(sample, 501, audio.reshape(8, 50, 384))
        assert torch.equal(flat, model(sample, 501, audio))
        assert ref.shape == (2, 4, 4, 8, 8) and torch.isfinite(ref).all()

        # CFG batching: a batch of two (different timesteps, different audio) equals two batches of
        # one. In float64, so that float32 rounding (~1e-4 here after 20 random motion modules)
        # cannot hide a real leak between samples.
        m64, s64, a64 = model.double(), sample.double(), audio.double()
        both = m64(s64, torch.tensor([951, 1]), a64)
        first = m64(s64[:1], 951, a64[:1])
        second = m64(s64[1:], 1, a64[1:])
        torch.testing.assert_close(both, torch.cat([first, second]), rtol=0, atol=1e-10)
        assert (first - m64(s64[:1], 1, a64[:1])).abs().max() > 1e-3  # the timestep matters
        model.float()

        # Frame i hears audio i: swapping two frames' audio changes those frames' outputs.
        swapped = audio.clone()
        swapped[:, [0, 1]] = audio[:, [1, 0]]
        assert (model(sample, 501, swapped) - ref).abs().max() > 1e-4

    with pytest.raises(ValueError, match="audio"):
        model(sample, 501, audio[:, :3])
    with pytest.raises(ValueError, match="timestep"):
        model(sample, torch.tensor([1, 2, 3]), audio)


def test_latents_not_multiple_of_eight() -> None:
    model = _tiny(4)
    sample, audio = _inputs(batch=1, frames=2, size=6)
    with torch.no_grad():
        out = model(sample, 10, audio)
    assert out.shape == (1, 4, 2, 6, 6) and torch.isfinite(out).all()


# 4. Loading -------------------------------------------------------------------------------------------


def test_reload_from_pt_and_safetensors(tmp_path: Path) -> None:
    model = _tiny(5)
    sd = model.state_dict()
    pt = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": sd, "global_step": 12}, pt)
    st = tmp_path / "unet.safetensors"
    save_safetensors(sd, st)
    sample, audio = _inputs(batch=1, frames=4, seed=9)
    with torch.no_grad():
        expected = model(sample, 300, audio)
        for path in (pt, st):
            loaded = load_unet3d(path, tiny_config())
            assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
            got = loaded(sample, 300, audio)
            if path == pt:
                assert torch.equal(got, expected)
            else:
                # safetensors tensors are mapped at 8-byte (not 64-byte) aligned addresses, which
                # sends oneDNN down a different vector path: same weights, last-bit differences.
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert load(pt, tiny_config(), dtype=torch.float64).conv_in.weight.dtype == torch.float64


@pytest.mark.parametrize("defect", ["missing", "extra", "shape"])
def test_mismatched_checkpoint_names_the_key(tmp_path: Path, defect: str) -> None:
    sd = dict(_tiny(0, motion=False).state_dict())
    key = "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"
    if defect == "missing":
        del sd[key]
    elif defect == "extra":
        key = "up_blocks.3.attentions.2.transformer_blocks.0.attn3.to_k.weight"
        sd[key] = torch.zeros(2)
    else:
        sd[key] = torch.zeros(sd[key].shape[0], 768)
    path = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_unet3d(path, tiny_config())


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "latentsync_unet.pt"
    payload = {"state_dict": {"conv_in.weight": _Exploit(marker)}}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # legacy torch.save uses protocol 2
    with pytest.raises(CheckpointError, match="needs code"):
        load_unet3d(path, tiny_config())
    assert not marker.exists()


# 5. Config --------------------------------------------------------------------------------------------


def test_stage2_yaml_section_is_the_default_and_accepted(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    section = yaml.safe_load(STAGE2_MODEL_YAML)
    assert section["norm_eps"] == "1e-5"  # PyYAML reads 1e-5 as a string; it must still be accepted
    assert resolve_config(section) == resolve_config(None) == resolve_config(full_config())
    assert sorted(section) == sorted(full_config())

    tiny = {**section, **{k: tiny_config()[k] for k in ("block_out_channels", "norm_num_groups", "attention_head_dim")}}
    tiny["motion_module_kwargs"] = {**section["motion_module_kwargs"], "num_attention_heads": 4}
    model = _tiny(6)
    path = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_unet3d(path, config=tiny)
    sample, audio = _inputs(batch=1, frames=2)
    with torch.no_grad():
        assert torch.equal(loaded(sample, 7, audio), model(sample, 7, audio))

    with pytest.raises(CheckpointError, match="wrong-shape"):  # the right file for another config
        load_unet3d(path, config=section)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"use_linear_projection": False}, "use_linear_projection"),
        ({"motion_module_kwargs": {"cross_frame_attention_mode": None}}, "motion_module_kwargs.cross_frame_attention_mode"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"mid_block_type": "UNetMidBlock3DSimpleCrossAttn"}, "mid_block_type"),
        ({"motion_module_kwargs": {"attention_block_types": ["Temporal_Cross"]}}, "motion_module_kwargs.attention_block_types"),
        ({"norm_num_groups": 7}, "norm_num_groups"),
        ({"in_channels": "13"}, "in_channels"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, config: dict[str, object], key: str) -> None:
    with pytest.raises(LatentmuseError, match=key.replace(".", r"\.")) as info:
        load_unet3d(tmp_path / "does_not_exist.pt", config=config)  # config is checked before the file
    assert not isinstance(info.value, CheckpointError)
