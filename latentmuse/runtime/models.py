"""The networks a run needs, as runners, from a weights folder or from seeded random ("smoke") weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import LatentmuseError
from ..models import bisenet, musetalk_unet, vae, whisper
from ..models.folder import load_model
from . import graphs
from .runners import Runner, TorchRunner

SMOKE = "smoke"
SMOKE_WARNING = (
    "SMOKE WEIGHTS: seeded random weights in test-size configurations. The pipeline, frame accounting "
    "and timings are real; the generated mouth pixels are meaningless."
)


@dataclass
class ModelSet:
    whisper: Runner
    post_layer_norm: Callable[[torch.Tensor], torch.Tensor]
    vae_encoder: Runner
    vae_decoder: Runner
    musetalk_unet: Runner
    bisenet: nn.Module
    weights_root: Path | None  # None for smoke weights


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatentmuseError(f"device {device} requested but torch sees no CUDA device.", "use --device cpu.")
    return torch.device(device)


def load_torch_models(weights: str | Path, device: torch.device, seed: int = 0) -> ModelSet:
    """PyTorch runners for the MuseTalk path. ``weights`` is a folder or ``"smoke"``."""
    if str(weights) == SMOKE:
        modules = _smoke_modules(seed)
        root = None
    else:
        root = Path(weights)
        if not root.is_dir():
            raise LatentmuseError(
                f"weights folder {root} does not exist.",
                "run `latentmuse weights download --dir DIR`, or pass --weights smoke for a plumbing test.",
            )
        modules = {key: load_model(root, key) for key in ("whisper", "vae", "musetalk_unet", "bisenet")}
    vae_model = modules["vae"]
    whisper_model = modules["whisper"].to(device)
    return ModelSet(
        whisper=TorchRunner("whisper_encoder", graphs.WhisperEncoderGraph(whisper_model), device),
        post_layer_norm=whisper_model.post_layer_norm,
        vae_encoder=TorchRunner("vae_encoder", graphs.VaeEncoderGraph(vae_model), device),
        vae_decoder=TorchRunner("vae_decoder", graphs.VaeDecoderGraph(vae_model), device),
        musetalk_unet=TorchRunner("musetalk_unet", graphs.MuseTalkUNetGraph(modules["musetalk_unet"]), device),
        bisenet=modules["bisenet"].to(device).eval(),
        weights_root=root,
    )


def _smoke_modules(seed: int) -> dict[str, nn.Module]:
    """Tiny configurations, seeded: the same seed gives the same weights on every machine."""
    built = {}
    for offset, (key, module) in enumerate(
        (("whisper", whisper), ("vae", vae), ("musetalk_unet", musetalk_unet), ("bisenet", bisenet))
    ):
        torch.manual_seed(seed + offset)
        built[key] = module.build(module.tiny_config()).eval().requires_grad_(False)
    return built
