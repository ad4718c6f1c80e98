"""The networks as graphs with plain named tensor inputs and outputs: the one home of the wrappers.

Each wrapper folds the conventions around a network into the graph (the VAE's 0.18215 scale and
posterior mean, the decoder's affine + clamp, MuseTalk's t = 0), so that the PyTorch runner, the
ONNX export and a TensorRT engine all compute the same function of the same named tensors. Their
shapes are declared in :mod:`latentmuse.graphs.registry`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.constants import SCALING_FACTOR


class VaeEncoderGraph(nn.Module):
    """image (N, 3, R, R) in [-1, 1] -> latent (N, 4, R/8, R/8) = posterior mean x 0.18215.

    Both originals *sample* the posterior at inference; the mean is the deterministic choice (the
    sample's noise has std ~ exp(logvar/2), tiny for this VAE, and would make runs irreproducible).
    """

    input_names = ("image",)
    output_names = ("latent",)

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(image))
        mean = moments[:, : moments.shape[1] // 2]
        return mean * SCALING_FACTOR


class VaeDecoderGraph(nn.Module):
    """latent (N, 4, h, w) -> image (N, 3, 8h, 8w) in [0, 1] (1/0.18215, decode, x/2 + 0.5, clamp)."""

    input_names = ("latent",)
    output_names = ("image",)

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.decoder(self.post_quant_conv(latent / SCALING_FACTOR))
        return (image / 2 + 0.5).clamp(0, 1)


class WhisperEncoderGraph(nn.Module):
    """mel (1, 80, 3000) -> states (1, 1500, 5, 384), slot 4 before the final LayerNorm."""

    input_names = ("mel",)
    output_names = ("states",)

    def __init__(self, whisper: nn.Module) -> None:
        super().__init__()
        self.whisper = whisper

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.whisper(mel)


class WhisperPostLayerNormGraph(WhisperEncoderGraph):
    """states (T, 5, 384) -> normed: the same with slot 4 through the encoder's final LayerNorm (MuseTalk)."""

    input_names = ("states",)
    output_names = ("normed",)  # ONNX names are single-assignment: not ``states`` again

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.whisper.post_layer_norm(states)


class MuseTalkUNetGraph(nn.Module):
    """latents (B, 8, 32, 32), audio (B, 50, 384) with PE -> clean latent (B, 4, 32, 32) at t = 0."""

    input_names = ("latents", "audio")
    output_names = ("latent",)

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        t = torch.zeros((), dtype=torch.long, device=latents.device)
        return self.unet(latents, t, encoder_hidden_states=audio).sample


class BiSeNetGraph(nn.Module):
    """image (N, 3, 512, 512) ImageNet-normalised RGB -> logits (N, 19, 512, 512)."""

    input_names = ("image",)
    output_names = ("logits",)

    def __init__(self, bisenet: nn.Module) -> None:
        super().__init__()
        self.bisenet = bisenet

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.bisenet(image)[0]


class UNet3DGraph(nn.Module):
    """sample (B, 13, 16, h, w), timestep (B,) int64, audio (B, 16, 50, 384) -> eps (B, 4, 16, h, w).

    The batch is 2 for classifier-free guidance (unconditional + conditional in one call) or 1 without.
    Exported graphs are static (the model's reshapes bake the shapes in); PyTorch runs any B and F <= 24.
    """

    input_names = ("sample", "timestep", "audio")
    output_names = ("eps",)

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, audio)


class UNet3DCachingGraph(UNet3DGraph):
    """DeepCache's full step: as :class:`UNet3DGraph`, plus the (B, 320, F, h, w) feature to reuse."""

    output_names = ("eps", "cache")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.unet(sample, timestep, audio, return_cache=True)


class UNet3DShallowGraph(UNet3DGraph):
    """DeepCache's cheap step: conv_in, the final decoder layer on ``cache`` and the head."""

    input_names = ("sample", "timestep", "audio", "cache")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, audio: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        return self.unet.forward_shallow(sample, timestep, audio, cache)


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
        out = self.fan(image)
        return out[-1] if isinstance(out, (list, tuple)) else out


class SyncNetAudioGraph(nn.Module):
    """mfcc (N, 1, 13, 20) (coefficients x 0.2 s of steps) -> embedding (N, 1024), SyncNet's audio stream."""

    input_names = ("mfcc",)
    output_names = ("embedding",)

    def __init__(self, syncnet: nn.Module) -> None:
        super().__init__()
        self.syncnet = syncnet

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.syncnet.forward_aud(mfcc)


class SyncNetLipGraph(SyncNetAudioGraph):
    """frames (N, 3, 5, 224, 224) five BGR mouth crops, 0-255 floats -> embedding (N, 1024), the lip stream."""

    input_names = ("frames",)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.syncnet.forward_lip(frames)
