"""SyncNet v2, the audio-visual sync network behind the lip-sync scores LSE-C and LSE-D.

The definition follows ``SyncNetModel.S(num_layers_in_fc_layers=1024)`` of joonson/syncnet_python
(the network of Chung & Zisserman, "Out of time", 2016, as LatentSync and Wav2Lip evaluate with it):
a 2D convolutional stream over 13 MFCC coefficients x 20 steps (0.2 s of audio at 100 steps per
second) and a 3D convolutional stream over 5 consecutive 224 x 224 BGR mouth crops, each ending in two
fully connected layers that give a 1024-dimensional embedding. The distance between the two embeddings
is what the scores measure; computing them is not part of the network.

Both streams are ``nn.Sequential`` with the original's layer indices, so the released
``syncnet_v2.model`` (a plain state dict saved with ``torch.save``; distributed with LatentSync under
``auxiliary/``) loads with exactly its own key names: ``netcnnaud.0.weight`` ... ``netfclip.3.bias``.
The frames are fed as 0-255 floats without normalisation, as the original does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import build_on_meta, load_strict, read_state_dict
from .constants import SYNCNET_CROP as CROP
from .constants import SYNCNET_EMBEDDING as EMBEDDING
from .constants import SYNCNET_LIP_FRAMES as LIP_FRAMES
from .constants import SYNCNET_MFCC_COEFFICIENTS as MFCC_COEFFICIENTS
from .constants import SYNCNET_MFCC_STEPS as MFCC_STEPS

#: Name of the released weights file.
OFFICIAL_FILENAME = "syncnet_v2.model"
__all__ = ["CROP", "EMBEDDING", "LIP_FRAMES", "MFCC_COEFFICIENTS", "MFCC_STEPS", "OFFICIAL_FILENAME", "SyncNet",
           "SyncNetConfig", "build", "full_config", "load", "tiny_config"]


@dataclass(frozen=True)
class SyncNetConfig:
    """Widths of the network; the structure (layer count, kernels, strides, pools) is fixed.

    ``audio_widths`` and ``lip_widths`` are the six convolutions of each stream (the last one's width is
    the input of the stream's first linear layer), ``fc_width`` the hidden width of the two fully
    connected heads and ``embedding`` their output size.
    """

    audio_widths: tuple[int, int, int, int, int, int] = (64, 192, 384, 256, 256, 512)
    lip_widths: tuple[int, int, int, int, int, int] = (96, 256, 256, 256, 256, 512)
    fc_width: int = 512
    embedding: int = EMBEDDING

    @classmethod
    def full(cls) -> SyncNetConfig:
        """The released network (13,640,256 float values with the BatchNorm statistics)."""
        return cls()

    @classmethod
    def tiny(cls) -> SyncNetConfig:
        """Same layers, convolution widths divided by 8 and a small hidden width: for fast tests.

        The embedding keeps its released size, so the graphs' inputs and outputs have the same shapes
        for both configurations."""
        return cls(audio_widths=(8, 24, 48, 32, 32, 64), lip_widths=(12, 32, 32, 32, 32, 64), fc_width=64)


def full_config() -> SyncNetConfig:
    return SyncNetConfig.full()


def tiny_config() -> SyncNetConfig:
    return SyncNetConfig.tiny()


def _audio_stream(widths: tuple[int, ...]) -> nn.Sequential:
    """(N, 1, 13, 20) MFCC -> (N, widths[5], 1, 1); indices as in the original (convolutions at 0, 4, 8, 11, 14, 18)."""
    w1, w2, w3, w4, w5, w6 = widths
    return nn.Sequential(
        nn.Conv2d(1, w1, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        nn.BatchNorm2d(w1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
        nn.Conv2d(w1, w2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
        nn.BatchNorm2d(w2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
        nn.Conv2d(w2, w3, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(w3),
        nn.ReLU(inplace=True),
        nn.Conv2d(w3, w4, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(w4),
        nn.ReLU(inplace=True),
        nn.Conv2d(w4, w5, kernel_size=(3, 3), padding=(1, 1)),
        nn.BatchNorm2d(w5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
        nn.Conv2d(w5, w6, kernel_size=(5, 4), padding=(0, 0)),
        nn.BatchNorm2d(w6),
        nn.ReLU(),
    )


def _lip_stream(widths: tuple[int, ...]) -> nn.Sequential:
    """(N, 3, 5, 224, 224) BGR 0-255 -> (N, widths[5], 1, 1, 1); indices as in the original."""
    w1, w2, w3, w4, w5, w6 = widths
    return nn.Sequential(
        nn.Conv3d(3, w1, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
        nn.BatchNorm3d(w1),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(w1, w2, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.BatchNorm3d(w2),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.Conv3d(w2, w3, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(w3),
        nn.ReLU(inplace=True),
        nn.Conv3d(w3, w4, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(w4),
        nn.ReLU(inplace=True),
        nn.Conv3d(w4, w5, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(w5),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(w5, w6, kernel_size=(1, 6, 6), padding=0),
        nn.BatchNorm3d(w6),
        nn.ReLU(inplace=True),
    )


def _head(cin: int, hidden: int, embedding: int) -> nn.Sequential:
    """Linear, BatchNorm1d, ReLU, Linear: the stream's flattened feature -> its embedding."""
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, embedding))


class SyncNet(nn.Module):
    """SyncNet v2: ``forward_aud`` and ``forward_lip`` return each stream's (N, 1024) embedding, unnormalised.

    Submodules are created in the original's order (audio convolutions, audio head, lip head, lip
    convolutions), so ``state_dict()`` lists keys in the order of the released file.
    """

    def __init__(self, config: SyncNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SyncNetConfig.full()
        self.netcnnaud = _audio_stream(config.audio_widths)
        self.netfcaud = _head(config.audio_widths[-1], config.fc_width, config.embedding)
        self.netfclip = _head(config.lip_widths[-1], config.fc_width, config.embedding)
        self.netcnnlip = _lip_stream(config.lip_widths)

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 1, 13, 20) MFCC (coefficients x steps) -> (N, 1024)."""
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 3, 5, 224, 224) five consecutive BGR mouth crops, 0-255 floats -> (N, 1024)."""
        mid = self.netcnnlip(x)
        return self.netfclip(mid.reshape(mid.shape[0], -1))


def build(config: SyncNetConfig | None = None) -> SyncNet:
    """The network with PyTorch's default random initialisation (weights come from ``load``)."""
    return SyncNet(config or full_config())


def load(
    path: str | Path,
    config: SyncNetConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> SyncNet:
    """Load ``syncnet_v2.model`` (or a safetensors conversion) strictly, in eval mode."""
    config = config or full_config()
    model = build_on_meta(lambda: SyncNet(config))
    state_dict = read_state_dict(path)
    return load_strict(model, state_dict, name="SyncNet", source=path, dtype=dtype, device=device)
