"""The UNet3D residual block, whose GroupNorms see all frames of a window at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .frames import FrameConv2d


class ResnetBlock3D(nn.Module):
    """diffusers' ``ResnetBlock2D`` (pre-norm, additive time embedding) inflated to video.

    The convolutions run per frame, but both GroupNorms are plain ``nn.GroupNorm`` on the 5D tensor,
    so their mean and variance are taken over (channels of the group, F, H, W): every frame of the
    16-frame window is normalised with the same statistics. That is how LatentSync was trained (its
    ``use_inflated_groupnorm`` is off), it is one of the two places where frames interact (the motion
    modules are the other), and it is why a window's output depends on all of its frames. A
    diffusers ``ResnetBlock2D`` cannot be reused: it would normalise each frame on its own.

    Parameter names and registration order match the original (norm1, conv1, time_emb_proj, norm2,
    conv2, conv_shortcut) so ``state_dict()`` lists keys in the checkpoint's order.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = FrameConv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.conv2 = FrameConv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = (
            FrameConv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, F, H, W); ``temb`` (B, temb_channels), shared by every frame of a sample."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        # Dropout is 0 in every released config and this is an inference-only module: omitted.
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = shortcut + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out
