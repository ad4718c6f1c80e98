"""MuseTalk's log-mel (``whisper_log_mel``) against transformers' WhisperFeatureExtractor, plus a sine
worked by hand.

The reference is what the runtime used to call: ``WhisperFeatureExtractor(feature_size=80,
sampling_rate=16000)(segment, sampling_rate=16000, return_tensors="pt")`` on each 30 s segment
``audio[i : i + 480000]`` (its default path when torch is installed is ``_torch_extract_fbank_features``).
transformers is only needed here, not by the runtime.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from latentmuse.runtime.audio import SAMPLE_RATE, SEGMENT_SAMPLES, encode_states, whisper_log_mel

TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)


def reference_log_mel(extractor, audio: np.ndarray) -> torch.Tensor:
    segments = [audio[i : i + SEGMENT_SAMPLES] for i in range(0, max(len(audio), 1), SEGMENT_SAMPLES)]
    mels = [extractor(s, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features for s in segments]
    return torch.cat(mels, dim=0)


def speech_like(seconds: float, seed: int, gain: float = 0.3) -> np.ndarray:
    """Voiced 'syllables': harmonics of a gliding f0 under two moving formants, a chirp, seeded noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formant1 = 500 + 300 * np.sin(2 * np.pi * 1.3 * t)
    formant2 = 1500 + 700 * np.sin(2 * np.pi * 0.9 * t + 1.0)
    voiced = np.zeros_like(t)
    for h in range(1, 30):
        freq = h * f0
        weight = np.exp(-(((freq - formant1) / 150) ** 2)) + 0.5 * np.exp(-(((freq - formant2) / 250) ** 2))
        voiced += weight * np.sin(h * phase) / h**0.5
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2  # 5 bursts a second, silent gaps
    chirp = 0.2 * np.sin(2 * np.pi * (300 * t + 900 * t**2)) * (t < 1.0)
    noise = 0.02 * rng.standard_normal(len(t))
    signal = syllables * voiced + chirp + noise
    return (gain * signal / np.abs(signal).max()).astype(np.float32)


def _cases() -> dict[str, np.ndarray]:
    loud = speech_like(30.0, seed=1)
    return {
        "speech_2_5s": speech_like(2.5, seed=0),
        # Two segments, the second 1 s and 40 dB quieter: each segment's max-8 floor is its own.
        "speech_31s": np.concatenate([loud, 0.01 * speech_like(1.0, seed=2)]),
        "exactly_30s": loud,
        "short_100_samples": speech_like(2.5, seed=3)[8000:8100],
        "silence": np.zeros(3 * SAMPLE_RATE, dtype=np.float32),
        "empty": np.zeros(0, dtype=np.float32),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers_whisper_feature_extractor(extractor, name):
    audio = CASES[name]
    ours = whisper_log_mel(audio)
    expected = reference_log_mel(extractor, audio)
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape == (max(1, math.ceil(len(audio) / SEGMENT_SAMPLES)), 80, 3000)
    error = (ours - expected).abs().max().item()
    assert error <= TOLERANCE, f"{name}: max-abs error {error:.3g}"


def test_float64_input_is_read_as_float32(extractor):
    audio = CASES["speech_2_5s"].astype(np.float64)
    assert (whisper_log_mel(audio) - reference_log_mel(extractor, audio)).abs().max().item() <= TOLERANCE


def test_silence_is_the_floor_everywhere():
    # log10 clamped at 1e-10 gives -10, i.e. (-10 + 4) / 4 = -1.5 in every bin.
    for audio in (CASES["silence"], CASES["empty"]):
        torch.testing.assert_close(whisper_log_mel(audio), torch.full((1, 80, 3000), -1.5), rtol=0, atol=0)


def _slaney_hz_to_mel(hz: float) -> float:
    return hz / (200 / 3) if hz < 1000 else 15 + math.log(hz / 1000) * 27 / math.log(6.4)


def _slaney_mel_to_hz(mel: float) -> float:
    return mel * 200 / 3 if mel < 15 else 1000 * math.exp((mel - 15) * math.log(6.4) / 27)


def test_pure_1khz_sine_by_hand():
    """A 1 kHz sine sits exactly on FFT bin 25 (40 Hz bins). With the periodic Hann window (DFT:
    W[0] = N/2, W[+-1] = -N/4) a frame inside the tone has |X[25]| = A N / 4 and |X[24]| = |X[26]| =
    A N / 8, nothing else, so mel filter m holds A^2 N^2 / 16 (F[m, 25] + (F[m, 24] + F[m, 26]) / 4)."""
    amplitude, n_fft = 0.5, 400
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # 1 s of tone, then 29 s of padding silence
    mel = whisper_log_mel((amplitude * np.cos(2 * np.pi * 1000 * t)).astype(np.float32))[0]

    # Slaney filters from their definition: 82 edges equally spaced in mel over [0, 8 kHz].
    mel_max = _slaney_hz_to_mel(8000.0)
    edges = [_slaney_mel_to_hz(mel_max * i / 81) for i in range(82)]

    def weight(m: int, hz: float) -> float:
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        triangle = max(0.0, min((hz - lo) / (centre - lo), (hi - hz) / (hi - centre)))
        return triangle * 2 / (hi - lo)

    power = [
        amplitude**2 * n_fft**2 / 16 * (weight(m, 1000) + (weight(m, 960) + weight(m, 1040)) / 4) for m in range(80)
    ]
    nearest = min(range(80), key=lambda m: abs(edges[m + 1] - 1000))
    assert nearest == 26 and int(np.argmax(power)) == nearest

    inside = mel[:, 5:95]  # frames wholly inside the tone (frame k is centred on sample 160 k)
    assert (inside.argmax(dim=0) == nearest).all()
    expected_max = (math.log10(max(power)) + 4) / 4
    assert abs(mel.max().item() - expected_max) <= 1e-6
    assert abs(inside[nearest].min().item() - expected_max) <= 1e-6  # the same in every such frame
    # After the tone: silence, floored at the segment's max - 8 in log10, i.e. max - 2 here.
    assert abs(mel[:, 200:].max().item() - (expected_max - 2)) <= 1e-6
    assert mel.min().item() >= expected_max - 2 - 1e-6


def test_segments_use_their_own_floor():
    # The second segment is 1 s of audio 40 dB quieter, then padding silence. Its own max - 8 lies below
    # the 1e-10 clamp, so its padding stays at -1.5; the first segment's (or a global) max - 8 would not.
    mel = whisper_log_mel(CASES["speech_31s"])
    first_floor = mel[0].max().item() - 2
    assert first_floor > -1.0
    assert mel[0].min().item() >= first_floor - 1e-6
    assert mel[1].max().item() - 2 < -1.5
    assert mel[1, :, 150:].eq(-1.5).all()


def test_encode_states_feeds_each_segment_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # any ``import transformers`` now fails
    audio = CASES["speech_31s"]
    fed = []

    def whisper(inputs):
        fed.append(inputs["mel"])
        return {"states": torch.full((1, 1500, 5, 384), float(len(fed)))}

    states = encode_states(whisper, audio)
    assert [m.shape for m in fed] == [(1, 80, 3000)] * 2
    expected = whisper_log_mel(audio)
    for k, m in enumerate(fed):
        assert torch.equal(m[0], expected[k])
    assert states.shape == (math.floor(31 * 50), 5, 384)
    assert (states[:1500] == 1).all() and (states[1500:] == 2).all()
