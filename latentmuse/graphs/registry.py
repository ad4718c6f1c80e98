"""The registry of graphs: one :class:`GraphSpec` per graph, keyed by name (exported ones in ``GRAPHS``).

Tolerances (fp32 ONNX Runtime CPU vs PyTorch, ``|onnx - torch| <= atol + rtol * |torch|``) follow
Hugging Face Optimum where it has a value: 3e-4 for the VAE encoder/decoder, 1e-3 for diffusion UNets
and Whisper (deep stacks of attention + normalisation accumulate float re-association error of that
order at full size). The convolutional face networks get 1e-4 absolute and relative: their outputs
(logits, heatmaps, head maps) reach magnitudes of 10-100 at full size, where 1e-5 absolute is below
float32 resolution after reordered reductions.

SyncNet's two streams (``syncnet_audio``, ``syncnet_lip``) keep the face networks' 1e-4 / 1e-4, measured
at the released size (random weights scaled 1/sqrt(fan-in), random BatchNorm statistics): on the
validation inputs (N(0, 1)) the fp32 max-abs error is 3.6e-6 (audio) and 4.3e-6 (lip); on 0-255 frames,
the lip stream's real range, the embeddings reach ~120 and the error 2.1e-4, inside
``atol + rtol * |torch|`` element-wise at 0.87 of the bound (0.11 for the audio stream on MFCCs of
std 20). Their ``N`` runs 1..32 with optimum 20, the reference evaluation's batch.

Choices worth knowing:

* ``unet3d*`` take ``timestep`` as int64 (B,): the DDIM scheduler's timesteps are integers and the
  model projects them to sinusoids in float32 inside the graph; TensorRT >= 10 binds int64 inputs.
* ``s3fd`` is static at 1 x 3 x 640 x 640 (the detector's usual letterbox). The dynamo exporter does
  export it with dynamic H/W (verified), but its output sizes are expressions of H and W
  (fc7: H/32 + 4 ...) that a :class:`TensorSpec` cannot state yet; add a variant for other sizes.
* The variable batch dims (``N``/``B``) run 1..32, optimum 8 (the runtime's frame batch); callers chunk
  to a runner's :meth:`~latentmuse.runners.base.BaseRunner.max_batch` (a TensorRT profile's maximum).
* ``whisper_post_ln`` is the encoder's final LayerNorm on slot 4 alone (MuseTalk's layout), its own
  small graph so that an engines-only run needs no PyTorch Whisper (and no transformers) for it;
  ``T`` (encoder steps, 50 per second) is chunked to 1500 (30 s) per call.
* ``TORCH_ONLY`` holds ``s3fd_frames`` (S3FD on whole frames, as the front end runs it), the VAE pair at
  512 px (LatentSync 1.6; not exported yet) and DeepCache's pair (full step returning the feature to reuse, and the shallow
  step): they run on PyTorch; ``cache``'s channel count ``C`` is the model's first block width.
"""

from __future__ import annotations

import torch

from ..models.constants import (SYNCNET_CROP, SYNCNET_EMBEDDING, SYNCNET_LIP_FRAMES, SYNCNET_MFCC_COEFFICIENTS,
                                SYNCNET_MFCC_STEPS)
from . import wrappers
from .spec import DynamicDim, GraphSpec, TensorSpec

_N = DynamicDim("N", 1, 8, 32)
_B = DynamicDim("B", 1, 8, 32)

#: MuseTalk / LatentSync audio features: 50 tokens of 384 (whisper-tiny width) per frame.
_AUDIO_TOKENS, _AUDIO_DIM = 50, 384
_FRAMES = 16  # LatentSync window


def _unet3d(name: str, batch: int, latent: int) -> GraphSpec:
    return GraphSpec(
        name=name,
        model_key="unet3d",
        make_wrapper=wrappers.UNet3DGraph,
        inputs=_unet3d_inputs(batch, latent),
        outputs=(TensorSpec("eps", (batch, 4, _FRAMES, latent, latent)),),
        atol=1e-3,
        rtol=1e-3,
    )


def _unet3d_inputs(batch: int | str, latent: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("sample", (batch, 13, _FRAMES, latent, latent)),
        TensorSpec("timestep", (batch,), torch.int64),
        TensorSpec("audio", (batch, _FRAMES, _AUDIO_TOKENS, _AUDIO_DIM)),
    )


