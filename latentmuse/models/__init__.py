"""PyTorch definitions and strict, safe checkpoint loaders for every network latentmuse runs.

Each model module exposes the same small surface (diffusers' "a model is a config plus weights"):

* ``full_config()`` / ``tiny_config()``: the released architecture (the default everywhere) and a
  small one with the same structure for fast tests;
* ``build(config=None)``: the module, randomly initialised (wrap in ``build_on_meta`` for structure);
* ``load(path, config=None, *, dtype=None, device=None)``: build on meta, read the official file
  safely, load strictly, return the module in eval mode.
"""

from . import bisenet, fan, musetalk_unet, s3fd, unet3d, vae, whisper
from .folder import check_folder, download, load_model
from .unet3d import load_unet3d

load_musetalk_unet = musetalk_unet.load
load_vae = vae.load
load_whisper = whisper.load
load_s3fd = s3fd.load
load_fan = fan.load
load_bisenet = bisenet.load

__all__ = [
    "bisenet", "check_folder", "download", "fan", "load_bisenet", "load_fan", "load_model", "load_musetalk_unet",
    "load_s3fd", "load_unet3d", "load_vae", "load_whisper", "musetalk_unet", "s3fd", "unet3d", "vae", "whisper",
]
