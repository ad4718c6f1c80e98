"""Audio features: Whisper encoder states per 30 s segment, then each generator's window layout.

One encoder graph serves both generators (docs/GENERATORS.md, "Audio"): it returns all five hidden
states with slot 4 *before* the final LayerNorm. What differs is the log-mel it is fed and how its
states are laid out per video frame:

* MuseTalk: :func:`whisper_log_mel`, our re-implementation of transformers' WhisperFeatureExtractor
  (equal to it within 2e-5, tests/test_whisper_mel.py), per 30 s segment (each segment padded to 30 s
  of silence before the transform), slot 4 *after* the final LayerNorm, zero-padded window edges, plus
  a sinusoidal positional encoding;
* LatentSync: one log-mel of the whole file normalised with the whole file's maximum, each 3000-frame
  segment padded with 0.0 in log-mel space, slot 4 *before* the LayerNorm, clamped window edges, no PE.

:class:`AudioFeatures` computes each layout's states on first use, once per run: a run whose windows
all go to one generator never pays for the other's encoder pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import cached_property, lru_cache

import numpy as np
import torch

from ..models.constants import MEL_FRAMES, STATES_PER_SECOND
from ..runners.base import Runner, run_chunked

SAMPLE_RATE = 16_000
SEGMENT_SECONDS = 30
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE
#: A video frame sees 10 encoder steps (0.2 s): 4 before its own position and 6 from it on.
WINDOW_STEPS = 10
WINDOW_BEFORE = 4
NUM_SLOTS = 5
#: Whisper's STFT: 25 ms windows every 10 ms at 16 kHz, 80 mel bins (100 mel frames per second).
N_FFT = 400
HOP = 160
N_MELS = 80


def whisper_log_mel(waveform: np.ndarray) -> torch.Tensor:
    """MuseTalk's log-mel: (n_segments, 80, 3000) float32, one 30 s segment per row.

    Equal (within float32 rounding) to transformers' ``WhisperFeatureExtractor(feature_size=80,
    sampling_rate=16000)(segment, sampling_rate=16000, return_tensors="pt").input_features`` on each
    segment ``audio[i : i + 480000]``, i.e. its default torch path (tests/test_whisper_mel.py):
    the waveform is cast to float32 and cut into ``max(1, ceil(len / 480000))`` segments, each padded
    with zeros to 480000 samples *before* the transform (empty audio gives one all-silence segment);
    centred STFT (reflect padding) with a periodic Hann window, 400-point FFT, hop 160; power of all
    but the last of the 3001 frames; Slaney mel filters; ``log10`` floored at 1e-10, then at *each
    segment's* maximum minus 8; then ``(x + 4) / 4``. No dithering, no normalisation.
    """
    audio = np.asarray(waveform, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {audio.shape}")
    n_segments = max(1, -(-len(audio) // SEGMENT_SAMPLES))
    padded = np.zeros(n_segments * SEGMENT_SAMPLES, dtype=np.float32)
    padded[: len(audio)] = audio
    batch = torch.from_numpy(padded).view(n_segments, SEGMENT_SAMPLES)
    # 8 segments (4 minutes) per STFT: about 100 MB of spectra at a time, however long the audio.
    return torch.cat([_segment_log_mel(part) for part in batch.split(8)])


def _segment_log_mel(batch: torch.Tensor) -> torch.Tensor:
    stft = torch.stft(batch, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # (n, 201, 3000)
    del stft
    log_spec = torch.clamp(_mel_filter_bank(N_MELS, N_FFT, SAMPLE_RATE) @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    assert log_spec.shape[-1] == MEL_FRAMES
    return log_spec


def encode_states(whisper: Runner, audio: np.ndarray) -> torch.Tensor:
    """(T50, 5, 384) encoder states for the whole waveform, slot 4 pre-LayerNorm, float32 on CPU.

    T50 = floor(seconds x 50): the padding that fills the last segment to 30 s is cut off.
    """
    states = [whisper({"mel": mel[None]})["states"][0].float().cpu() for mel in whisper_log_mel(audio)]
    steps = math.floor(len(audio) / SAMPLE_RATE * STATES_PER_SECOND)
    return torch.cat(states, dim=0)[:steps]


def mel_filter_bank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters on the Slaney mel scale, area-normalised.

    This is ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)``, the matrix OpenAI's Whisper ships
    as ``mel_filters.npz`` (and transformers recomputes as ``mel_filter_bank(..., norm="slaney",
    mel_scale="slaney")``): linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    """
    return _mel_filter_bank(n_mels, n_fft, sample_rate).clone()