_B2 = DynamicDim("B", 1, 2, 2)
_C = DynamicDim("C", 1, 320, 4096)


def _deepcache(resolution: int) -> tuple[GraphSpec, GraphSpec]:
    latent = resolution // 8
    cache = TensorSpec("cache", ("B", "C", _FRAMES, latent, latent))
    eps = TensorSpec("eps", ("B", 4, _FRAMES, latent, latent))
    return (
        GraphSpec(name=f"unet3d_caching_{resolution}", model_key="unet3d", make_wrapper=wrappers.UNet3DCachingGraph,
                  inputs=_unet3d_inputs("B", latent), outputs=(eps, cache), dynamic=(_B2, _C), atol=1e-3, rtol=1e-3),
        GraphSpec(name=f"unet3d_shallow_{resolution}", model_key="unet3d", make_wrapper=wrappers.UNet3DShallowGraph,
                  inputs=(*_unet3d_inputs("B", latent), cache), outputs=(eps,), dynamic=(_B2, _C), atol=1e-3, rtol=1e-3),
    )


_S3FD_SIZE = 640

#: SyncNet v2: the reference scores embed 20 samples per batch.
_N_SYNCNET = DynamicDim("N", 1, 20, 32)


def _syncnet_pair() -> tuple[GraphSpec, GraphSpec]:
    """SyncNet's audio and lip streams, each to its (N, 1024) embedding."""
    embedding = (TensorSpec("embedding", ("N", SYNCNET_EMBEDDING)),)
    return (
        GraphSpec(name="syncnet_audio", model_key="syncnet", make_wrapper=wrappers.SyncNetAudioGraph,
                  inputs=(TensorSpec("mfcc", ("N", 1, SYNCNET_MFCC_COEFFICIENTS, SYNCNET_MFCC_STEPS)),), outputs=embedding,
                  dynamic=(_N_SYNCNET,), atol=1e-4, rtol=1e-4),
        GraphSpec(name="syncnet_lip", model_key="syncnet", make_wrapper=wrappers.SyncNetLipGraph,
                  inputs=(TensorSpec("frames", ("N", 3, SYNCNET_LIP_FRAMES, SYNCNET_CROP, SYNCNET_CROP)),), outputs=embedding,
                  dynamic=(_N_SYNCNET,), atol=1e-4, rtol=1e-4),
    )


