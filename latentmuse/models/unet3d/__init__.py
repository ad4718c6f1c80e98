"""LatentSync 1.5 / 1.6 UNet3D, written for latentmuse (state-dict compatible with the release).

Modules: ``config`` (the stage2.yaml ``model:`` section, validated), ``frames`` (per-frame 2D layers),
``resnet`` (ResNet block normalising over all frames), ``attention`` (per-frame spatial transformer
with audio cross-attention), ``motion`` (temporal transformers), ``blocks`` and ``model``.
"""

from .config import UNet3DConfig, full_config, resolve_config, tiny_config
from .model import UNet3D, build, load, load_unet3d

__all__ = ["UNet3D", "UNet3DConfig", "build", "full_config", "load", "load_unet3d", "resolve_config", "tiny_config"]
