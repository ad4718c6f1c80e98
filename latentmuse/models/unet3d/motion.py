"""AnimateDiff-style "Vanilla" motion modules: self-attention along time at every spatial position.

A motion module is a residual temporal transformer. For each sample and each of the h*w positions it
takes the F feature vectors of that position (one per frame) and lets them attend to each other, so
information flows between frames of a window. Sinusoidal temporal position encodings tell the
attention which frame is which; without them temporal self-attention would be blind to frame order.

The released LatentSync checkpoints carry these modules (417,137,600 parameters, a third of the
model) even though the source notes they were not used "in the final version"; they are part of the
trained weights and are applied exactly as the original applies them.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .config import MOTION_NORM_GROUPS, MotionConfig
from .frames import fold_frames, unfold_frames


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim) table: even channels sin(p * w_k), odd channels cos(p * w_k), w_k = 10000^(-2k/dim)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_len, dim)
    table[0, :, 0::2] = torch.sin(position * freq)
    table[0, :, 1::2] = torch.cos(position * freq)
    return table


class TemporalPositionalEncoding(nn.Module):
    """Adds a fixed sinusoidal code per frame index.

    ``pe`` is a *persistent* buffer because the original registers it so and the checkpoint carries
    it (40 ``pos_encoder.pe`` keys); it is loaded from the file like a weight.
    """

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("pe", sinusoidal_table(max_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, F, dim) with F <= max_len."""
        if x.shape[1] > self.max_len:
            raise ValueError(
                f"{x.shape[1]} frames exceed the temporal position encoding's {self.max_len}; use shorter windows."
            )
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalSelfAttention(Attention):
    """diffusers ``Attention`` over the frame axis, with an optional temporal position encoding.

    Subclassing keeps the parameter names (to_q/to_k/to_v without bias, to_out.0 with bias) and puts
    ``pos_encoder`` after them, as in the checkpoint.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, position_encoding: bool, max_len: int) -> None:
        super().__init__(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        self.pos_encoder = TemporalPositionalEncoding(dim, max_len) if position_encoding else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        """``x`` (B*F, S, dim) frame-folded tokens -> same shape, attention taken along F."""
        bf, s, d = x.shape
        b = bf // num_frames
        seq = x.reshape(b, num_frames, s, d).permute(0, 2, 1, 3).reshape(b * s, num_frames, d)
        if self.pos_encoder is not None:
            seq = self.pos_encoder(seq)
        out = super().forward(seq)
        return out.reshape(b, s, num_frames, d).permute(0, 2, 1, 3).reshape(bf, s, d)


class TemporalTransformerBlock(nn.Module):
    """Pre-LayerNorm temporal self-attentions (each with its own norm), then a GEGLU feed-forward.

    The position encoding is added to the *normalised* input of each attention only; the residual
    stream itself never carries it.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, cfg: MotionConfig) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [
                TemporalSelfAttention(
                    dim,
                    heads,
                    head_dim,
                    position_encoding=cfg.temporal_position_encoding,
                    max_len=cfg.temporal_position_encoding_max_len,
                )
                for _ in cfg.attention_block_types
            ]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in cfg.attention_block_types])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), num_frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """GroupNorm (32 groups, eps 1e-6, per frame) -> linear in -> blocks -> linear out, plus residual."""

    def __init__(self, channels: int, cfg: MotionConfig) -> None:
        super().__init__()
        heads = cfg.num_attention_heads
        head_dim = channels // heads // cfg.temporal_attention_dim_div
        inner = heads * head_dim
        self.norm = nn.GroupNorm(MOTION_NORM_GROUPS, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(inner, heads, head_dim, cfg) for _ in range(cfg.num_transformer_block)]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, F, H, W) -> same shape."""
        num_frames = x.shape[2]
        residual = fold_frames(x)
        bf, c, h, w = residual.shape
        tokens = self.proj_in(self.norm(residual).permute(0, 2, 3, 1).reshape(bf, h * w, c))
        for block in self.transformer_blocks:
            tokens = block(tokens, num_frames)
        out = self.proj_out(tokens).reshape(bf, h, w, c).permute(0, 3, 1, 2) + residual
        return unfold_frames(out, num_frames)


class MotionModule(nn.Module):
    """The original's ``VanillaTemporalModule`` (only a ``temporal_transformer`` child).

    With ``zero_initialize`` its ``proj_out`` starts at zero, so a freshly built module is the
    identity: that is how AnimateDiff inserts motion modules into a trained 2D UNet without changing it.
    """

    def __init__(self, channels: int, cfg: MotionConfig) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg)
        if cfg.zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)
