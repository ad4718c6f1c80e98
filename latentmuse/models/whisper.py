"""The Whisper-tiny audio encoder, returning all five hidden states for both audio layouts.

MuseTalk and LatentSync both condition on Whisper-tiny's encoder, but on different versions of its
last hidden state: MuseTalk uses the output *after* the final LayerNorm, LatentSync the one *before*
it (docs/PIPELINE.md 3). One encoder pass serves both: :class:`WhisperStates` returns the embedding output
and the four layer outputs with slot 4 **pre**-LayerNorm, and :meth:`WhisperStates.post_layer_norm`
gives MuseTalk's version cheaply afterwards.

Two official file layouts load into the same transformers ``WhisperEncoder``:

* the transformers folder (openai/whisper-tiny): ``config.json`` + ``pytorch_model.bin`` or
  ``model.safetensors``; encoder keys are prefixed ``model.encoder.``, decoder keys are ignored;
* OpenAI's own ``tiny.pt`` (what LatentSync ships): ``{"dims": ..., "model_state_dict": ...}`` with
  OpenAI's names, mapped here one to one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .checkpoint import StateDict, as_state_dict, build_on_meta, find_weights_file, load_strict, read_checkpoint
from .configs import merged_config, read_json_config

NAME = "Whisper-tiny encoder"
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAMES = ("model.safetensors", "pytorch_model.bin")
OPENAI_FILENAME = "tiny.pt"
#: Whisper's encoder takes exactly 30 s of audio: 3000 mel frames in, 1500 states out (50 per second).
from .constants import MEL_FRAMES, STATES_PER_SECOND  # noqa: E402,F401 - re-exported
NUM_SLOTS = 5

# Only the encoder's hyper-parameters; WhisperConfig's defaults are whisper-tiny's for the rest.
_FULL: dict[str, Any] = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "activation_function": "gelu",
    "scale_embedding": False,
}


def full_config() -> dict[str, Any]:
    return merged_config(_FULL, None, name=NAME)


def tiny_config() -> dict[str, Any]:
    """Keeps d_model 384 (the UNets' audio width), 4 layers (5 slots) and 3000 mel frames; thin FFN."""
    return merged_config(_FULL, {"encoder_ffn_dim": 128, "encoder_attention_heads": 2}, name=NAME)


def _whisper_config(config: Mapping[str, Any]) -> WhisperConfig:
    # A transformers config.json carries decoder and generation keys too: keep only what we model.
    encoder_only = {k: v for k, v in config.items() if k in _FULL}
    cfg = WhisperConfig(**merged_config(_FULL, encoder_only, name=NAME))
    cfg._attn_implementation = "sdpa"
    return cfg


def build(config: Mapping[str, Any] | None = None) -> WhisperStates:
    return WhisperStates(WhisperEncoder(_whisper_config(config or _FULL)))


class WhisperStates(nn.Module):
    """Whisper encoder returning ``(B, 1500, 5, d)``: embeddings, layers 1-4, slot 4 before the final LN.

    The state dict is the transformers encoder's (``conv1.weight``, ``layers.0...``, ``layer_norm...``)
    so that official files map onto it key for key.
    """

    def __init__(self, encoder: WhisperEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[-1] != MEL_FRAMES:
            raise ValueError(f"Whisper's encoder needs mel (B, bins, {MEL_FRAMES}); got {tuple(mel.shape)}")
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        states = [x]
        for layer in enc.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        return torch.stack(states, dim=2)

    def post_layer_norm(self, states: torch.Tensor) -> torch.Tensor:
        """MuseTalk's layout: the same stack with slot 4 passed through the final LayerNorm."""
        return torch.cat([states[..., :-1, :], self.encoder.layer_norm(states[..., -1:, :])], dim=-2)


# OpenAI's whisper names -> transformers' names (encoder only).
_OPENAI_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.positional_embedding$", "embed_positions.weight"),
    (r"^encoder\.ln_post\.", "layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^encoder\.blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^encoder\.", ""),
)
_DECODER_PREFIXES = ("model.decoder.", "decoder.", "proj_out.")


def encoder_state_dict(state_dict: Mapping[str, torch.Tensor], *, openai: bool) -> StateDict:
    """The encoder's weights under ``WhisperStates`` names; decoder weights are dropped on purpose."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(_DECODER_PREFIXES):
            continue
        if openai:
            for pattern, repl in _OPENAI_RENAMES:
                new, n = re.subn(pattern, repl, key)
                if n:
                    key = new
                    break
        else:
            key = key.removeprefix("model.").removeprefix("encoder.")
        out["encoder." + key] = value
    return out


def find_weights(folder: Path) -> Path:
    return find_weights_file(
        folder, (*WEIGHTS_FILENAMES, OPENAI_FILENAME), name=NAME,
        fix="run `latentmuse weights download` or copy openai/whisper-tiny's files there.",
    )


def load(
    path: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> WhisperStates:
    """Load a transformers whisper folder, one of its weight files, or OpenAI's ``tiny.pt``."""
    path = Path(path)
    weights = find_weights(path) if path.is_dir() else path
    folder = weights.parent
    obj = read_checkpoint(weights)
    raw = as_state_dict(obj, source=weights, unwrap=("model_state_dict", "state_dict"))
    openai = any(k.startswith("encoder.blocks.") for k in raw)
    if config is None:
        if openai:
            config = _openai_dims_config(obj)
        elif (folder / CONFIG_FILENAME).is_file():
            config = read_json_config(folder / CONFIG_FILENAME, name=NAME)
    state_dict = encoder_state_dict(raw, openai=openai)
    model = build_on_meta(lambda: build(config))
    return load_strict(model, state_dict, name=NAME, source=weights, dtype=dtype, device=device)


def _openai_dims_config(obj: object) -> dict[str, Any] | None:
    """Map OpenAI's ``dims`` record (n_audio_state, ...) to our config keys, if the file has one."""
    dims = obj.get("dims") if isinstance(obj, Mapping) else None
    if not isinstance(dims, Mapping):
        return None
    return {
        "d_model": dims["n_audio_state"],
        "encoder_layers": dims["n_audio_layer"],
        "encoder_attention_heads": dims["n_audio_head"],
        "encoder_ffn_dim": 4 * dims["n_audio_state"],
        "num_mel_bins": dims["n_mels"],
        "max_source_positions": dims["n_audio_ctx"],
    }

