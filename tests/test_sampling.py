"""DDIM as LatentSync samples: timesteps and steps against the closed form and against diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentmuse.runtime.sampling import DDIM, deepcache_full_steps, guide, uses_guidance

LATENTSYNC_SCHEDULER = {  # configs/scheduler_config.json of LatentSync 1.5 / 1.6
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None,
}


def closed_form_alphas_cumprod() -> np.ndarray:
    """prod_{s<=t} (1 - beta_s), beta_s = (sqrt(0.00085) + s (sqrt(0.012) - sqrt(0.00085)) / 999)^2, float64."""
    s = np.arange(1000)
    betas = (math.sqrt(0.00085) + s * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
    return np.cumprod(1 - betas)


def test_timesteps_for_20_steps_are_951_down_to_1():
    ddim = DDIM(20)
    assert ddim.timesteps.tolist() == list(range(951, 0, -50))
    assert ddim.timesteps.dtype == torch.int64


def test_alphas_match_the_closed_form():
    np.testing.assert_allclose(DDIM(20).alphas_cumprod.double().numpy(), closed_form_alphas_cumprod(), rtol=2e-6)


def test_a_step_equals_the_formula():
    ddim, a = DDIM(20), closed_form_alphas_cumprod()
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 16, 8, 8, generator=gen), torch.randn(2, 4, 16, 8, 8, generator=gen)
    for t, t_prev in ((951, 901), (501, 451), (1, None)):
        a_t = a[t]
        a_prev = a[t_prev] if t_prev is not None else a[0]  # set_alpha_to_one = False: the last step uses a_0
        x0 = (x.double() - math.sqrt(1 - a_t) * eps.double()) / math.sqrt(a_t)
        expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps.double()
        prev, pred_x0 = ddim.step(eps, t, x)
        torch.testing.assert_close(prev.double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred_x0.double(), x0, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("steps", [20, 25, 7])
def test_whole_loop_equals_diffusers_ddim(steps):
    from diffusers import DDIMScheduler

    reference = DDIMScheduler.from_config(LATENTSYNC_SCHEDULER)
    reference.set_timesteps(steps)
    ours = DDIM(steps)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    gen = torch.Generator().manual_seed(steps)
    a = b = torch.randn(1, 4, 16, 4, 4, generator=gen)
    for t in ours.timesteps.tolist():
        eps = torch.randn(1, 4, 16, 4, 4, generator=gen)
        expected = reference.step(eps, t, b)
        a_prev, a_x0 = ours.step(eps, t, a)
        assert torch.equal(a_prev, expected.prev_sample) and torch.equal(a_x0, expected.pred_original_sample)
        a, b = a_prev, expected.prev_sample


def test_guidance_combines_unconditional_first():
    uncond, cond = torch.full((1, 2), 1.0), torch.full((1, 2), 3.0)
    assert torch.equal(guide(torch.cat([uncond, cond]), 1.5), torch.full((1, 2), 4.0))  # 1 + 1.5 (3 - 1)
    assert not uses_guidance(1.0) and uses_guidance(1.5)


def test_deepcache_runs_every_third_step_in_full():
    assert deepcache_full_steps(8) == [True, False, False, True, False, False, True, False]
    assert sum(deepcache_full_steps(20)) == 7
    with pytest.raises(ValueError):
        deepcache_full_steps(5, 0)
