"""Smoke weights: every network in its tiny configuration with seeded random weights.

The one source of them, used by ``run --weights smoke``, ``export --weights smoke`` and the tests, so a
graph exported from ``smoke`` holds exactly the weights a smoke run computes with. The same seed gives
the same weights on every machine; each model draws from its own stream (seed + a per-model offset).
"""

from __future__ import annotations

import torch
from torch import nn

from .layouts import layout

from .constants import SMOKE  # noqa: E402 - one spelling for the light modules too
SMOKE_WARNING = (
    "SMOKE WEIGHTS: seeded random weights in test-size configurations. The pipeline, frame accounting "
    "and timings are real; the generated mouth pixels are meaningless."
)


def randomise_zero_initialised(model: nn.Module) -> None:
    """Give zero-initialised projections (the motion modules' ``proj_out``) small random values.

    Otherwise whole sub-networks would contribute nothing and tests of them could not fail.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 1 and param.is_floating_point() and not param.any() and "norm" not in name:
                param.normal_(0.0, 0.02)


def smoke_model(key: str, seed: int = 0) -> nn.Module:
    """The tiny configuration of model ``key`` (a key of :mod:`latentmuse.models.layouts`), seeded."""
    module = layout(key).load_module()
    offset = sum(key.encode())  # a per-model offset so two models never share a random stream
    torch.manual_seed(seed + offset)
    model = module.build(module.tiny_config()).eval().requires_grad_(False)
    randomise_zero_initialised(model)
    return model


def model_for(key: str, weights, seed: int = 0, trust_torchscript=None) -> nn.Module:
    """Model ``key`` from a weights folder, or its seeded tiny configuration when ``weights`` is ``"smoke"``.

    The one place both export and the runtime get a PyTorch model from: graphs exported from ``smoke``
    at seed s are the very weights ``run --weights smoke`` (seed s) computes with. ``trust_torchscript``:
    the TorchScript archive the user vouches for (FAN; see :mod:`latentmuse.models.fan`).
    """
    if str(weights) == SMOKE:
        return smoke_model(key, seed)
    from pathlib import Path

    from .folder import load_model

    return load_model(Path(weights), key, trust_torchscript=trust_torchscript).eval().requires_grad_(False)
