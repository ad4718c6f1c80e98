"""Audio windows and frame scheduling against hand-worked examples (PIPELINE.md 1, 3, 4)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from latentmuse.runtime.audio import musetalk_audio_windows, positional_encoding, window_starts
from latentmuse.runtime.datagen import output_frame_count, ping_pong_schedule


def synthetic_states(steps: int, dim: int = 384) -> torch.Tensor:
    """states[t, s, :] = 10 t + s + 1: every (step, slot) is recognisable and never zero."""
    t = torch.arange(steps, dtype=torch.float32)[:, None, None]
    s = torch.arange(5, dtype=torch.float32)[None, :, None]
    return (10 * t + s + 1).expand(steps, 5, dim).clone()


def test_musetalk_windows_hand_worked_at_25_fps():
    states = synthetic_states(6)
    windows = musetalk_audio_windows(states, n_frames=3, fps=Fraction(25))
    assert windows.shape == (3, 50, 384)
    content = windows - positional_encoding()  # remove the PE to read the gathered values
    # Frame i covers steps [2i - 4, 2i + 6); steps outside [0, 6) are zeros. Row = step * 5 + slot.
    expected_steps = {0: [None] * 4 + [0, 1, 2, 3, 4, 5], 1: [None] * 2 + [0, 1, 2, 3, 4, 5, None, None],
                      2: [0, 1, 2, 3, 4, 5, None, None, None, None]}
    for frame, steps in expected_steps.items():
        for k, step in enumerate(steps):
            for slot in range(5):
                value = 0.0 if step is None else float(10 * step + slot + 1)
                torch.testing.assert_close(content[frame, k * 5 + slot], torch.full((384,), value), rtol=0, atol=1e-5)


def test_positional_encoding_formula():
    pe = positional_encoding()
    assert pe.shape == (50, 384)
    for p, k in ((0, 0), (1, 0), (7, 3), (49, 191)):
        angle = p / 10000 ** (2 * k / 384)
        assert pe[p, 2 * k].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[p, 2 * k + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_window_starts_use_exact_ntsc_rate():
    # 29.97 fps is 30000/1001: frame i starts at floor(50 i 1001 / 30000) - 4. MuseTalk's int(fps)=29
    # would drift by a whole step every ~17 s.
    starts = window_starts([0, 1, 3, 600, 17982], Fraction(30000, 1001))
    assert starts.tolist() == [-4, -3, 1, 997, 29995]  # 17982: floor(29999.97) - 4


def test_subset_of_frames_equals_slice_of_all():
    states = torch.randn(120, 5, 384)
    everything = musetalk_audio_windows(states, 40, Fraction(25))
    subset = musetalk_audio_windows(states, 40, Fraction(25), frames=[3, 17, 39])
    assert torch.equal(subset, everything[[3, 17, 39]])


def test_output_frame_count_is_floor_of_duration_times_fps():
    assert output_frame_count(16_000 * 5, Fraction(25)) == 125
    assert output_frame_count(16_000 * 5 - 1, Fraction(25)) == 124
    # 10 s at 29.97: 299.7 -> 299 frames (floor, exact arithmetic)
    assert output_frame_count(160_000, Fraction(30000, 1001)) == 299
    assert output_frame_count(100, Fraction(25)) == 0


def test_ping_pong_schedule():
    assert ping_pong_schedule(4, 11) == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2]
    assert ping_pong_schedule(5, 3) == [0, 1, 2]  # shorter audio cuts the video
    assert ping_pong_schedule(1, 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        ping_pong_schedule(0, 3)
    schedule = np.array(ping_pong_schedule(7, 1000))
    assert schedule.min() == 0 and schedule.max() == 6
    assert (np.abs(np.diff(schedule)) <= 1).all()  # never jumps: consecutive output frames are neighbours
