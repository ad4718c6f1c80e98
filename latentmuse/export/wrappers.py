"""Graph wrappers that :mod:`latentmuse.runtime.graphs` does not have yet (S3FD, FAN).

Same rules as there: a small ``nn.Module`` with plain named tensor inputs and outputs.
"""

from __future__ import annotations

import torch
from torch import nn


#: S3FD's detection heads, in the order the network returns them (score then box per level).
S3FD_LEVELS = ("3_3", "4_3", "5_3", "fc7", "6_2", "7_2")
S3FD_OUTPUTS = tuple(name for level in S3FD_LEVELS for name in (f"conf_{level}", f"loc_{level}"))


class S3FDGraph(nn.Module):
    """image (1, 3, H, W) BGR minus the VGG mean -> 12 head maps (conf_*: 2 channels, loc_*: 4)."""

    input_names = ("image",)
    output_names = S3FD_OUTPUTS

    def __init__(self, s3fd: nn.Module) -> None:
        super().__init__()
        self.s3fd = s3fd

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.s3fd(image))


class FANGraph(nn.Module):
    """image (N, 3, 256, 256) RGB in [0, 1] -> heatmaps (N, 68, 64, 64) of the last hourglass stack."""

    input_names = ("image",)
    output_names = ("heatmaps",)

    def __init__(self, fan: nn.Module) -> None:
        super().__init__()
        self.fan = fan

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fan(image)[-1]
