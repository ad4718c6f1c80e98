"""AudioFeatures' per-segment windows against the whole-clip layout functions (docs/PIPELINE.md 1).

The reference is the whole clip computed the way the runtime did before it streamed: every segment
encoded, MuseTalk's states cut to floor(seconds x 50) and put through the final LayerNorm in one call,
LatentSync's states from ``encode_latentsync_states``; then ``musetalk_audio_windows`` /
``latentsync_audio_windows``. The per-segment windows must equal it exactly (``torch.equal``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from latentmuse.graphs.wrappers import WhisperEncoderGraph, WhisperPostLayerNormGraph
from latentmuse.runners.torch_runner import TorchRunner
from latentmuse.runtime.audio import (
    SAMPLE_RATE,
    SEGMENT_STEPS,
    AudioFeatures,
    encode_latentsync_states,
    encode_states,
    latentsync_audio_windows,
    latentsync_log_mel,
    latentsync_mel_frames,
    musetalk_audio_windows,
    positional_encoding,
    window_starts,
)
from latentmuse.runtime.datagen import output_frame_count
from tests.standins import smoke_model, whisper_standin

NTSC = Fraction(30000, 1001)
SECONDS = (0.5, 29.99, 30.0, 30.01, 75.0)


@pytest.fixture(scope="module")
def tiny_whisper():
    return smoke_model("whisper")


@pytest.fixture(scope="module")
def post_ln(tiny_whisper):
    """The real final LayerNorm with seeded random weights (cheap; the encoder is the stand-in's)."""
    return TorchRunner("whisper_post_ln", WhisperPostLayerNormGraph(tiny_whisper))


def audio_of(seconds: float, seed: int = 0) -> np.ndarray:
    """Seeded noise under a slow envelope and a chirp, so every encoder step differs from its neighbours."""
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    envelope = 0.2 + 0.15 * np.sin(2 * np.pi * 0.3 * t)
    signal = envelope * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t)
    return signal.astype(np.float32)


def whole_clip(whisper, post_ln, audio: np.ndarray) -> dict[str, torch.Tensor]:
    """Both layouts' states for the whole clip, computed as before streaming (one LayerNorm call)."""
    raw = encode_states(whisper, audio)
    musetalk = post_ln({"states": raw})["normed"].float() if len(raw) else raw
    return {"musetalk": musetalk, "latentsync": encode_latentsync_states(whisper, audio)}


def expected_windows(layout: str, states: torch.Tensor, n_out: int, fps: Fraction, frames) -> torch.Tensor:
    function = musetalk_audio_windows if layout == "musetalk" else latentsync_audio_windows
    return function(states, n_out, fps, frames=frames)


def windows_of(features: AudioFeatures, layout: str, frames) -> torch.Tensor:
    return getattr(features, f"{layout}_windows")(frames)


def boundary_frames(n_out: int, fps: Fraction, steps: int) -> list[int]:
    """Frames whose 10-step window touches a step within 10 of a segment boundary or of either end."""
    starts = window_starts(np.arange(n_out), fps)
    edges = [0, steps, *range(SEGMENT_STEPS, steps, SEGMENT_STEPS)]
    near = np.zeros(n_out, dtype=bool)
    for edge in edges:
        near |= (starts <= edge) & (starts + 10 >= edge - 1)
    return np.flatnonzero(near).tolist()


@pytest.mark.parametrize("fps", [Fraction(25), NTSC], ids=["25", "ntsc"])
@pytest.mark.parametrize("seconds", SECONDS)
def test_per_segment_windows_equal_whole_clip_windows(post_ln, seconds, fps):
    audio = audio_of(seconds)
    whisper = whisper_standin()
    reference = whole_clip(whisper, post_ln, audio)
    n_out = output_frame_count(len(audio), fps)
    rng = np.random.default_rng(int(seconds * 100))
    for layout in ("musetalk", "latentsync"):
        states = reference[layout]
        assert AudioFeatures(audio, fps, whisper, post_ln).steps(layout) == len(states)
        boundaries = boundary_frames(n_out, fps, len(states))
        if seconds > 30:  # the 10-step windows of these frames straddle segments 0 and 1
            assert any(1490 < window_starts([f], fps)[0] < 1500 for f in boundaries)
        subsets = {
            "all": list(range(n_out)),
            "boundaries": boundaries,
            "random": rng.choice(n_out, size=min(n_out, 37), replace=True).tolist(),  # unsorted, repeats
            "past_the_end": [n_out - 1, n_out, n_out + 3],  # edges: zeros (MuseTalk) or the last step
            "empty": [],
        }
        for name, frames in subsets.items():
            features = AudioFeatures(audio, fps, whisper, post_ln)  # fresh: nothing cached from another subset
            got = windows_of(features, layout, frames)
            assert torch.equal(got, expected_windows(layout, states, n_out, fps, frames)), (layout, name)
            assert "musetalk_states" not in vars(features) and "latentsync_states" not in vars(features)
        features = AudioFeatures(audio, fps, whisper, post_ln)
        assert torch.equal(getattr(features, f"{layout}_states"), states)  # the whole-clip property still agrees


