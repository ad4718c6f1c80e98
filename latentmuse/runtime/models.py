"""The networks a run needs, as runners, from a weights folder or from seeded random ("smoke") weights.

Every network call of the pipeline goes through one of these runners, which owns its device and
dtype: inputs are moved onto them and outputs come back as the runner made them. (A tensor that met a
module directly would break on a GPU; the tests prove it cannot happen by running every runner in
float64, where such a tensor fails on dtype exactly as it would on device.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import LatentmuseError
from ..models.folder import load_model
from ..models.layouts import LATENTSYNC_RESOLUTION, Sidecar, layout
from ..models.smoke import SMOKE, SMOKE_WARNING, smoke_model
from . import graphs
from .runners import Runner, TorchRunner

__all__ = ["SMOKE", "SMOKE_WARNING", "ModelSet", "load_torch_models", "resolve_device", "unet3d_weights"]

#: The networks every run loads (the MuseTalk generator is always there: it is the fallback).
CORE_MODELS = ("whisper", "vae", "musetalk_unet", "bisenet")


@dataclass
class ModelSet:
    """Runners by graph name, plus what a run needs to know about the weights behind them.

    ``runners`` always holds ``whisper_encoder``, ``whisper_post_ln``, ``vae_encoder``,
    ``vae_decoder``, ``musetalk_unet`` and ``bisenet``; with UNet3D weights also ``unet3d`` and its
    DeepCache pair ``unet3d_caching`` / ``unet3d_shallow``. ``unet3d_unavailable`` says why the UNet3D
    runners are absent when they were asked for (missing file, failed load).
    """

    runners: dict[str, Runner]
    weights_root: Path | None  # None for smoke weights
    latentsync_version: str = "1.5"
    unet3d_unavailable: str | None = None

    def __getitem__(self, name: str) -> Runner:
        return self.runners[name]

    @property
    def has_unet3d(self) -> bool:
        return "unet3d" in self.runners

    @property
    def native_resolution(self) -> int:
        """The crop size the folder's LatentSync version was trained at (1.5: 256, 1.6: 512)."""
        return LATENTSYNC_RESOLUTION[self.latentsync_version]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatentmuseError(f"device {device} requested but torch sees no CUDA device.", "use --device cpu.")
    return torch.device(device)


def unet3d_weights(weights: str | Path) -> Path | None:
    """The UNet3D checkpoint of a weights folder (None if absent); smoke weights always have one."""
    if str(weights) == SMOKE:
        return Path(SMOKE)
    root = Path(weights)
    if not root.is_dir():
        return None
    return layout("unet3d", Sidecar.read(root).latentsync_version).locate(root)


def load_torch_models(
    weights: str | Path,
    device: torch.device,
    seed: int = 0,
    *,
    unet3d: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ModelSet:
    """PyTorch runners for a run. ``weights`` is a folder or ``"smoke"``; ``unet3d`` asks for the
    LatentSync UNet3D too (its absence or a failed load is recorded, not raised: the MuseTalk
    generator serves those windows instead). ``dtype`` is float32 in production (float64 in tests)."""
    if str(weights) == SMOKE:
        modules = {key: smoke_model(key, seed) for key in CORE_MODELS}
        root, version = None, "1.5"
    else:
        root = Path(weights)
        if not root.is_dir():
            raise LatentmuseError(
                f"weights folder {root} does not exist.",
                "run `latentmuse weights download --dir DIR`, or pass --weights smoke for a plumbing test.",
            )
        version = Sidecar.read(root).latentsync_version
        modules = {key: load_model(root, key) for key in CORE_MODELS}

    def runner(name: str, graph: nn.Module) -> TorchRunner:
        return TorchRunner(name, graph, device, dtype)

    whisper_model = modules["whisper"]
    runners: dict[str, Runner] = {
        "whisper_encoder": runner("whisper_encoder", graphs.WhisperEncoderGraph(whisper_model)),
        "whisper_post_ln": runner("whisper_post_ln", graphs.WhisperPostLayerNormGraph(whisper_model)),
        "vae_encoder": runner("vae_encoder", graphs.VaeEncoderGraph(modules["vae"])),
        "vae_decoder": runner("vae_decoder", graphs.VaeDecoderGraph(modules["vae"])),
        "musetalk_unet": runner("musetalk_unet", graphs.MuseTalkUNetGraph(modules["musetalk_unet"])),
        "bisenet": runner("bisenet", graphs.BiSeNetGraph(modules["bisenet"])),
    }
    models = ModelSet(runners, root, version)
    if unet3d:
        unet, models.unet3d_unavailable = _load_unet3d(weights, seed)
        if unet is not None:
            for name, graph in (("unet3d", graphs.UNet3DGraph), ("unet3d_caching", graphs.UNet3DCachingGraph),
                                ("unet3d_shallow", graphs.UNet3DShallowGraph)):
                runners[name] = runner(name, graph(unet))
    return models


def _load_unet3d(weights: str | Path, seed: int) -> tuple[nn.Module | None, str | None]:
    """The UNet3D module, or None and the reason (a missing file, any error while loading it)."""
    if str(weights) == SMOKE:
        return smoke_model("unet3d", seed), None
    root = Path(weights)
    path = unet3d_weights(root)
    if path is None:
        entry = layout("unet3d", Sidecar.read(root).latentsync_version)
        return None, f"UNet3D weights not found ({' or '.join(entry.targets)} in {root})"
    try:
        return load_model(root, "unet3d"), None
    except Exception as exc:  # noqa: BLE001 - any load failure (bad pickle, zip, keys) is a fallback reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"UNet3D failed to load from {path}: {first}"
