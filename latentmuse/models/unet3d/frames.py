"""Per-frame 2D layers on video tensors laid out (B, C, F, H, W).

LatentSync "inflates" a 2D UNet: every convolution, resampling and spatial attention is the 2D layer
applied to each frame independently. Doing that by folding frames into the batch, (B, C, F, H, W) ->
(B*F, C, H, W) batch-major, keeps the 2D parameter names and shapes (so the UNet's spatial weights are
2D weights) and keeps the graph made of ordinary 2D convolutions, which ONNX/TensorRT run best.
"""

from __future__ import annotations

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from torch import nn


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), batch-major (frame index varies fastest)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W); the inverse of :func:`fold_frames`."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame (the original's ``InflatedConv3d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


class FrameDownsample(Downsample2D):
    """diffusers' strided-conv ``Downsample2D`` (parameter ``conv``) applied per frame."""

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__(channels, use_conv=True, out_channels=channels, padding=padding, name="op")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


class FrameUpsample(Upsample2D):
    """diffusers' nearest x2 + conv ``Upsample2D`` (parameter ``conv``) applied per frame.

    ``output_size`` (H, W) forces the interpolation size when the latent is not a multiple of 8.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, use_conv=True, out_channels=channels)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:  # type: ignore[override]
        return unfold_frames(super().forward(fold_frames(x), output_size), x.shape[2])
