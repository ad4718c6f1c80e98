"""The Stable Diffusion VAE (stabilityai/sd-vae-ft-mse), a diffusers ``AutoencoderKL``.

Both MuseTalk and LatentSync use this VAE. The official folder holds ``config.json`` and
``diffusion_pytorch_model.bin`` (MuseTalk's download) or ``.safetensors``. The file predates diffusers'
attention refactor: its mid-block attention weights are named ``query``/``key``/``value``/``proj_attn``,
which we rename to ``to_q``/``to_k``/``to_v``/``to_out.0`` before the strict check (the same mapping
diffusers applies on load), so the official file loads exactly and nothing else is tolerated.

Latent convention (docs/PIPELINE.md 5): latent = posterior mean x 0.18215; decode divides by it first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from .checkpoint import StateDict, build_on_meta, find_weights_file, load_strict, read_state_dict
from .configs import merged_config, read_json_config

NAME = "VAE (sd-vae-ft-mse)"
CONFIG_FILENAME = "config.json"
#: Weight files of the official folder, in order of preference.
WEIGHTS_FILENAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
from .constants import SCALING_FACTOR  # noqa: E402,F401 - re-exported

_FULL: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": SCALING_FACTOR,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

_DEPRECATED_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_RENAMED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def full_config() -> dict[str, Any]:
    """sd-vae-ft-mse's ``config.json`` (encoder 34.16 M, decoder 49.49 M parameters)."""
    return merged_config(_FULL, None, name=NAME)


def tiny_config() -> dict[str, Any]:
    """Four blocks (so latents are still R/8), narrow, for tests."""
    return merged_config(
        _FULL, {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}, name=NAME
    )


def build(config: Mapping[str, Any] | None = None) -> AutoencoderKL:
    cfg = merged_config(_FULL, config, name=NAME) if config is not None else full_config()
    return AutoencoderKL(**cfg)


def modernise_keys(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename pre-0.14 diffusers attention keys to today's names; other keys pass through."""
    out: StateDict = {}
    for key, value in state_dict.items():
        match = _DEPRECATED_ATTENTION.match(key)
        if match:
            prefix, old, kind = match.groups()
            key = f"{prefix}.{_RENAMED[old]}.{kind}"
            if value.ndim == 4 and value.shape[2:] == (1, 1):  # 1x1 conv form of a linear layer
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def find_weights(folder: Path) -> Path:
    """The weights file of an official VAE folder (safetensors preferred)."""
    return find_weights_file(
        folder, WEIGHTS_FILENAMES, name=NAME, fix="run `latentmuse weights download` or copy the sd-vae-ft-mse files there."
    )


def load(
    path: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> AutoencoderKL:
    """Load from the official folder (``config.json`` + weights) or from a weights file.

    Without ``config``, the folder's ``config.json`` is used when present, else the released one.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = find_weights(path) if path.is_dir() else path
    if config is None and (folder / CONFIG_FILENAME).is_file():
        config = read_json_config(folder / CONFIG_FILENAME, name=NAME)
    state_dict = modernise_keys(read_state_dict(weights))
    model = build_on_meta(lambda: build(config))
    return load_strict(model, state_dict, name=NAME, source=weights, dtype=dtype, device=device)
