"""Encoder, middle and decoder blocks of the UNet3D.

Within a layer the order is always: ResNet (frames share GroupNorm statistics) -> spatial transformer
with audio cross-attention (per frame) -> motion module (across frames). The mid block runs
ResNet -> [transformer -> (motion) -> ResNet]. Submodules are registered as in the original
(``attentions``, ``resnets``, ``motion_modules``, then the resampler) so that ``state_dict()`` lists
keys in the checkpoint's order; a level without motion modules has an empty ``motion_modules``.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import SpatialTransformer
from .config import UNet3DConfig
from .frames import FrameDownsample, FrameUpsample
from .motion import MotionModule
from .resnet import ResnetBlock3D


def _transformers(cfg: UNet3DConfig, channels: int, heads: int, count: int) -> nn.ModuleList:
    return nn.ModuleList(
        [
            SpatialTransformer(
                channels, heads, cfg.cross_attention_dim, groups=cfg.norm_num_groups, add_audio_layer=cfg.add_audio_layer
            )
            for _ in range(count)
        ]
    )


def _resnet(cfg: UNet3DConfig, in_channels: int, out_channels: int, scale: float = 1.0) -> ResnetBlock3D:
    return ResnetBlock3D(
        in_channels,
        out_channels,
        cfg.time_embed_dim,
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
        output_scale_factor=scale,
    )


class DownBlock3D(nn.Module):
    """``layers_per_block`` ResNet layers (optionally each followed by a transformer and a motion
    module), then a per-frame strided-conv downsample unless this is the deepest level."""

    def __init__(
        self,
        cfg: UNet3DConfig,
        in_channels: int,
        out_channels: int,
        *,
        cross_attention: bool,
        motion: bool,
        downsample: bool,
        heads: int,
    ) -> None:
        super().__init__()
        n = cfg.layers_per_block
        self.attentions = _transformers(cfg, out_channels, heads, n) if cross_attention else None
        self.resnets = nn.ModuleList(
            [_resnet(cfg, in_channels if i == 0 else out_channels, out_channels) for i in range(n)]
        )
        self.motion_modules = nn.ModuleList([MotionModule(out_channels, cfg.motion) for _ in range(n)] if motion else [])
        self.downsamplers = nn.ModuleList([FrameDownsample(out_channels, cfg.downsample_padding)]) if downsample else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, audio)
            if len(self.motion_modules):
                x = self.motion_modules[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock3D(nn.Module):
    """The original's ``UNetMidBlock3DCrossAttn``: ResNet, transformer, (motion module), ResNet."""

    def __init__(self, cfg: UNet3DConfig) -> None:
        super().__init__()
        c = cfg.block_out_channels[-1]
        scale = cfg.mid_block_scale_factor
        self.attentions = _transformers(cfg, c, cfg.attention_head_dim[-1], 1)
        self.resnets = nn.ModuleList([_resnet(cfg, c, c, scale), _resnet(cfg, c, c, scale)])
        self.motion_modules = nn.ModuleList([MotionModule(c, cfg.motion)] if cfg.motion_in_mid_block else [])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, audio)
        if len(self.motion_modules):
            x = self.motion_modules[0](x)
        return self.resnets[1](x, temb)


class UpBlock3D(nn.Module):
    """``layers_per_block + 1`` layers, each concatenating one encoder skip (last in, first out) onto
    the channels before its ResNet, then a per-frame nearest x2 upsample + conv unless final."""

    def __init__(
        self,
        cfg: UNet3DConfig,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        *,
        cross_attention: bool,
        motion: bool,
        upsample: bool,
        heads: int,
    ) -> None:
        super().__init__()
        n = cfg.layers_per_block + 1
        self.attentions = _transformers(cfg, out_channels, heads, n) if cross_attention else None
        resnets = []
        for i in range(n):
            skip_channels = in_channels if i == n - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(_resnet(cfg, resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.motion_modules = nn.ModuleList([MotionModule(out_channels, cfg.motion) for _ in range(n)] if motion else [])
        self.upsamplers = nn.ModuleList([FrameUpsample(out_channels)]) if upsample else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        audio: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = self.layer(i, x, skips.pop(), temb, audio)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x

    def layer(self, i: int, x: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Layer ``i``: ResNet on ``cat(x, skip)``, then the transformer and the motion module if any.

        Exposed for DeepCache, which re-runs only the last layer of the final block on a cached ``x``.
        """
        x = self.resnets[i](torch.cat([x, skip], dim=1), temb)
        if self.attentions is not None:
            x = self.attentions[i](x, audio)
        if len(self.motion_modules):
            x = self.motion_modules[i](x)
        return x
