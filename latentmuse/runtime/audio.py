"""Audio features: one Whisper encoder pass per 30 s segment, then each generator's window layout.

The encoder pass is shared (PIPELINE.md 3): all five hidden states are kept with slot 4 *before* the
final LayerNorm. MuseTalk's layout (post-LayerNorm slot 4, zero-padded edges, sinusoidal positional
encoding) is derived here; LatentSync's layout (pre-LN, clamped edges, no PE) comes with its generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np
import torch

from ..models.whisper import MEL_FRAMES, STATES_PER_SECOND
from .runners import Runner

SAMPLE_RATE = 16_000
SEGMENT_SECONDS = 30
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE
#: A video frame sees 10 encoder steps (0.2 s): 4 before its own position and 6 from it on.
WINDOW_STEPS = 10
WINDOW_BEFORE = 4
NUM_SLOTS = 5


def mel_segments(audio: np.ndarray) -> list[torch.Tensor]:
    """Log-mel (1, 80, 3000) per 30 s segment, as transformers' WhisperFeatureExtractor computes it
    (MuseTalk's front end: each segment is padded to 30 s with silence before the transform)."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)
    segments = [audio[i : i + SEGMENT_SAMPLES] for i in range(0, max(len(audio), 1), SEGMENT_SAMPLES)]
    mels = []
    for segment in segments:
        features = extractor(segment, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        assert features.shape[-1] == MEL_FRAMES
        mels.append(features)
    return mels


def encode_states(whisper: Runner, audio: np.ndarray) -> torch.Tensor:
    """(T50, 5, 384) encoder states for the whole waveform, slot 4 pre-LayerNorm, float32 on CPU.

    T50 = floor(seconds x 50): the padding that fills the last segment to 30 s is cut off.
    """
    states = [whisper({"mel": mel})["states"][0].float().cpu() for mel in mel_segments(audio)]
    steps = math.floor(len(audio) / SAMPLE_RATE * STATES_PER_SECOND)
    return torch.cat(states, dim=0)[:steps]


@dataclass(frozen=True)
class AudioFeatures:
    """The shared encoder output plus what a generator needs to derive its own layout."""

    states: torch.Tensor  # (T50, 5, 384), slot 4 pre-LayerNorm
    fps: Fraction
    post_layer_norm: Callable[[torch.Tensor], torch.Tensor]  # the encoder's final LayerNorm on slot 4

    @cached_property
    def post_ln_states(self) -> torch.Tensor:
        """MuseTalk's stack: slot 4 through the final LayerNorm (computed once, on first use)."""
        with torch.inference_mode():
            return self.post_layer_norm(self.states)

    @property
    def seconds(self) -> float:
        return self.states.shape[0] / STATES_PER_SECOND


def positional_encoding(length: int = 50, dim: int = 384) -> torch.Tensor:
    """MuseTalk's sinusoidal PE: pe[p, 2k] = sin(p / 10000^(2k/d)), pe[p, 2k+1] = cos(same)."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position / div)
    pe[:, 1::2] = torch.cos(position / div)
    return pe.float()


def window_starts(frames: Sequence[int] | np.ndarray, fps: Fraction | float) -> np.ndarray:
    """First encoder step of each frame's window: floor(50 i / fps) - 4, in exact arithmetic."""
    fps = Fraction(fps).limit_denominator(1_000_000)
    idx = np.asarray(frames, dtype=np.int64)
    return (idx * STATES_PER_SECOND * fps.denominator) // fps.numerator - WINDOW_BEFORE


def musetalk_audio_windows(
    states: torch.Tensor, n_frames: int, fps: Fraction | float, frames: Sequence[int] | None = None
) -> torch.Tensor:
    """MuseTalk 1.5's audio input per video frame: (n, 50, 384).

    ``states`` is the (T50, 5, 384) stack with slot 4 *after* the final LayerNorm. Frame i sees steps
    [floor(50 i / fps) - 4, floor(50 i / fps) + 6); steps outside [0, T50) are zeros (MuseTalk pads 4
    steps left and 12 right). The 10 x 5 block is flattened time-major (row = step * 5 + slot) and
    the positional encoding is added (to the zero padding too, as MuseTalk does). ``frames`` selects
    a subset of frame indices (the pipeline asks for one batch at a time); default: all ``n_frames``.
    """
    frames = np.arange(n_frames) if frames is None else np.asarray(frames)
    steps, slots, dim = states.shape
    starts = window_starts(frames, fps)
    index = torch.from_numpy(starts[:, None] + np.arange(WINDOW_STEPS)[None, :])  # (n, 10)
    valid = (index >= 0) & (index < steps)
    gathered = states[index.clamp(0, max(steps - 1, 0))] if steps else states.new_zeros(*index.shape, slots, dim)
    gathered = gathered * valid[..., None, None].to(states.dtype)
    windows = gathered.reshape(len(frames), WINDOW_STEPS * slots, dim)
    return windows + positional_encoding(WINDOW_STEPS * slots, dim).to(windows.dtype)