@lru_cache(maxsize=4)
def _mel_filter_bank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        mel = hz / f_sp
        log_part = hz >= min_log_hz
        mel[log_part] = min_log_mel + np.log(hz[log_part] / min_log_hz) / logstep
        return mel

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        hz = f_sp * mel
        log_part = mel >= min_log_mel
        hz[log_part] = min_log_hz * np.exp(logstep * (mel[log_part] - min_log_mel))
        return hz

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    low, high = hz_to_mel(np.array([0.0, sample_rate / 2]))
    edges = mel_to_hz(np.linspace(low, high, n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def latentsync_log_mel(waveform: np.ndarray) -> torch.Tensor:
    """LatentSync's log-mel of the whole waveform (16 kHz mono): (80, T) float32, T = len // 160.

    OpenAI Whisper's ``log_mel_spectrogram``: centred STFT with a periodic Hann window, power of all but
    the last frame, mel filters, ``log10`` floored at 1e-10, then at the *whole file's* maximum minus 8,
    then ``(x + 4) / 4``. (MuseTalk's front end instead normalises each padded 30 s segment on its own.)
    """
    audio = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    if audio.numel() <= N_FFT // 2:  # the centred STFT's reflection needs more than half a window
        audio = torch.nn.functional.pad(audio, (0, N_FFT // 2 + 1 - audio.numel()))
    stft = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[:, :-1].abs() ** 2
    log_spec = torch.clamp(_mel_filter_bank(N_MELS, N_FFT, SAMPLE_RATE) @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def encode_latentsync_states(whisper: Runner, waveform: np.ndarray) -> torch.Tensor:
    """(T50, 5, 384) encoder states in LatentSync's layout (slot 4 pre-LayerNorm), float32 on CPU.

    The whole-file log-mel is cut into 3000-frame (30 s) segments, each padded with 0.0 in log-mel
    space; a segment of ``n`` mel frames keeps its first ``n // 2`` encoder steps (50 per second).
    """
    mel = latentsync_log_mel(waveform)
    states = []
    for seek in range(0, mel.shape[-1], MEL_FRAMES):
        segment = mel[:, seek : seek + MEL_FRAMES]
        kept = segment.shape[-1] // 2
        segment = torch.nn.functional.pad(segment, (0, MEL_FRAMES - segment.shape[-1]))
        states.append(whisper({"mel": segment[None]})["states"][0, :kept].float().cpu())
    return torch.cat(states, dim=0) if states else torch.zeros(0, NUM_SLOTS, 384)


class AudioFeatures:
    """A run's audio, with each generator's encoder states computed on first use (then kept).

    ``whisper`` is the encoder graph's runner and ``post_layer_norm`` the runner of its final
    LayerNorm on slot 4 (MuseTalk's layout): both networks run through runners, so the states meet
    the weights on the runners' device and dtype and come back as float32 on the CPU.
    """

    def __init__(self, waveform: np.ndarray, fps: Fraction, whisper: Runner, post_layer_norm: Runner) -> None:
        self.waveform, self.fps = waveform, fps
        self.whisper, self.post_layer_norm = whisper, post_layer_norm

    @cached_property
    def musetalk_states(self) -> torch.Tensor:
        """(T50, 5, 384): MuseTalk's mel, slot 4 through the final LayerNorm."""
        states = encode_states(self.whisper, self.waveform)
        if len(states) == 0:
            return states
        # chunked to the graph's profile (1500 steps = 30 s per call on TensorRT), one call elsewhere
        return run_chunked(self.post_layer_norm, {"states": states}, "normed", len(states), torch.device("cpu"))

    @cached_property
    def latentsync_states(self) -> torch.Tensor:
        """(T50, 5, 384): LatentSync's whole-file mel, slot 4 before the final LayerNorm."""
        return encode_latentsync_states(self.whisper, self.waveform)

    def prepare(self, layouts: Sequence[str]) -> None:
        """Compute the named layouts now ("musetalk", "latentsync"), so their cost is the audio stage's."""
        for name in layouts:
            getattr(self, f"{name}_states")

    @property
    def seconds(self) -> float:
        return len(self.waveform) / SAMPLE_RATE


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


def latentsync_audio_windows(
    states: torch.Tensor, n_frames: int, fps: Fraction | float, frames: Sequence[int] | None = None
) -> torch.Tensor:
    """LatentSync's audio input per video frame: (n, 50, 384).

    ``states`` is the (T50, 5, 384) stack with slot 4 *before* the final LayerNorm. Frame i sees steps
    [floor(50 i / fps) - 4, floor(50 i / fps) + 6), each index clamped to [0, T50 - 1] (the first and
    last steps repeat at the edges); flattened time-major (row = step * 5 + slot); no positional
    encoding. ``frames`` selects frame indices (a window's, possibly repeated); default all ``n_frames``.
    """
    frames = np.arange(n_frames) if frames is None else np.asarray(frames)
    steps, slots, dim = states.shape
    if steps == 0:
        raise ValueError("no audio states: the audio is shorter than one encoder step (20 ms)")
    index = torch.from_numpy(window_starts(frames, fps)[:, None] + np.arange(WINDOW_STEPS)[None, :])
    return states[index.clamp(0, steps - 1)].reshape(len(frames), WINDOW_STEPS * slots, dim)
