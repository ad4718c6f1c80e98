"""BiSeNet face parsing (19 CelebAMask-HQ classes), used by MuseTalk to blend the generated mouth back.

The definition follows MuseTalk's vendored copy of face-parsing.PyTorch
(``musetalk/utils/face_parsing/model.py`` and ``resnet.py``): a ResNet-18 context path, attention
refinement modules, and a feature fusion module whose spatial input is the ResNet's stride-8 feature
(the original spatial path was removed). Key names and order match the released ``79999_iter.pth``.

Unlike the original, building the network never reads the ImageNet ``resnet18-5c106cde.pth``: that
file only initialised the backbone for training, and the trained ``79999_iter.pth`` already contains
every backbone weight, so requiring it would be a pointless extra download (and an unsafe pickle load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import build_on_meta, load_strict, read_state_dict

#: Name of the released weights file.
OFFICIAL_FILENAME = "79999_iter.pth"

#: CelebAMask-HQ labels in the order of the output channels.
CLASS_NAMES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip


@dataclass(frozen=True)
class BiSeNetConfig:
    """Widths of the network; the structure (ResNet-18 depth, strides, heads) is fixed.

    ``stage_widths`` are the four ResNet stages (``stem_width`` the 7x7 stem), ``context_width`` the
    attention-refinement and head convolutions, ``fuse_width`` the feature fusion module and main
    head, ``aux_width`` the hidden width of the two auxiliary heads.
    """

    num_classes: int = 19
    stem_width: int = 64
    stage_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks_per_stage: int = 2
    context_width: int = 128
    fuse_width: int = 256
    aux_width: int = 64

    @classmethod
    def full(cls) -> BiSeNetConfig:
        """The released face parser (13,300,416 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> BiSeNetConfig:
        """Same layers and heads, widths divided by 8: for fast tests."""
        return cls(stem_width=8, stage_widths=(8, 16, 32, 64), context_width=16, fuse_width=32, aux_width=8)


def full_config() -> BiSeNetConfig:
    return BiSeNetConfig.full()


def tiny_config() -> BiSeNetConfig:
    return BiSeNetConfig.tiny()


def _global_avg(x: torch.Tensor) -> torch.Tensor:
    # An average pool whose kernel is the whole feature map, as in the original: it sums in a
    # different order from ``mean``/``adaptive_avg_pool2d`` (about 1e-7 apart), and keeping the
    # original's order keeps our logits bit-identical to it.
    return F.avg_pool2d(x, kernel_size=tuple(x.shape[2:]))


class BasicBlock(nn.Module):
    """ResNet basic block (post-activation); the shortcut is projected when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the stride-8, 16 and 32 features."""

    def __init__(self, config: BiSeNetConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = config.stem_width
        for i, cout in enumerate(config.stage_widths, start=1):
            blocks = [BasicBlock(cin, cout, stride=1 if i == 1 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(config.blocks_per_stage - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class AttentionRefinementModule(nn.Module):
    """Reweights channels of a context feature by a sigmoid of its global average."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 plus a top-down path: returns (stride-8 ResNet feature, stride-8 context, stride-16 context)."""

    def __init__(self, config: BiSeNetConfig) -> None:
        super().__init__()
        c = config.context_width
        self.resnet = ResNet18(config)
        self.arm16 = AttentionRefinementModule(config.stage_widths[2], c)
        self.arm32 = AttentionRefinementModule(config.stage_widths[3], c)
        self.conv_head32 = ConvBNReLU(c, c)
        self.conv_head16 = ConvBNReLU(c, c)
        self.conv_avg = ConvBNReLU(config.stage_widths[3], c, kernel_size=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(_global_avg(feat32))
        # The original upsamples the 1x1 global context with nearest interpolation; broadcasting adds
        # exactly the same values.
        feat32_sum = self.arm32(feat32) + avg
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    """Fuses the spatial (ResNet stride-8) and context features with a squeeze-excitation residual."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, kernel_size=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser. ``forward`` returns ``(logits, aux16, aux32)``, each (B, classes, H, W).

    The original returns all three heads in every mode, and MuseTalk uses only the first, so the
    tuple is kept for parity; ``parse`` is the convenience that returns the per-pixel labels.
    """

    def __init__(self, config: BiSeNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BiSeNetConfig.full()
        c = config.context_width
        self.cp = ContextPath(config)
        self.ffm = FeatureFusionModule(config.stage_widths[1] + c, config.fuse_width)
        self.conv_out = BiSeNetOutput(config.fuse_width, config.fuse_width, config.num_classes)
        self.conv_out16 = BiSeNetOutput(c, config.aux_width, config.num_classes)
        self.conv_out32 = BiSeNetOutput(c, config.aux_width, config.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (B, 3, H, W) RGB, ImageNet-normalised (MuseTalk feeds 512x512)."""
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        feat_fuse = self.ffm(feat8, feat_cp8)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size, mode="bilinear", align_corners=True)

        return up(self.conv_out(feat_fuse)), up(self.conv_out16(feat_cp8)), up(self.conv_out32(feat_cp16))

    @torch.no_grad()
    def parse(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class index, (B, H, W) int64."""
        return self.forward(x)[0].argmax(dim=1)


def build(config: BiSeNetConfig | None = None) -> BiSeNet:
    """The parser with PyTorch's default random initialisation (weights come from ``load``)."""
    return BiSeNet(config or full_config())


def load(
    path: str | Path,
    config: BiSeNetConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BiSeNet:
    """Load ``79999_iter.pth`` (or a safetensors conversion) strictly, in eval mode."""
    config = config or full_config()
    model = build_on_meta(lambda: BiSeNet(config))
    state_dict = read_state_dict(path)
    return load_strict(model, state_dict, name="BiSeNet", source=path, dtype=dtype, device=device)
