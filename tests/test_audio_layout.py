"""Audio windows and frame scheduling against hand-worked examples (docs/PIPELINE.md 1, 3, 4)."""

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


# ------------------------------------------------------------------------------ LatentSync layout


def test_latentsync_windows_hand_worked_with_clamping_at_both_ends():
    from latentmuse.runtime.audio import latentsync_audio_windows

    states = synthetic_states(6)
    windows = latentsync_audio_windows(states, n_frames=3, fps=Fraction(25))
    assert windows.shape == (3, 50, 384)
    # Frame i covers steps [2i - 4, 2i + 6), each clamped to [0, 5]; no PE, no zeros.
    expected_steps = {0: [0, 0, 0, 0, 0, 1, 2, 3, 4, 5], 1: [0, 0, 0, 1, 2, 3, 4, 5, 5, 5], 2: [0, 1, 2, 3, 4, 5, 5, 5, 5, 5]}
    for frame, steps in expected_steps.items():
        for k, step in enumerate(steps):
            for slot in range(5):
                assert torch.equal(windows[frame, k * 5 + slot], torch.full((384,), float(10 * step + slot + 1)))
    subset = latentsync_audio_windows(states, 3, Fraction(25), frames=[2, 0, 2])
    assert torch.equal(subset, windows[[2, 0, 2]])


def test_mel_filter_bank_equals_transformers_slaney_filters():
    from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

    from latentmuse.runtime.audio import mel_filter_bank

    reference = hf_mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                                   sampling_rate=16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filter_bank().numpy(), reference.T, rtol=1e-5, atol=1e-8)


def numpy_log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's log-mel written independently with numpy: reflect-padded frames, periodic Hann, rfft."""
    from latentmuse.runtime.audio import mel_filter_bank

    padded = np.pad(audio.astype(np.float64), 200, mode="reflect")
    n_frames = 1 + (len(padded) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[i * 160 : i * 160 + 400] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, 201)
    mel = mel_filter_bank().numpy().astype(np.float64) @ power[:-1].T
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0


def test_latentsync_log_mel_is_whisper_log_mel_normalised_over_the_whole_file():
    from latentmuse.runtime.audio import latentsync_log_mel

    rng = np.random.default_rng(0)
    t = np.arange(16_000 * 2) / 16_000
    audio = (0.5 * np.sin(2 * np.pi * 440 * t) * (t < 1) + 1e-4 * rng.standard_normal(t.size)).astype(np.float32)
    mel = latentsync_log_mel(audio)
    assert mel.shape == (80, len(audio) // 160)
    np.testing.assert_allclose(mel.numpy(), numpy_log_mel(audio), atol=2e-4)
    # The floor is the whole file's max - 8 (in log10 units): the quiet second half sits on it.
    floor = (mel.max().item() * 4 - 4 - 8 + 4) / 4
    assert mel[:, 150:].min().item() == pytest.approx(floor, abs=1e-5)


class RecordingEncoder:
    """A stand-in whisper runner: states[t, s, :] = mean of mel frames 2t, 2t+1 + s; records its inputs."""

    name, device = "whisper_encoder", torch.device("cpu")

    def __init__(self) -> None:
        self.mels: list[torch.Tensor] = []

    def __call__(self, inputs):
        mel = inputs["mel"]
        self.mels.append(mel.clone())
        per_step = mel[0].mean(0).reshape(1500, 2).mean(1)  # (1500,)
        states = per_step[:, None, None] + torch.arange(5.0)[None, :, None]
        return {"states": states.expand(1500, 5, 384)[None].clone()}


def test_latentsync_states_pad_each_segment_with_zero_log_mel_and_keep_half_its_frames():
    from latentmuse.runtime.audio import encode_latentsync_states, latentsync_log_mel

    audio = (0.1 * np.sin(np.arange(16_000 * 35) / 7)).astype(np.float32)  # 35 s: two segments
    encoder = RecordingEncoder()
    states = encode_latentsync_states(encoder, audio)
    mel = latentsync_log_mel(audio)  # 3500 frames: segments of 3000 and 500
    assert [m.shape for m in encoder.mels] == [(1, 80, 3000)] * 2
    assert torch.equal(encoder.mels[0][0], mel[:, :3000])
    assert torch.equal(encoder.mels[1][0, :, :500], mel[:, 3000:]) and torch.all(encoder.mels[1][0, :, 500:] == 0.0)
    assert states.shape == (1500 + 250, 5, 384)  # each segment keeps n // 2 steps
    torch.testing.assert_close(states[1500, 0, 0], mel[:, 3000:3002].mean())
