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
