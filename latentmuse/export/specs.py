"""The registry of exportable graphs: one :class:`GraphSpec` per graph, keyed by name.

Tolerances (fp32 ONNX Runtime CPU vs PyTorch, ``|onnx - torch| <= atol + rtol * |torch|``) follow
Hugging Face Optimum where it has a value: 3e-4 for the VAE encoder/decoder, 1e-3 for diffusion UNets
and Whisper (deep stacks of attention + normalisation accumulate float re-association error of that
order at full size). The convolutional face networks get 1e-4 absolute and relative: their outputs
(logits, heatmaps, head maps) reach magnitudes of 10-100 at full size, where 1e-5 absolute is below
float32 resolution after reordered reductions.

Choices worth knowing:

* ``unet3d*`` take ``timestep`` as int64 (B,): the DDIM scheduler's timesteps are integers and the
  model projects them to sinusoids in float32 inside the graph; TensorRT >= 10 binds int64 inputs.
* ``s3fd`` is static at 1 x 3 x 640 x 640 (the detector's usual letterbox). The dynamo exporter does
  export it with dynamic H/W (verified), but its output sizes are expressions of H and W
  (fc7: H/32 + 4 ...) that a :class:`TensorSpec` cannot state yet; add a variant for other sizes.
* The variable batch dims (``N``/``B``) run 1..32, optimum 8 (the runtime's frame batch).
"""

from __future__ import annotations

import torch

from ..runtime import graphs
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
        make_wrapper=graphs.UNet3DGraph,
        inputs=(
            TensorSpec("sample", (batch, 13, _FRAMES, latent, latent)),
            TensorSpec("timestep", (batch,), torch.int64),
            TensorSpec("audio", (batch, _FRAMES, _AUDIO_TOKENS, _AUDIO_DIM)),
        ),
        outputs=(TensorSpec("eps", (batch, 4, _FRAMES, latent, latent)),),
        atol=1e-3,
        rtol=1e-3,
    )


_S3FD_SIZE = 640


def _s3fd_outputs(size: int) -> tuple[TensorSpec, ...]:
    fc7 = size // 32 + 4  # fc6 is a 3x3 convolution with padding 3
    sides = (size // 4, size // 8, size // 16, fc7, (fc7 - 1) // 2 + 1, (fc7 - 1) // 4 + 1)
    out = []
    for level, side in zip(wrappers.S3FD_LEVELS, sides):
        out.append(TensorSpec(f"conf_{level}", (1, 2, side, side)))
        out.append(TensorSpec(f"loc_{level}", (1, 4, side, side)))
    return tuple(out)


_SPECS = (
    GraphSpec(
        name="vae_encoder",
        model_key="vae",
        make_wrapper=graphs.VaeEncoderGraph,
        inputs=(TensorSpec("image", ("N", 3, 256, 256)),),
        outputs=(TensorSpec("latent", ("N", 4, 32, 32)),),
        dynamic=(_N,),
        atol=3e-4,
        rtol=3e-4,
    ),
    GraphSpec(
        name="vae_decoder",
        model_key="vae",
        make_wrapper=graphs.VaeDecoderGraph,
        inputs=(TensorSpec("latent", ("N", 4, 32, 32)),),
        outputs=(TensorSpec("image", ("N", 3, 256, 256)),),
        dynamic=(_N,),
        atol=3e-4,
        rtol=3e-4,
    ),
    GraphSpec(
        name="whisper_encoder",
        model_key="whisper",
        make_wrapper=graphs.WhisperEncoderGraph,
        inputs=(TensorSpec("mel", (1, 80, 3000)),),
        outputs=(TensorSpec("states", (1, 1500, 5, 384)),),
        atol=1e-3,
        rtol=1e-3,
    ),
    GraphSpec(
        name="musetalk_unet",
        model_key="musetalk_unet",
        make_wrapper=graphs.MuseTalkUNetGraph,
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
        make_wrapper=graphs.BiSeNetGraph,
        inputs=(TensorSpec("image", ("N", 3, 512, 512)),),
        outputs=(TensorSpec("logits", ("N", 19, 512, 512)),),
        dynamic=(_N,),
        atol=1e-4,
        rtol=1e-4,
    ),
)

GRAPHS: dict[str, GraphSpec] = {spec.name: spec for spec in _SPECS}
