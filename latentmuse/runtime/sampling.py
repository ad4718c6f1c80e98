"""DDIM sampling as LatentSync runs it, without diffusers at run time (docs/GENERATORS.md, "Sampling").

LatentSync 1.5 / 1.6 sample with diffusers' ``DDIMScheduler`` under its ``configs/scheduler_config.json``:
scaled-linear betas from 0.00085 to 0.012 over 1000 training steps, ``set_alpha_to_one = False``,
``steps_offset = 1``, "leading" spacing, epsilon prediction, no clipping, eta 0. :class:`DDIM` is that
scheduler and nothing else: the same float32 ``alphas_cumprod`` table and the same arithmetic order, so
a step equals diffusers' to the last bit on the same device (tested against diffusers).

Also here: classifier-free guidance (:func:`guide`) and the DeepCache schedule (:func:`deepcache_full_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: LatentSync's scheduler configuration (``configs/scheduler_config.json``).
TRAIN_STEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
STEPS_OFFSET = 1

from .defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS  # noqa: E402,F401 - re-exported
DEEPCACHE_INTERVAL = 3


@dataclass(frozen=True)
class StepOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor

    def __iter__(self):  # ``prev, x0 = ddim.step(...)``
        return iter((self.prev_sample, self.pred_original_sample))


class DDIM:
    """Deterministic DDIM (eta = 0) over ``steps`` of LatentSync's 1000-step scaled-linear schedule.

    ``timesteps`` runs from high noise to low: for 20 steps 951, 901, ..., 1 (step ratio 50, offset 1).
    """

    def __init__(self, steps: int = DEFAULT_STEPS, *, train_steps: int = TRAIN_STEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END, steps_offset: int = STEPS_OFFSET) -> None:
        if not 1 <= steps <= train_steps:
            raise ValueError(f"steps must be in 1..{train_steps}, got {steps}")
        self.steps = steps
        self.train_steps = train_steps
        # float32 throughout, as diffusers builds the table: the step's arithmetic then matches it exactly.
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, train_steps, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.final_alpha_cumprod = self.alphas_cumprod[0]  # set_alpha_to_one = False
        self.step_ratio = train_steps // steps
        leading = (np.arange(0, steps) * self.step_ratio).round()[::-1].astype(np.int64)
        self.timesteps = torch.from_numpy(leading.copy() + steps_offset)

    def step(self, eps: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor) -> StepOutput:
        """x_t -> x_{t-1}: ``prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps`` with
        ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``; ``a_prev`` is ``alphas_cumprod[0]`` past the end."""
        t = int(timestep)
        prev_t = t - self.step_ratio
        alpha_t = self.alphas_cumprod[t].to(sample.device)
        alpha_prev = (self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod).to(sample.device)
        beta_t = 1 - alpha_t
        x0 = (sample - beta_t ** (0.5) * eps) / alpha_t ** (0.5)
        direction = (1 - alpha_prev) ** (0.5) * eps
        return StepOutput(alpha_prev ** (0.5) * x0 + direction, x0)


def uses_guidance(guidance: float) -> bool:
    """Classifier-free guidance runs only for a scale above 1 (at 1 it equals the conditional pass)."""
    return guidance > 1.0


def guide(eps: torch.Tensor, guidance: float) -> torch.Tensor:
    """Combine a CFG batch of two (unconditional first, then audio): ``u + g (a - u)``."""
    uncond, cond = eps.chunk(2)
    return uncond + guidance * (cond - uncond)


def deepcache_full_steps(steps: int, interval: int = DEEPCACHE_INTERVAL) -> list[bool]:
    """Which step indices run the whole UNet under DeepCache's uniform schedule: 0, interval, 2 interval, ...

    The other steps reuse the cached input of the final decoder layer (docs/GENERATORS.md, "DeepCache").
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    return [i % interval == 0 for i in range(steps)]
