"""S3FD, the VGG-16 single-shot face detector MuseTalk uses to find the face box in every frame.

The definition follows the copy vendored in MuseTalk
(``musetalk/utils/face_detection/detection/sfd/net_s3fd.py``, itself face-alignment's), so the
official ``s3fd-619a316812.pth`` (a plain state dict) loads with exactly its own key names, and the
forward pass returns the same twelve raw maps (classification and box regression for six strides,
4 to 128) that the original decoding code expects. Decoding (anchors, NMS) is not part of the network
and lives with the detector pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import build_on_meta, load_strict, read_state_dict

#: Name of the released weights file.
OFFICIAL_FILENAME = "s3fd-619a316812.pth"

#: Convolutions per VGG stage (conv1_1..conv1_2, conv2_*, conv3_*, conv4_*, conv5_*).
_VGG_DEPTHS = (2, 2, 3, 3, 3)


@dataclass(frozen=True)
class S3FDConfig:
    """Widths of the network; the structure (layer count, strides, heads) is fixed.

    ``vgg_widths`` are the five VGG stages, ``fc_width`` fc6/fc7 (VGG's fully connected layers made convolutional),
    ``extra_widths`` the conv6_1, conv6_2, conv7_1, conv7_2 layers, and ``norm_scales`` the initial
    L2Norm weights of conv3_3, conv4_3, conv5_3 (trained values replace them on load).
    """

    vgg_widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    fc_width: int = 1024
    extra_widths: tuple[int, int, int, int] = (256, 512, 128, 256)
    norm_scales: tuple[float, float, float] = (10.0, 8.0, 5.0)

    @classmethod
    def full(cls) -> S3FDConfig:
        """The released detector (22,459,110 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> S3FDConfig:
        """Same layers and heads, widths divided by 16: for fast tests."""
        return cls(vgg_widths=(4, 8, 16, 32, 32), fc_width=64, extra_widths=(16, 32, 8, 16))


def full_config() -> S3FDConfig:
    return S3FDConfig.full()


def tiny_config() -> S3FDConfig:
    return S3FDConfig.tiny()


class L2Norm(nn.Module):
    """Per-position L2 normalisation over channels with a learned per-channel scale.

    conv3_3/conv4_3/conv5_3 activations have very different magnitudes from the deeper layers, so
    S3FD (after ParseNet) normalises them before the detection heads. ``eps`` is added *after* the
    square root, as in the original, so an all-zero position maps to zero rather than NaN.
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def _conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=padding)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


class S3FD(nn.Module):
    """The S3FD network. ``forward`` returns ``[cls1, reg1, ..., cls6, reg6]``.

    ``cls1`` has the "max-out background" applied (three background logits reduced to their maximum),
    so every ``cls`` map has two channels (background, face) and every ``reg`` map four.
    Attribute names are the checkpoint's key names, and the attributes are created in the original
    order so ``state_dict()`` lists keys in the same order as the released file.
    """

    def __init__(self, config: S3FDConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or S3FDConfig.full()
        w1, w2, w3, w4, w5 = config.vgg_widths
        fc = config.fc_width
        e61, e62, e71, e72 = config.extra_widths
        s3, s4, s5 = config.norm_scales

        self.conv1_1 = _conv3x3(3, w1)
        self.conv1_2 = _conv3x3(w1, w1)
        self.conv2_1 = _conv3x3(w1, w2)
        self.conv2_2 = _conv3x3(w2, w2)
        self.conv3_1 = _conv3x3(w2, w3)
        self.conv3_2 = _conv3x3(w3, w3)
        self.conv3_3 = _conv3x3(w3, w3)
        self.conv4_1 = _conv3x3(w3, w4)
        self.conv4_2 = _conv3x3(w4, w4)
        self.conv4_3 = _conv3x3(w4, w4)
        self.conv5_1 = _conv3x3(w4, w5)
        self.conv5_2 = _conv3x3(w5, w5)
        self.conv5_3 = _conv3x3(w5, w5)

        # fc6 pads by 3 with a 3x3 kernel (no dilation): its output is 4 pixels larger than its input,
        # which shifts the stride-32/64/128 anchors exactly as the released weights expect.
        self.fc6 = _conv3x3(w5, fc, padding=3)
        self.fc7 = _conv1x1(fc, fc)
        self.conv6_1 = _conv1x1(fc, e61)
        self.conv6_2 = _conv3x3(e61, e62, stride=2)
        self.conv7_1 = _conv1x1(e62, e71)
        self.conv7_2 = _conv3x3(e71, e72, stride=2)

        self.conv3_3_norm = L2Norm(w3, s3)
        self.conv4_3_norm = L2Norm(w4, s4)
        self.conv5_3_norm = L2Norm(w5, s5)

        # The stride-4 head predicts 3 background logits + 1 face logit (max-out background).
        self.conv3_3_norm_mbox_conf = _conv3x3(w3, 4)
        self.conv3_3_norm_mbox_loc = _conv3x3(w3, 4)
        self.conv4_3_norm_mbox_conf = _conv3x3(w4, 2)
        self.conv4_3_norm_mbox_loc = _conv3x3(w4, 4)
        self.conv5_3_norm_mbox_conf = _conv3x3(w5, 2)
        self.conv5_3_norm_mbox_loc = _conv3x3(w5, 4)
        self.fc7_mbox_conf = _conv3x3(fc, 2)
        self.fc7_mbox_loc = _conv3x3(fc, 4)
        self.conv6_2_mbox_conf = _conv3x3(e62, 2)
        self.conv6_2_mbox_loc = _conv3x3(e62, 4)
        self.conv7_2_mbox_conf = _conv3x3(e72, 2)
        self.conv7_2_mbox_loc = _conv3x3(e72, 4)

    def _stage(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        for i in range(1, _VGG_DEPTHS[stage - 1] + 1):
            h = F.relu(getattr(self, f"conv{stage}_{i}")(h))
        return h

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: (B, 3, H, W) BGR minus the VGG mean, as the original detector feeds it."""
        h = F.max_pool2d(self._stage(x, 1), 2, 2)
        h = F.max_pool2d(self._stage(h, 2), 2, 2)
        f3_3 = self._stage(h, 3)
        f4_3 = self._stage(F.max_pool2d(f3_3, 2, 2), 4)
        f5_3 = self._stage(F.max_pool2d(f4_3, 2, 2), 5)
        h = F.max_pool2d(f5_3, 2, 2)

        ffc7 = F.relu(self.fc7(F.relu(self.fc6(h))))
        f6_2 = F.relu(self.conv6_2(F.relu(self.conv6_1(ffc7))))
        f7_2 = F.relu(self.conv7_2(F.relu(self.conv7_1(f6_2))))

        f3_3 = self.conv3_3_norm(f3_3)
        f4_3 = self.conv4_3_norm(f4_3)
        f5_3 = self.conv5_3_norm(f5_3)

        cls1 = self.conv3_3_norm_mbox_conf(f3_3)
        bg0, bg1, bg2, face = torch.chunk(cls1, 4, dim=1)
        cls1 = torch.cat([torch.max(torch.max(bg0, bg1), bg2), face], dim=1)

        return [
            cls1,
            self.conv3_3_norm_mbox_loc(f3_3),
            self.conv4_3_norm_mbox_conf(f4_3),
            self.conv4_3_norm_mbox_loc(f4_3),
            self.conv5_3_norm_mbox_conf(f5_3),
            self.conv5_3_norm_mbox_loc(f5_3),
            self.fc7_mbox_conf(ffc7),
            self.fc7_mbox_loc(ffc7),
            self.conv6_2_mbox_conf(f6_2),
            self.conv6_2_mbox_loc(f6_2),
            self.conv7_2_mbox_conf(f7_2),
            self.conv7_2_mbox_loc(f7_2),
        ]


def build(config: S3FDConfig | None = None) -> S3FD:
    """The detector with PyTorch's default random initialisation (weights come from ``load``)."""
    return S3FD(config or full_config())


def load(
    path: str | Path,
    config: S3FDConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> S3FD:
    """Load ``s3fd-619a316812.pth`` (or a safetensors conversion) strictly, in eval mode."""
    config = config or full_config()
    model = build_on_meta(lambda: S3FD(config))
    state_dict = read_state_dict(path)
    return load_strict(model, state_dict, name="S3FD", source=path, dtype=dtype, device=device)
