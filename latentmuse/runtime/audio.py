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

:class:`AudioFeatures` encodes one 30 s segment of one layout at a time, when a requested frame's window
first needs it, and keeps only the last few segments per layout: a streaming run's audio memory is
bounded by that small cache, not by the clip (a whole layout is ~23 MB per minute), and a run whose
windows all go to one generator never pays for the other's encoder pass.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
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
#: The encoder's width (whisper-tiny's d_model, the UNets' audio width): a state is (5, 384).
STATE_DIM = 384
#: Encoder steps per 30 s segment (the encoder halves the 3000 mel frames).
SEGMENT_STEPS = MEL_FRAMES // 2
LAYOUTS = ("musetalk", "latentsync")
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
    audio = _mono_float32(waveform)
    return torch.stack([musetalk_segment_mel(audio, index) for index in range(musetalk_segment_count(len(audio)))])


def musetalk_segment_count(n_samples: int) -> int:
    """How many 30 s segments MuseTalk's front end cuts ``n_samples`` into: at least one (silence)."""
    return max(1, -(-n_samples // SEGMENT_SAMPLES))


def musetalk_step_count(n_samples: int) -> int:
    """T50 of MuseTalk's layout: floor(seconds x 50), written exactly as the states were always cut
    (float arithmetic, so the count never changes by one at an exact multiple of 20 ms)."""
    return math.floor(n_samples / SAMPLE_RATE * STATES_PER_SECOND)


def musetalk_segment_mel(waveform: np.ndarray, index: int) -> torch.Tensor:
    """(80, 3000) log-mel of MuseTalk's segment ``index``: ``audio[480000 i : 480000 (i + 1)]`` padded
    with zeros to 30 s, normalised on its own (see :func:`whisper_log_mel`, which stacks these). One
    segment at a time, so a streaming run needs no more than one segment's spectra."""
    audio = _mono_float32(waveform)
    segment = torch.zeros(SEGMENT_SAMPLES, dtype=torch.float32)
    part = audio[index * SEGMENT_SAMPLES : (index + 1) * SEGMENT_SAMPLES]
    segment[: len(part)] = torch.from_numpy(np.ascontiguousarray(part))
    return _segment_log_mel(segment[None])[0]


def _mono_float32(waveform: np.ndarray) -> np.ndarray:
    audio = np.asarray(waveform, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {audio.shape}")
    return audio


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
    states = [_encode_segment(whisper, mel) for mel in whisper_log_mel(audio)]
    return torch.cat(states, dim=0)[: musetalk_step_count(len(audio))]


def _encode_segment(whisper: Runner, mel: torch.Tensor) -> torch.Tensor:
    """One (80, 3000) segment through the encoder graph: (1500, 5, 384) float32 on the CPU."""
    return whisper({"mel": mel[None]})["states"][0].float().cpu()


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


def latentsync_mel_frames(n_samples: int) -> int:
    """Mel frames :func:`latentsync_log_mel` gives for ``n_samples`` (len // 160; at least one, since
    audio of half a window or less is padded to 201 samples), known without computing the mel."""
    return max(n_samples, N_FFT // 2 + 1) // HOP


def latentsync_segment_steps(mel_frames: int) -> list[int]:
    """Steps kept from each 3000-frame segment of LatentSync's mel: ``n // 2`` for a segment of ``n``
    frames, so every segment but the last keeps 1500 and T50 is their sum."""
    return [min(MEL_FRAMES, mel_frames - seek) // 2 for seek in range(0, mel_frames, MEL_FRAMES)]


def encode_latentsync_states(whisper: Runner, waveform: np.ndarray) -> torch.Tensor:
    """(T50, 5, 384) encoder states in LatentSync's layout (slot 4 pre-LayerNorm), float32 on CPU.

    The whole-file log-mel is cut into 3000-frame (30 s) segments, each padded with 0.0 in log-mel
    space; a segment of ``n`` mel frames keeps its first ``n // 2`` encoder steps (50 per second).
    """
    mel = latentsync_log_mel(waveform)
    segments = range(len(latentsync_segment_steps(mel.shape[-1])))
    states = [_encode_latentsync_segment(whisper, mel, index) for index in segments]
    return torch.cat(states, dim=0) if states else torch.zeros(0, NUM_SLOTS, STATE_DIM)


def _encode_latentsync_segment(whisper: Runner, mel: torch.Tensor, index: int) -> torch.Tensor:
    """Segment ``index`` of the whole-file mel, zero-padded to 3000 frames, encoded: its kept steps."""
    segment = mel[:, index * MEL_FRAMES : (index + 1) * MEL_FRAMES]
    kept = segment.shape[-1] // 2
    return _encode_segment(whisper, torch.nn.functional.pad(segment, (0, MEL_FRAMES - segment.shape[-1])))[:kept]


class AudioFeatures:
    """A run's audio, encoded one 30 s segment of one layout at a time, as the requested windows need.

    ``whisper`` is the encoder graph's runner and ``post_layer_norm`` the runner of its final
    LayerNorm on slot 4 (MuseTalk's layout): both networks run through runners, so the states meet
    the weights on the runners' device and dtype and come back as float32 on the CPU.

    Generators ask for windows (:meth:`musetalk_windows`, :meth:`latentsync_windows`) in nearly
    increasing frame order; each layout keeps its ``keep_segments`` most recently used segments
    (an LRU), so a window straddling a segment boundary, a slightly out-of-order request or a
    fallback re-asking the same frames in the other layout never re-encodes, while memory stays at
    ``keep_segments`` x 1500 x 5 x 384 x 4 B (~11.5 MB at 3) per layout, whatever the clip's length.
    A request for an evicted segment encodes it again (counted in :attr:`segments_encoded`).

    LatentSync's log-mel is normalised with the whole file's maximum, so it is computed for the whole
    waveform on first use and kept (80 x 100 frames/s x 4 B, ~1.9 MB per minute); MuseTalk's mel is
    normalised per segment and computed with its segment.
    """

    def __init__(self, waveform: np.ndarray, fps: Fraction, whisper: Runner, post_layer_norm: Runner,
                 keep_segments: int = 3) -> None:
        if keep_segments < 1:
            raise ValueError(f"keep_segments must be at least 1, got {keep_segments}")
        self.waveform, self.fps = _mono_float32(waveform), fps
        self.whisper, self.post_layer_norm = whisper, post_layer_norm
        self.keep_segments = keep_segments
        #: Encoder passes per layout (one per 30 s segment computed, recomputations included).
        self.segments_encoded: Counter[str] = Counter()
        #: Seconds spent per layout on mels, encoder and LayerNorm passes (the audio stage's cost).
        self.seconds_by_layout: dict[str, float] = dict.fromkeys(LAYOUTS, 0.0)
        self._held: dict[str, OrderedDict[int, torch.Tensor]] = {name: OrderedDict() for name in LAYOUTS}
        self._lock = threading.Lock()  # a segment is computed once even if two threads ask for it

    # ------------------------------------------------------------------ windows (what generators call)

    def musetalk_windows(self, frames: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(n, 50, 384): ``musetalk_audio_windows(self.musetalk_states, _, self.fps, frames=frames)``,
        encoding only the segments these frames' windows touch."""
        return _musetalk_windows(self._gatherer("musetalk"), self.steps("musetalk"), self.fps, frames)

    def latentsync_windows(self, frames: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(n, 50, 384): ``latentsync_audio_windows(self.latentsync_states, _, self.fps, frames=frames)``,
        encoding only the segments these frames' windows touch."""
        return _latentsync_windows(self._gatherer("latentsync"), self.steps("latentsync"), self.fps, frames)

    def steps(self, layout: str) -> int:
        """T50 of ``layout``, from the waveform's length alone (no encoding): the window edges need it."""
        if layout == "musetalk":
            return musetalk_step_count(len(self.waveform))
        _check_layout(layout)
        return sum(latentsync_segment_steps(latentsync_mel_frames(len(self.waveform))))

    def prepare(self, layouts: Sequence[str]) -> None:
        """Encode the first segment of each named layout ("musetalk", "latentsync"), LatentSync's
        whole-file mel with it, so the first windows' cost is the audio stage's; later segments are
        encoded as windows reach them."""
        for layout in layouts:
            _check_layout(layout)
            if self.steps(layout):
                self._segment(layout, 0)

    @property
    def seconds_spent(self) -> float:
        """Seconds of audio computation so far, both layouts (a run's per-stage report reads it)."""
        return sum(self.seconds_by_layout.values())

    def held_segments(self, layout: str) -> tuple[int, ...]:
        """The segment indices ``layout`` holds now, least recently used first."""
        _check_layout(layout)
        return tuple(self._held[layout])

    # ------------------------------------------------------------------ whole clip (tests, back-compat)

    @cached_property
    def musetalk_states(self) -> torch.Tensor:
        """(T50, 5, 384): MuseTalk's mel, slot 4 through the final LayerNorm; the whole clip, kept."""
        return self._whole("musetalk")

    @cached_property
    def latentsync_states(self) -> torch.Tensor:
        """(T50, 5, 384): LatentSync's whole-file mel, slot 4 before the final LayerNorm; the whole clip, kept."""
        return self._whole("latentsync")

    @property
    def seconds(self) -> float:
        return len(self.waveform) / SAMPLE_RATE

    # ------------------------------------------------------------------ segments

    def _whole(self, layout: str) -> torch.Tensor:
        steps = self.steps(layout)
        parts = [self._compute(layout, index) for index in range(-(-steps // SEGMENT_STEPS))]
        return torch.cat(parts) if parts else torch.zeros(0, NUM_SLOTS, STATE_DIM)

    def _gatherer(self, layout: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """``index -> states[index]`` for step indices in [0, T50), fetching each segment they touch
        once per request: held ones first, then the missing ones in increasing order, so encoding a
        missing segment never evicts one this request still needs, however many it spans."""

        def gather(index: torch.Tensor) -> torch.Tensor:
            out = torch.empty(*index.shape, NUM_SLOTS, STATE_DIM)
            segment_of = index // SEGMENT_STEPS
            needed = torch.unique(segment_of).tolist()
            if len(needed) == 1:  # the common case: the whole request inside one segment
                return self._segment(layout, needed[0])[index - needed[0] * SEGMENT_STEPS]
            held = self._held[layout]
            for segment in sorted(needed, key=lambda s: (s not in held, s)):
                here = segment_of == segment
                out[here] = self._segment(layout, segment)[index[here] - segment * SEGMENT_STEPS]
            return out

        return gather

    def _segment(self, layout: str, index: int) -> torch.Tensor:
        """Segment ``index`` of ``layout`` from the LRU, computed (and the oldest evicted) on a miss."""
        with self._lock:
            held = self._held[layout]
            if index in held:
                held.move_to_end(index)
                return held[index]
            states = self._compute(layout, index)
            held[index] = states
            while len(held) > self.keep_segments:
                held.popitem(last=False)
            return states

    def _compute(self, layout: str, index: int) -> torch.Tensor:
        """Segment ``index``'s kept steps: (<= 1500, 5, 384) float32 on the CPU; counted and timed."""
        start = time.perf_counter()
        if layout == "musetalk":
            kept = min(SEGMENT_STEPS, self.steps(layout) - index * SEGMENT_STEPS)
            states = _encode_segment(self.whisper, musetalk_segment_mel(self.waveform, index))[:kept]
            # chunked to the graph's profile (1500 steps = 30 s per call on TensorRT), one call elsewhere
            states = run_chunked(self.post_layer_norm, {"states": states}, "normed", kept, torch.device("cpu"))
        else:
            _check_layout(layout)
            states = _encode_latentsync_segment(self.whisper, self._latentsync_mel, index)
        self.segments_encoded[layout] += 1
        self.seconds_by_layout[layout] += time.perf_counter() - start
        return states

    @cached_property
    def _latentsync_mel(self) -> torch.Tensor:
        start = time.perf_counter()
        mel = latentsync_log_mel(self.waveform)
        assert mel.shape[-1] == latentsync_mel_frames(len(self.waveform)), "steps() would disagree with the mel"
        self.seconds_by_layout["latentsync"] += time.perf_counter() - start
        return mel


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown audio layout {layout!r}: expected one of {LAYOUTS}")


def positional_encoding(length: int = 50, dim: int = 384) -> torch.Tensor:
    """MuseTalk's sinusoidal PE: pe[p, 2k] = sin(p / 10000^(2k/d)), pe[p, 2k+1] = cos(same)."""
    return _positional_encoding(length, dim).clone()


@lru_cache(maxsize=4)
def _positional_encoding(length: int, dim: int) -> torch.Tensor:
    # cached: every window request adds it, and the float64 sines cost more than the gather
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
    frames = np.arange(n_frames) if frames is None else frames
    return _musetalk_windows(states.__getitem__, states.shape[0], fps, frames, states.shape[1:], states.dtype)


def latentsync_audio_windows(
    states: torch.Tensor, n_frames: int, fps: Fraction | float, frames: Sequence[int] | None = None
) -> torch.Tensor:
    """LatentSync's audio input per video frame: (n, 50, 384).

    ``states`` is the (T50, 5, 384) stack with slot 4 *before* the final LayerNorm. Frame i sees steps
    [floor(50 i / fps) - 4, floor(50 i / fps) + 6), each index clamped to [0, T50 - 1] (the first and
    last steps repeat at the edges); flattened time-major (row = step * 5 + slot); no positional
    encoding. ``frames`` selects frame indices (a window's, possibly repeated); default all ``n_frames``.
    """
    frames = np.arange(n_frames) if frames is None else frames
    return _latentsync_windows(states.__getitem__, states.shape[0], fps, frames)


# The layouts' rules, written once over ``gather(index) -> states[index]``: the pure functions gather
# from a whole-clip tensor, AudioFeatures from its per-segment cache, so the two agree exactly.
Gather = Callable[[torch.Tensor], torch.Tensor]


def _window_index(frames: Sequence[int] | np.ndarray, fps: Fraction | float) -> torch.Tensor:
    """(n, 10) step indices of each frame's window, unclamped (they run below 0 and past T50)."""
    return torch.from_numpy(window_starts(frames, fps)[:, None] + np.arange(WINDOW_STEPS)[None, :])


def _musetalk_windows(gather: Gather, steps: int, fps: Fraction | float, frames: Sequence[int] | np.ndarray,
                      state_shape: Sequence[int] = (NUM_SLOTS, STATE_DIM),
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    index = _window_index(frames, fps)
    valid = (index >= 0) & (index < steps)
    gathered = gather(index.clamp(0, steps - 1)) if steps else torch.zeros(*index.shape, *state_shape, dtype=dtype)
    gathered = gathered * valid[..., None, None].to(gathered.dtype)
    windows = gathered.reshape(len(index), WINDOW_STEPS * gathered.shape[-2], gathered.shape[-1])
    return windows + _positional_encoding(windows.shape[1], windows.shape[2]).to(windows.dtype)


def _latentsync_windows(gather: Gather, steps: int, fps: Fraction | float,
                        frames: Sequence[int] | np.ndarray) -> torch.Tensor:
    if steps == 0:
        raise ValueError("no audio states: the audio is shorter than one encoder step (20 ms)")
    gathered = gather(_window_index(frames, fps).clamp(0, steps - 1))
    return gathered.reshape(len(gathered), WINDOW_STEPS * gathered.shape[-2], gathered.shape[-1])
