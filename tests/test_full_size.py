"""Full-size round trips: released architectures with random weights, through real-sized files.

Slow (minutes, ~12 GB RAM peak): run with ``make test-slow``. They prove what the meta-device tests
cannot: that multi-GB official files are written, memory-mapped, assigned and run correctly.
"""

from __future__ import annotations

import gc

import pytest
import torch

from latentmuse.models import musetalk_unet, unet3d

pytestmark = pytest.mark.slow


def test_full_size_unet3d_official_file_roundtrip(tmp_path):
    torch.manual_seed(0)
    original = unet3d.build().eval().requires_grad_(False)
    with torch.no_grad():  # the released file has trained (nonzero) motion modules
        for name, p in original.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                p.normal_(0, 0.02)
    path = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": original.state_dict()}, path)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 13, 2, 8, 8, generator=g)
    audio = torch.randn(1, 2, 50, 384, generator=g)
    with torch.no_grad():
        expected = original(sample, torch.tensor(951), audio)
    del original
    gc.collect()
    loaded = unet3d.load_unet3d(path)
    assert sum(p.numel() for p in loaded.parameters()) == 1_267_099_844
    with torch.no_grad():
        got = loaded(sample, torch.tensor(951), audio)
    assert got.shape == (1, 4, 2, 8, 8) and torch.isfinite(got).all()
    assert torch.equal(got, expected)


def test_full_size_musetalk_unet_official_file_roundtrip(tmp_path):
    torch.manual_seed(0)
    original = musetalk_unet.build().eval().requires_grad_(False)
    torch.save(original.state_dict(), tmp_path / "unet.pth")
    g = torch.Generator().manual_seed(1)
    latents, audio = torch.randn(2, 8, 32, 32, generator=g), torch.randn(2, 50, 384, generator=g)
    with torch.no_grad():
        expected = original(latents, 0, encoder_hidden_states=audio).sample
    del original
    gc.collect()
    loaded = musetalk_unet.load(tmp_path / "unet.pth")
    with torch.no_grad():
        got = loaded(latents, 0, encoder_hidden_states=audio).sample
    assert torch.equal(got, expected)


def test_full_size_vae_decoder_and_musetalk_unet_export_validate_and_convert(tmp_path):
    """The user's path at the released sizes: official-format files -> ``export_many`` -> validated ONNX.

    MuseTalk's UNet is 3.4 GB in fp32 (external data) and 1.7 GB in fp16 (inline): the case where the
    fp16 converter's own shape inference used to serialise the fp32 model past protobuf's 2 GiB.
    """
    from latentmuse.export.onnx_export import export_many
    from latentmuse.artifacts.export_report import read_report
    from latentmuse.graphs.registry import GRAPHS
    from latentmuse.runners.compare import run_all
    from latentmuse.runners.ort_runner import OrtRunner
    from latentmuse.models.folder import load_model
    from latentmuse.models.random_weights import write_random_weights
    from latentmuse.graphs.wrappers import VaeDecoderGraph

    weights, out = tmp_path / "weights", tmp_path / "onnx"
    write_random_weights(weights, size="full", models=["vae", "musetalk_unet"])
    results = {r.name: r for r in export_many(["vae_decoder", "musetalk_unet"], weights, out)}
    report = read_report(out / "export_report.json")

    params = {"vae_decoder": 49_490_179 + 20, "musetalk_unet": 849_947_844}  # decoder + post_quant_conv
    for name, r in results.items():
        spec = GRAPHS[name]
        assert r.status == "pass", r.to_dict()
        assert r.exporter == "dynamo" and report[name]["sha256"] == r.sha256
        assert [x.sizes for x in r.validations] == [{spec.dynamic[0].name: 1}, {spec.dynamic[0].name: 3}]
        assert r.fp32_max_abs <= spec.atol and r.fp16_cosine >= spec.min_cosine_fp16
        # every weight is in the file once: fp32 = 4 bytes per parameter, fp16 = 2 (+ <1% graph)
        assert 1.0 <= r.bytes / (4 * params[name]) < 1.01, r.bytes
        assert 1.0 <= r.fp16_bytes / (2 * params[name]) < 1.01, r.fp16_bytes
    assert results["musetalk_unet"].external_data and (out / "musetalk_unet.onnx.data").is_file()
    assert not (out / "musetalk_unet.fp16.onnx.data").exists()
    assert not results["vae_decoder"].external_data

    # The decoder's validation is not vacuous: most pixels are inside (0, 1), not at the clamp.
    spec = GRAPHS["vae_decoder"]
    feeds = spec.random_feeds({"N": 2}, seed=9)
    (got,) = run_all([OrtRunner("vae_decoder", out / "vae_decoder.onnx", "cpu", spec)], feeds)
    image = got["image"]
    with torch.no_grad():
        expected = VaeDecoderGraph(load_model(weights, "vae"))(*feeds.values()).numpy()
    inside = float(((expected > 0) & (expected < 1)).mean())
    assert inside > 0.5, inside
    assert abs(image - expected).max() <= spec.atol
