"""Per-frame spatial transformer with audio cross-attention.

Each frame is an independent image here: self-attention runs over the h*w positions of one frame, and
cross-attention lets that frame's positions attend to *that frame's* 50 audio tokens. The audio for a
window therefore arrives as (B*F, 50, 384) in the same batch-major order in which frames are folded
into the batch, which is what makes frame i hear audio i.

The attention layers are diffusers' ``Attention`` (default ``AttnProcessor2_0``:
``F.scaled_dot_product_attention``, exportable, no xformers) and ``FeedForward`` (GEGLU); their names
and numerics are those of the original. The block itself is our own: the original registers ``ff``
before ``norm3`` (diffusers the other way round), and ``state_dict()`` order must match the checkpoint.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .frames import fold_frames, unfold_frames


class SpatialTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, audio cross-attention (optional), GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, *, add_audio_layer: bool) -> None:
        super().__init__()
        head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        if add_audio_layer:
            self.norm2: nn.LayerNorm | None = nn.LayerNorm(dim)
            self.attn2: Attention | None = Attention(
                query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=head_dim, bias=False
            )
        else:
            self.norm2 = None
            self.attn2 = None
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``x`` (B*F, h*w, dim); ``audio`` (B*F, tokens, cross_attention_dim)."""
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and self.norm2 is not None:
            x = self.attn2(self.norm2(x), encoder_hidden_states=audio) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """The original's ``Transformer3DModel``: diffusers' ``Transformer2DModel`` applied per frame.

    GroupNorm (eps 1e-6, as in diffusers) normalises each frame separately, unlike the ResNet blocks;
    ``proj_in``/``proj_out`` are 1x1 convolutions (``use_linear_projection`` is off).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        cross_attention_dim: int,
        *,
        groups: int,
        add_audio_layer: bool,
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [SpatialTransformerBlock(channels, heads, cross_attention_dim, add_audio_layer=add_audio_layer)]
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, F, H, W); ``audio`` (B*F, tokens, dim). Returns (B, C, F, H, W)."""
        num_frames = x.shape[2]
        residual = fold_frames(x)
        bf, c, h, w = residual.shape
        tokens = self.proj_in(self.norm(residual)).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, audio)
        out = self.proj_out(tokens.reshape(bf, h, w, c).permute(0, 3, 1, 2)) + residual
        return unfold_frames(out, num_frames)
