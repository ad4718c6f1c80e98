"""The LatentSync 1.5 / 1.6 UNet3D: the top-level network and its strict loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..checkpoint import build_on_meta, load_strict, read_state_dict
from .blocks import DownBlock3D, MidBlock3D, UpBlock3D
from .config import UNet3DConfig, full_config, resolve_config, tiny_config
from .frames import FrameConv2d

__all__ = ["UNet3D", "build", "full_config", "load", "load_unet3d", "tiny_config"]


class UNet3D(nn.Module):
    """Predicts DDIM noise for a window of F frames from 13-channel latents and per-frame audio.

    ``forward(sample, timestep, encoder_hidden_states)``:

    * ``sample`` (B, in_channels, F, h, w): noisy latent 4 + mask 1 + masked-image latent 4 +
      reference latent 4;
    * ``timestep``: a python number, a 0-d tensor, or (B,) (one per sample; every frame shares it);
    * ``encoder_hidden_states``: audio (B, F, tokens, dim) or (B*F, tokens, dim), batch-major;

    returns the predicted noise (B, out_channels, F, h, w) as a plain tensor.

    Samples in a batch never mix (CFG batches the unconditional and the conditional pass): every
    normalisation is per sample and attention never crosses the batch axis. Frames of one sample do
    mix, through the ResNet GroupNorms, ``conv_norm_out`` and the motion modules.
    """

    def __init__(self, config: Mapping[str, Any] | UNet3DConfig | None = None) -> None:
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        channels = cfg.block_out_channels
        levels = len(channels)

        self.conv_in = FrameConv2d(cfg.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], cfg.time_embed_dim)

        # Registration order (down, up, mid) reproduces the original's state_dict order.
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(
                DownBlock3D(
                    cfg,
                    in_ch,
                    out_ch,
                    cross_attention=kind == "CrossAttnDownBlock3D",
                    motion=cfg.motion_in_down_block(i),
                    downsample=i < levels - 1,
                    heads=cfg.attention_head_dim[i],
                )
            )
        self.up_blocks = nn.ModuleList()
        rev_channels = channels[::-1]
        rev_heads = cfg.attention_head_dim[::-1]
        prev_ch = rev_channels[0]
        for i, kind in enumerate(cfg.up_block_types):
            self.up_blocks.append(
                UpBlock3D(
                    cfg,
                    rev_channels[min(i + 1, levels - 1)],
                    prev_ch,
                    rev_channels[i],
                    cross_attention=kind == "CrossAttnUpBlock3D",
                    motion=cfg.motion_in_up_block(i),
                    upsample=i < levels - 1,
                    heads=rev_heads[i],
                )
            )
            prev_ch = rev_channels[i]
        self.mid_block = MidBlock3D(cfg)

        # Plain GroupNorm on the 5D tensor: statistics span all frames, as in the original.
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, channels[0], eps=cfg.norm_eps)
        self.conv_out = FrameConv2d(channels[0], cfg.out_channels, kernel_size=3, padding=1)

    def _time_embedding(self, timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
        t = timestep if isinstance(timestep, torch.Tensor) else torch.tensor([timestep], device=device)
        t = t.to(device).reshape(-1)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"timestep has {t.shape[0]} values for a batch of {batch}; pass a scalar or (B,).")
        t = t.expand(batch)
        # The sinusoidal projection is computed in float32; the MLP runs in the model's dtype.
        return self.time_embedding(self.time_proj(t).to(self.conv_in.weight.dtype))

    @staticmethod
    def _frame_audio(audio: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        if audio.ndim == 4:
            if audio.shape[:2] != (batch, frames):
                raise ValueError(f"audio {tuple(audio.shape)} does not match batch {batch} x {frames} frames.")
            return audio.reshape(batch * frames, audio.shape[2], audio.shape[3])
        if audio.ndim != 3 or audio.shape[0] != batch * frames:
            raise ValueError(
                f"audio must be (B, F, tokens, dim) or (B*F, tokens, dim) with B*F = {batch * frames}, "
                f"got {tuple(audio.shape)}."
            )
        return audio

    def _inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(conv_in output, time embedding, per-frame audio) for one call."""
        if sample.ndim != 5 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample must be (B, {self.config.in_channels}, F, h, w), got {tuple(sample.shape)}.")
        batch, _, frames = sample.shape[:3]
        audio = self._frame_audio(encoder_hidden_states, batch, frames).to(sample.dtype)
        temb = self._time_embedding(timestep, batch, sample.device)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        return self.conv_in(sample), temb, audio

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *,
        return_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The predicted noise; with ``return_cache`` also DeepCache's feature (see :meth:`forward_shallow`)."""
        x, temb, audio = self._inputs(sample, timestep, encoder_hidden_states)
        height, width = sample.shape[-2:]

        skips: list[torch.Tensor] = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, audio)
            skips.extend(block_skips)

        x = self.mid_block(x, temb, audio)

        # When h or w is not a multiple of 2**(levels-1), upsampling must land on the skip's size.
        factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = height % factor != 0 or width % factor != 0
        last = len(self.up_blocks) - 1
        for i, block in enumerate(self.up_blocks[:last]):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[-2:]) if forward_size else None
            x = block(x, block_skips, temb, audio, size)
        final = self.up_blocks[last]
        for i in range(len(final.resnets) - 1):
            x = final.layer(i, x, skips.pop(), temb, audio)
        cache = x
        x = final.layer(len(final.resnets) - 1, x, skips.pop(), temb, audio)
        eps = self._head(x)
        return (eps, cache) if return_cache else eps

    def forward_shallow(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        cache: torch.Tensor,
    ) -> torch.Tensor:
        """DeepCache's cheap step: only ``conv_in``, the final decoder layer and the head run.

        ``cache`` (B, block_out_channels[0], F, h, w) is the input of the final up block's last layer
        from the last full step; its skip is this step's ``conv_in`` output, which is why the shallow
        path still sees the new noisy latent (DeepCache with cache_interval 3, branch 0).
        """
        x, temb, audio = self._inputs(sample, timestep, encoder_hidden_states)
        final = self.up_blocks[-1]
        if final.upsamplers is not None:
            raise ValueError("DeepCache needs a final up block without an upsampler")
        return self._head(final.layer(len(final.resnets) - 1, cache, x, temb, audio))


def build(config: Mapping[str, Any] | None = None) -> UNet3D:
    """A randomly initialised UNet3D (wrap in ``build_on_meta`` to get the structure only).

    Motion-module ``proj_out`` layers are zeroed when ``zero_initialize`` is set, as in the original.
    The original also zeroes ``conv_in`` and ``conv_out`` at construction (it then loads a trained
    checkpoint over them); that is not repeated here, because a network with a zero head is useless
    for the tests and tools that call ``build`` and every real use loads weights anyway.
    """
    return UNet3D(config)


def load_unet3d(
    checkpoint: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> UNet3D:
    """Load ``latentsync_unet.pt`` (``{"state_dict": ...}``) or a ``.safetensors`` file strictly.

    The model is built on the meta device and the checkpoint's tensors are assigned into it: no random
    initialisation and no second copy of the 5 GB of weights. Any missing, unexpected or wrong-shape
    key is a :class:`~latentmuse.errors.CheckpointError`; a pickle that needs code is refused unread.
    """
    cfg = resolve_config(config)  # config errors first: they do not need the file
    state_dict = read_state_dict(checkpoint)
    model = build_on_meta(lambda: UNet3D(cfg))
    return load_strict(model, state_dict, name="LatentSync UNet3D", source=checkpoint, dtype=dtype, device=device)


load = load_unet3d
