"""MuseTalk 1.5's UNet: a diffusers ``UNet2DConditionModel`` used as a single-step latent inpainter.

MuseTalk builds the network from ``musetalkV15/musetalk.json`` and loads ``musetalkV15/unet.pth`` (a
plain state dict) strictly; we do the same, but read the pickle with ``weights_only`` and build on the
meta device. The model is called with t = 0 and the audio window plus its sinusoidal positional
encoding (docs/PIPELINE.md 6a); those belong to the generator and the export wrapper, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from .checkpoint import build_on_meta, load_strict, read_state_dict
from .configs import merged_config, read_json_config

NAME = "MuseTalk 1.5 UNet"
CONFIG_FILENAME = "musetalk.json"
WEIGHTS_FILENAME = "unet.pth"

_FULL: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def full_config() -> dict[str, Any]:
    """The released ``musetalkV15/musetalk.json`` (849,947,844 parameters)."""
    return merged_config(_FULL, None, name=NAME)


def tiny_config() -> dict[str, Any]:
    """Same blocks and interfaces (8 -> 4 channels, 384-d audio), narrow and shallow, for tests."""
    return merged_config(
        _FULL,
        {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8},
        name=NAME,
    )


def build(config: Mapping[str, Any] | None = None) -> UNet2DConditionModel:
    """The UNet, randomly initialised, from a full config dict (None = the released one)."""
    cfg = merged_config(_FULL, config, name=NAME) if config is not None else full_config()
    return UNet2DConditionModel(**cfg)


def load(
    path: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> UNet2DConditionModel:
    """Load ``unet.pth`` (or a safetensors conversion) strictly.

    Without ``config`` the ``musetalk.json`` beside the weights is used when present (as MuseTalk
    does), else the released configuration.
    """
    path = Path(path)
    if config is None and (path.parent / CONFIG_FILENAME).is_file():
        config = read_json_config(path.parent / CONFIG_FILENAME, name=NAME)
    state_dict = read_state_dict(path)
    model = build_on_meta(lambda: build(config))
    return load_strict(model, state_dict, name=NAME, source=path, dtype=dtype, device=device)