def _s3fd_outputs(size: int) -> tuple[TensorSpec, ...]:
    fc7 = size // 32 + 4  # fc6 is a 3x3 convolution with padding 3
    sides = (size // 4, size // 8, size // 16, fc7, (fc7 - 1) // 2 + 1, (fc7 - 1) // 4 + 1)
    out = []
    for level, side in zip(wrappers.S3FD_LEVELS, sides):
        out.append(TensorSpec(f"conf_{level}", (1, 2, side, side)))
        out.append(TensorSpec(f"loc_{level}", (1, 4, side, side)))
    return tuple(out)


def _vae_pair(resolution: int, suffix: str = "") -> tuple[GraphSpec, GraphSpec]:
    """The VAE encoder and decoder graphs at ``resolution`` px crops (latents resolution / 8)."""
    image = TensorSpec("image", ("N", 3, resolution, resolution))
    latent = TensorSpec("latent", ("N", 4, resolution // 8, resolution // 8))
    return (
        GraphSpec(name=f"vae_encoder{suffix}", model_key="vae", make_wrapper=wrappers.VaeEncoderGraph,
                  inputs=(image,), outputs=(latent,), dynamic=(_N,), atol=3e-4, rtol=3e-4),
        GraphSpec(name=f"vae_decoder{suffix}", model_key="vae", make_wrapper=wrappers.VaeDecoderGraph,
                  inputs=(latent,), outputs=(image,), dynamic=(_N,), atol=3e-4, rtol=3e-4),
    )


_SPECS = (
    *_vae_pair(256),  # MuseTalk's and LatentSync 1.5's crops
    GraphSpec(
        name="whisper_encoder",
        model_key="whisper",
        make_wrapper=wrappers.WhisperEncoderGraph,
        inputs=(TensorSpec("mel", (1, 80, 3000)),),
        outputs=(TensorSpec("states", (1, 1500, 5, 384)),),
        atol=1e-3,
        rtol=1e-3,
    ),
    GraphSpec(
        name="whisper_post_ln",
        model_key="whisper",
        make_wrapper=wrappers.WhisperPostLayerNormGraph,
        inputs=(TensorSpec("states", ("T", 5, 384)),),
        outputs=(TensorSpec("normed", ("T", 5, 384)),),
        dynamic=(DynamicDim("T", 1, 1500, 1500),),
        atol=1e-4,
        rtol=1e-4,
    ),
    GraphSpec(
        name="musetalk_unet",
        model_key="musetalk_unet",
        make_wrapper=wrappers.MuseTalkUNetGraph,
        inputs=(TensorSpec("latents", ("B", 8, 32, 32)), TensorSpec("audio", ("B", _AUDIO_TOKENS, _AUDIO_DIM))),
        outputs=(TensorSpec("latent", ("B", 4, 32, 32)),),
        dynamic=(_B,),
        atol=1e-3,
        rtol=1e-3,
    ),
    _unet3d("unet3d_256", 2, 32),
    _unet3d("unet3d_256_b1", 1, 32),
    _unet3d("unet3d_512", 2, 64),
    _unet3d("unet3d_512_b1", 1, 64),
    GraphSpec(
        name="s3fd",
        model_key="s3fd",
        make_wrapper=wrappers.S3FDGraph,
        inputs=(TensorSpec("image", (1, 3, _S3FD_SIZE, _S3FD_SIZE)),),
        outputs=_s3fd_outputs(_S3FD_SIZE),
        atol=1e-4,
        rtol=1e-4,
    ),
    GraphSpec(
        name="fan68",
        model_key="fan68",
        make_wrapper=wrappers.FANGraph,
        inputs=(TensorSpec("image", ("N", 3, 256, 256)),),
        outputs=(TensorSpec("heatmaps", ("N", 68, 64, 64)),),
        dynamic=(_N,),
        atol=1e-4,
        rtol=1e-4,
    ),
    GraphSpec(
        name="bisenet",
        model_key="bisenet",
        make_wrapper=wrappers.BiSeNetGraph,
        inputs=(TensorSpec("image", ("N", 3, 512, 512)),),
        outputs=(TensorSpec("logits", ("N", 19, 512, 512)),),
        dynamic=(_N,),
        atol=1e-4,
        rtol=1e-4,
    ),
    *_syncnet_pair(),
)

#: S3FD as the face front end runs it: whole frames at their own size (face-alignment's way), so PyTorch
#: only; the exported ``s3fd`` is the 640 x 640 letterbox variant.
_S3FD_FRAMES = GraphSpec(
    name="s3fd_frames",
    model_key="s3fd",
    make_wrapper=wrappers.S3FDGraph,
    inputs=(TensorSpec("image", ("N", 3, "H", "W")),),
    outputs=tuple(TensorSpec(name, ("N", 2 if name.startswith("conf") else 4, "h", "w")) for name in wrappers.S3FD_OUTPUTS),
    dynamic=(DynamicDim("N", 1, 8, 32), DynamicDim("H", 32, 720, 4096), DynamicDim("W", 32, 1280, 4096)),
    atol=1e-4,
    rtol=1e-4,
)

#: The exported graphs (``latentmuse export`` writes, ``latentmuse build`` builds these).
GRAPHS: dict[str, GraphSpec] = {spec.name: spec for spec in _SPECS}
#: Graphs that only the PyTorch runner runs.
TORCH_ONLY: dict[str, GraphSpec] = {spec.name: spec for r in (256, 512) for spec in _deepcache(r)}
TORCH_ONLY[_S3FD_FRAMES.name] = _S3FD_FRAMES
TORCH_ONLY.update({spec.name: spec for spec in _vae_pair(512, "_512")})  # LatentSync 1.6's crops
ALL_GRAPHS: dict[str, GraphSpec] = {**GRAPHS, **TORCH_ONLY}


def unet3d_graph(resolution: int, guided: bool) -> str:
    """The UNet3D graph for a LatentSync run: batch 2 (unconditional + conditional) with guidance, else 1."""
    return f"unet3d_{resolution}" if guided else f"unet3d_{resolution}_b1"


def deepcache_graphs(resolution: int) -> tuple[str, str]:
    return f"unet3d_caching_{resolution}", f"unet3d_shallow_{resolution}"