@pytest.mark.parametrize("seconds, fps", [(35.0, NTSC)])  # two segments, the second 5 s
def test_real_tiny_encoder_per_segment_equals_whole_clip(tiny_whisper, post_ln, seconds, fps):
    whisper = TorchRunner("whisper_encoder", WhisperEncoderGraph(tiny_whisper))
    audio = audio_of(seconds, seed=5)
    reference = whole_clip(whisper, post_ln, audio)
    n_out = output_frame_count(len(audio), fps)
    features = AudioFeatures(audio, fps, whisper, post_ln)
    for layout in ("musetalk", "latentsync"):
        frames = boundary_frames(n_out, fps, len(reference[layout])) + [0, n_out // 2, n_out - 1]
        assert torch.equal(windows_of(features, layout, frames),
                           expected_windows(layout, reference[layout], n_out, fps, frames))


@pytest.mark.parametrize("fps", [Fraction(25), NTSC], ids=["25", "ntsc"])
def test_walking_frames_in_order_encodes_each_segment_once(post_ln, fps):
    audio = audio_of(75.0)
    features = AudioFeatures(audio, fps, whisper_standin(), post_ln)
    n_out = output_frame_count(len(audio), fps)
    assert features.segments_encoded == {} and features.seconds_spent == 0.0
    # As a stream asks: windows of 16 frames in output order, each window's frames for MuseTalk and then
    # (a fallback) the same frames for LatentSync, and every fourth window re-asks the one before it.
    windows = [range(start, min(start + 16, n_out)) for start in range(0, n_out, 16)]
    for k, window in enumerate(windows):
        for frames in ([windows[k - 1], window] if k % 4 == 3 else [window]):
            features.musetalk_windows(list(frames))
            features.latentsync_windows(list(frames))
    assert features.segments_encoded == {"musetalk": 3, "latentsync": 3}  # 75 s: segments of 30, 30, 15 s
    assert features.seconds_spent > 0.0
    assert features.seconds_spent == pytest.approx(sum(features.seconds_by_layout.values()))


def test_only_the_lru_segments_are_held(post_ln):
    audio = audio_of(75.0)
    features = AudioFeatures(audio, Fraction(25), whisper_standin(), post_ln, keep_segments=2)
    n_out = output_frame_count(len(audio), Fraction(25))
    for start in range(0, n_out, 25):
        features.musetalk_windows(range(start, min(start + 25, n_out)))
    assert features.held_segments("musetalk") == (1, 2) and features.held_segments("latentsync") == ()
    held = features._held["musetalk"]
    assert sum(t.numel() * t.element_size() for t in held.values()) <= 2 * SEGMENT_STEPS * 5 * 384 * 4
    assert "musetalk_states" not in vars(features)
    # A request for an evicted earlier segment encodes it again, and evicts the least recently used.
    assert features.segments_encoded["musetalk"] == 3
    features.musetalk_windows([0])
    assert features.segments_encoded["musetalk"] == 4 and features.held_segments("musetalk") == (2, 0)
    # One request spanning more segments than the LRU holds still encodes each of them once.
    features.musetalk_windows([1874, 900, 0, 1874])  # 0, 2 held (used first), 1 encoded last
    assert features.segments_encoded["musetalk"] == 5 and features.held_segments("musetalk") == (2, 1)


def test_prepare_encodes_the_first_segment_of_each_named_layout(post_ln):
    features = AudioFeatures(audio_of(75.0), Fraction(25), whisper_standin(), post_ln)
    features.prepare(["musetalk", "latentsync"])
    assert features.segments_encoded == {"musetalk": 1, "latentsync": 1}
    assert features.held_segments("musetalk") == features.held_segments("latentsync") == (0,)
    features.musetalk_windows(range(0, 700))  # frames 0..699 need only segment 0: nothing new
    assert features.segments_encoded == {"musetalk": 1, "latentsync": 1}
    with pytest.raises(ValueError, match="unknown audio layout"):
        features.prepare(["wav2lip"])
    silent = AudioFeatures(np.zeros(100, np.float32), Fraction(25), whisper_standin(), post_ln)
    silent.prepare(["musetalk"])  # under one encoder step: nothing to encode
    assert silent.segments_encoded == {}


def test_audio_under_one_step():
    """T50 = 0: MuseTalk's windows are the positional encoding alone; LatentSync has nothing to clamp to."""
    whisper = whisper_standin()
    features = AudioFeatures(np.zeros(300, np.float32), Fraction(25), whisper, whisper)
    windows = features.musetalk_windows([0, 1])
    assert torch.equal(windows, positional_encoding()[None].expand(2, -1, -1))
    with pytest.raises(ValueError, match="shorter than one encoder step"):
        features.latentsync_windows([0])
    assert features.segments_encoded == {}
    assert features.musetalk_states.shape == features.latentsync_states.shape == (0, 5, 384)


@pytest.mark.parametrize("n", [0, 1, 159, 200, 201, 319, 320, 16_000, 480_000, 480_159, 480_160, 1_200_000])
def test_latentsync_mel_frames_predicts_the_mel(n):
    assert latentsync_mel_frames(n) == latentsync_log_mel(np.zeros(n, np.float32)).shape[-1]


def test_musetalk_steps_from_length_match_the_encoded_states(post_ln):
    """T50 is known before encoding: floor(seconds x 50), also at exact multiples of 20 ms."""
    whisper = whisper_standin()
    for n in (320, 319, 480_000, 480_320, 16_000 * 7 + 1):
        audio = np.zeros(n, np.float32)
        encoded = len(encode_states(whisper, audio))
        assert AudioFeatures(audio, Fraction(25), whisper, post_ln).steps("musetalk") == encoded
        assert encoded == math.floor(n / SAMPLE_RATE * 50)
