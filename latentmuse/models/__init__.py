"""PyTorch definitions and strict, safe checkpoint loaders for every network latentmuse runs.

Each model module exposes the same small surface (diffusers' "a model is a config plus weights"):

* ``full_config()`` / ``tiny_config()``: the released architecture (the default everywhere) and a
  small one with the same structure for fast tests;
* ``build(config=None)``: the module, randomly initialised (wrap in ``build_on_meta`` for structure);
* ``load(path, config=None, *, dtype=None, device=None)``: build on meta, read the official file
  safely, load strictly, return the module in eval mode.

Nothing is imported eagerly: ``latentmuse.models.layouts`` (what a weights folder holds) must not pull
in diffusers and transformers, which the network modules need; a run whose graphs come from engines
imports neither (docs/ARCHITECTURE.md, "Lean imports").
"""

from __future__ import annotations

import importlib

_MODULES = ("bisenet", "fan", "musetalk_unet", "s3fd", "syncnet", "unet3d", "vae", "whisper", "folder")
_FUNCTIONS = {
    "check_folder": ("folder", "check_folder"), "download": ("folder", "download"), "load_model": ("folder", "load_model"),
    "load_unet3d": ("unet3d", "load_unet3d"), "load_musetalk_unet": ("musetalk_unet", "load"), "load_vae": ("vae", "load"),
    "load_whisper": ("whisper", "load"), "load_s3fd": ("s3fd", "load"), "load_fan": ("fan", "load"),
    "load_bisenet": ("bisenet", "load"), "load_syncnet": ("syncnet", "load"),
}

__all__ = sorted({*_MODULES, *_FUNCTIONS} - {"folder"})


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
