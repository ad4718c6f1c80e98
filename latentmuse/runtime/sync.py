"""Lip-sync quality as the field measures it: SyncNet's LSE-C (confidence) and LSE-D (distance).

The measure is the reference evaluation's (joonson/syncnet_python ``SyncNetInstance.evaluate`` and
``run_pipeline.crop_video``, used unchanged by LatentSync's ``eval/eval_sync_conf.py``), step for step;
docs/QUALITY.md lists the facts and where this code differs (nothing is written to disk and read
back: the crops come from the frames in memory). In short, for each *run* (consecutive 25 fps frames
that show the dubbed face; the reference's "track"):

* crops: box half-size ``s = max(w, h) / 2`` and centre, each median-filtered over 13 frames (zero
  padded, as ``scipy.signal.medfilt``), the frame padded by ``int(1.8 s)`` with grey 110, rows
  ``y - s .. y + 1.8 s`` and columns ``x - 1.4 s .. x + 1.4 s``, resized to 224 x 224 (bilinear);
* MFCC of the run's audio at 16 kHz on the 16-bit scale (:func:`mfcc`: ``python_speech_features``'
  defaults), 4 columns per video frame;
* window ``i``: the lip embedding of crops ``i .. i+4`` and the audio embedding of MFCC columns
  ``4i .. 4i+19``, for ``i < min(frames, samples // 640) - 5``;
* distances from each lip embedding to the audio embeddings 15 windows either side (zero vectors
  beyond the run), averaged over the run: LSE-D is the smallest mean, LSE-C the median minus it, the
  AV offset ``15 - argmin`` frames; per window, ``median - distance at the best offset``, filtered
  over 9 windows, locates a weak stretch.

:class:`RunScorer` computes one run *as its frames arrive*: a crop waits only for the 6 frames its box
filter looks ahead, a lip window for its 5 crops, a window's distances for the 15 windows after it, so
memory is bounded by that look-ahead, not by the run. :class:`ClipScorer` cuts a stream of output frames
into runs (any frame rate: the frame nearest each 40 ms instant) and combines their scores, weighted by
frames; :func:`measure` is the one-run entry point for callers with crops already made.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np

from ..models.constants import SYNCNET_CROP, SYNCNET_LIP_FRAMES, SYNCNET_MFCC_COEFFICIENTS, SYNCNET_MFCC_STEPS
from .defaults import DEFAULT_SYNC_MIN_RUN

#: The rates the network was trained at: 16 kHz audio, 25 fps video (640 samples a frame).
SAMPLE_RATE = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
#: MFCC: 25 ms windows every 10 ms (400 / 160 samples), 13 coefficients of 26 mel filters on a 512-point FFT.
WINDOW, STEP, NFFT, FILTERS, PREEMPHASIS, LIFTER = 400, 160, 512, 26, 0.97, 22
COEFFICIENTS = SYNCNET_MFCC_COEFFICIENTS
MFCC_PER_FRAME = SAMPLES_PER_FRAME // STEP  # 4
MFCC_WINDOW = SYNCNET_MFCC_STEPS  # columns per audio embedding (0.2 s)
LIP_FRAMES = SYNCNET_LIP_FRAMES  # crops per lip embedding (0.2 s)
CROP = SYNCNET_CROP
#: Box filter, crop margin and padding grey of ``crop_video``.
BOX_FILTER = 13
CROP_SCALE = 0.4
PAD_VALUE = 110
#: Offsets searched either side (``calc_pdist``'s ``vshift``), the per-window filter, the reference's batch.
VSHIFT = 15
CONFIDENCE_FILTER = 9
EMBED_BATCH = 20
#: ``pairwise_distance``'s epsilon (added to the difference before the norm).
DISTANCE_EPS = 1e-6
#: Runs shorter than this many frames are not scored (runtime/defaults.py).
DEFAULT_MIN_RUN = DEFAULT_SYNC_MIN_RUN
#: The span the report's ``weakest`` stretch covers (windows, i.e. 25 fps frames: one second).
WEAKEST_SPAN = 25


# ------------------------------------------------------------------------------------------------ MFCC


def int16_scale(waveform: np.ndarray) -> np.ndarray:
    """A float waveform in [-1, 1] as the 16-bit integers the reference reads from its WAV (float64).

    The scale matters: coefficient 0 is the log frame energy. ffmpeg's float -> s16 conversion:
    ``round(x * 32768)``, clipped."""
    return np.clip(np.rint(np.asarray(waveform, dtype=np.float64) * 32768.0), -32768, 32767)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _filter_bank() -> np.ndarray:
    """``python_speech_features.get_filterbanks(26, 512, 16000)``: triangles on FFT bins (26 x 257)."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), FILTERS + 2)
    bins = np.floor((NFFT + 1) * _mel_to_hz(mels) / SAMPLE_RATE)
    bank = np.zeros((FILTERS, NFFT // 2 + 1))
    for j in range(FILTERS):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    return bank


_BANK = _filter_bank()
_LIFT = 1 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(COEFFICIENTS) / LIFTER)
_EPS = np.finfo(float).eps


def _coefficients(frames: np.ndarray) -> np.ndarray:
    """(T, 400) pre-emphasised frames -> (13, T) MFCC: power spectrum, mel energies, log, DCT-II,
    lifter, coefficient 0 replaced by the log frame energy."""
    from scipy.fft import dct

    power = np.square(np.abs(np.fft.rfft(frames, NFFT))) / NFFT
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, _EPS, energy)
    mel = power @ _BANK.T
    mel = np.where(mel == 0, _EPS, mel)
    cepstra = dct(np.log(mel), type=2, axis=1, norm="ortho")[:, :COEFFICIENTS] * _LIFT
    cepstra[:, 0] = np.log(energy)
    return cepstra.T.astype(np.float32)


def column_count(samples: int) -> int:
    """MFCC columns of a signal of ``samples`` (the last window zero padded, at least one)."""
    return 1 if samples <= WINDOW else 1 + math.ceil((samples - WINDOW) / STEP)


def mfcc(signal: np.ndarray) -> np.ndarray:
    """``python_speech_features.mfcc(signal, 16000)`` with its defaults, transposed: (13, T) float32.

    ``signal`` on the scale the reference reads (:func:`int16_scale`). The tail is zero padded after
    pre-emphasis, as there."""
    return mfcc_columns(np.asarray(signal, dtype=np.float64), 0, column_count(len(signal)))


def mfcc_columns(signal: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Columns ``first .. stop-1`` of :func:`mfcc` of ``signal``, computing only those windows, so a
    long run's MFCC is made as its windows are needed (equal to slicing the whole, tested)."""
    if stop <= first:
        return np.zeros((COEFFICIENTS, 0), np.float32)
    lo, hi = first * STEP, (stop - 1) * STEP + WINDOW
    x = np.asarray(signal[max(lo - 1, 0):hi], dtype=np.float64)
    if lo == 0:  # the signal's first sample is kept as it is
        emphasised = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    else:
        emphasised = x[1:] - PREEMPHASIS * x[:-1]
    emphasised = np.concatenate([emphasised, np.zeros(hi - lo - len(emphasised))])  # zeros past the end
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, WINDOW)[::STEP]
    return _coefficients(frames[: stop - first])


# ----------------------------------------------------------------------------------------------- crops


def box_parameters(box: Sequence[float]) -> tuple[float, float, float]:
    """A detector box (x1, y1, x2, y2) as the reference's (half-size s, centre x, centre y)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(x2 - x1, y2 - y1) / 2, (x1 + x2) / 2, (y1 + y2) / 2


def crop_face(frame: np.ndarray, s: float, x: float, y: float) -> np.ndarray:
    """``crop_video``'s crop of one (filtered) box: 224 x 224 x 3 uint8, in the frame's channel order.

    Equal to padding the whole frame by ``int(1.8 s)`` with 110 and slicing it (tested), without
    padding a 1080p frame per crop."""
    import cv2

    pad = int(s * (1 + 2 * CROP_SCALE))
    my, mx = y + pad, x + pad
    rows = int(my - s), int(my + s * (1 + 2 * CROP_SCALE))
    cols = int(mx - s * (1 + CROP_SCALE)), int(mx + s * (1 + CROP_SCALE))
    height, width = frame.shape[0] + 2 * pad, frame.shape[1] + 2 * pad
    r0, r1 = max(rows[0], 0), min(rows[1], height)  # slicing the padded frame clips at its edges
    c0, c1 = max(cols[0], 0), min(cols[1], width)
    if r1 <= r0 or c1 <= c0:
        return np.full((CROP, CROP, frame.shape[2]), PAD_VALUE, np.uint8)
    out = np.full((r1 - r0, c1 - c0, frame.shape[2]), PAD_VALUE, np.uint8)
    fr0, fr1 = max(r0 - pad, 0), min(r1 - pad, frame.shape[0])  # the part inside the frame
    fc0, fc1 = max(c0 - pad, 0), min(c1 - pad, frame.shape[1])
    if fr1 > fr0 and fc1 > fc0:
        out[fr0 + pad - r0:fr1 + pad - r0, fc0 + pad - c0:fc1 + pad - c0] = frame[fr0:fr1, fc0:fc1]
    return cv2.resize(out, (CROP, CROP))


def filtered_box(boxes: Sequence[tuple[float, float, float]], index: int) -> tuple[float, float, float]:
    """Box ``index``'s (s, x, y), each the median over the 13 boxes centred on it, zeros beyond either
    end of ``boxes``: ``scipy.signal.medfilt(values, 13)[index]`` for each of the three (tested)."""
    half = BOX_FILTER // 2
    window = boxes[max(index - half, 0):index + half + 1]
    zeros = [0.0] * (BOX_FILTER - len(window))
    return tuple(float(np.median([b[k] for b in window] + zeros)) for k in range(3))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ embedding


class SyncEmbedder(Protocol):
    """SyncNet's two streams: MFCC blocks (N, 1, 13, 20) and lip windows (N, 3, 5, 224, 224) to (N, D)."""

    def audio(self, blocks: np.ndarray) -> np.ndarray: ...
    def lips(self, windows: np.ndarray) -> np.ndarray: ...


class RunnerEmbedder:
    """The streams as the run's graphs ``syncnet_audio`` and ``syncnet_lip`` (any backend), in chunks
    the runners take."""

    def __init__(self, audio_runner, lip_runner) -> None:
        self.audio_runner, self.lip_runner = audio_runner, lip_runner

    def audio(self, blocks: np.ndarray) -> np.ndarray:
        return self._run(self.audio_runner, "mfcc", blocks)

    def lips(self, windows: np.ndarray) -> np.ndarray:
        return self._run(self.lip_runner, "frames", windows)

    @staticmethod
    def _run(runner, name: str, batch: np.ndarray) -> np.ndarray:
        import torch

        limit = getattr(runner, "max_batch", None)  # a TensorRT profile's maximum, if any
        step = min((limit(name) if limit is not None else None) or EMBED_BATCH, EMBED_BATCH)
        out = []
        for i in range(0, len(batch), step):
            feeds = {name: torch.from_numpy(np.ascontiguousarray(batch[i:i + step], dtype=np.float32)).to(runner.device)}
            out.append(runner(feeds)["embedding"].detach().float().cpu().numpy())
        return np.concatenate(out)


def module_embedder(module) -> RunnerEmbedder:
    """A loaded :class:`~latentmuse.models.syncnet.SyncNet` as the two graphs a run has (their wrappers
    on PyTorch runners), on the module's own device and dtype."""
    from ..graphs.wrappers import SyncNetAudioGraph, SyncNetLipGraph
    from ..runners.torch_runner import TorchRunner

    parameter = next(module.parameters())
    return RunnerEmbedder(*(TorchRunner(name, graph(module), parameter.device, parameter.dtype)
                            for name, graph in (("syncnet_audio", SyncNetAudioGraph), ("syncnet_lip", SyncNetLipGraph))))


def as_embedder(model) -> SyncEmbedder:
    """A SyncNet module, or anything with ``audio`` and ``lips`` (:class:`RunnerEmbedder`), as an embedder."""
    if hasattr(model, "audio") and hasattr(model, "lips"):
        return model
    if hasattr(model, "forward_aud") and hasattr(model, "forward_lip"):
        return module_embedder(model)
    raise TypeError(f"{type(model).__name__} is not a SyncNet model or embedder")


# ------------------------------------------------------------------------------------------- distances


def window_distances(lip: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The 31 distances of one lip embedding to the audio embeddings of the windows 15 before to 15
    after it (``block``, 31 x D; zero rows outside the run, as the reference pads): ``pairwise_distance``,
    the norm of ``lip - audio + 1e-6``."""
    return np.sqrt(np.square(lip.astype(np.float64) - block.astype(np.float64) + DISTANCE_EPS).sum(axis=1))


def calc_pdist(lip: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """The reference's ``calc_pdist(feat1, feat2, vshift=15)`` on whole sequences: (L, 31)."""
    pad = np.zeros((VSHIFT, audio.shape[-1]), audio.dtype)
    padded = np.concatenate([pad, audio, pad])
    return np.stack([window_distances(lip[i], padded[i:i + 2 * VSHIFT + 1]) for i in range(len(lip))]) \
        if len(lip) else np.zeros((0, 2 * VSHIFT + 1))


def medfilt(values: np.ndarray, kernel: int) -> np.ndarray:
    """``scipy.signal.medfilt`` (zero padded at both ends)."""
    import warnings

    from scipy.signal import medfilt as scipy_medfilt

    if not len(values):
        return np.zeros(0)
    with warnings.catch_warnings():  # a run shorter than the kernel: zero padded, as intended
        warnings.simplefilter("ignore", UserWarning)
        return scipy_medfilt(np.asarray(values, np.float64), kernel)


@dataclass
class SyncScore:
    """One run's score, as the reference reports it.

    ``confidence`` (LSE-C) = median - minimum of ``mean_distances``; ``distance`` (LSE-D) = the minimum;
    ``offset_frames`` = 15 - its index (positive: the audio leads the video by that many 25 fps frames,
    in the reference's convention); ``per_frame`` the confidence of each window (median of the mean
    distances minus the window's distance at the best offset), median-filtered over 9 windows;
    ``frames``: the run's 25 fps frames."""

    confidence: float
    distance: float
    offset_frames: int
    per_frame: np.ndarray
    mean_distances: np.ndarray
    frames: int

    @classmethod
    def from_distances(cls, distances: np.ndarray, frames: int) -> SyncScore:
        mean = distances.mean(axis=0)
        best = int(np.argmin(mean))
        median = float(np.median(mean))
        return cls(confidence=median - float(mean[best]), distance=float(mean[best]), offset_frames=VSHIFT - best,
                   per_frame=medfilt(median - distances[:, best], CONFIDENCE_FILTER), mean_distances=mean, frames=frames)


# -------------------------------------------------------------------------------------------- one run


class RunScorer:
    """One run scored as its 25 fps frames arrive (:meth:`add`), finished by :meth:`finish`.

    ``audio``: the run's audio from its first frame on, on the 16-bit scale (a view of the clip's
    waveform: nothing is copied). Held at any time: the 6 frames the box filter looks ahead, the crops
    of the lip windows not yet embedded (at most 24: windows go to the network 20 at a time), the lip
    embeddings of the last 15 windows (their distances need the audio windows after them) and 31
    distances per window.
    """

    def __init__(self, audio: np.ndarray, embedder: SyncEmbedder) -> None:
        self.audio, self.embedder = audio, embedder
        self.audio_frames = len(audio) // SAMPLES_PER_FRAME  # the reference's floor(samples / 640)
        self.frames = 0  # frames added
        self._boxes: list[tuple[float, float, float]] = []  # (s, x, y) of frames _box_first on
        self._box_first = 0
        self._waiting: deque[np.ndarray] = deque()  # frames waiting for their filtered box
        self._crops: deque[np.ndarray] = deque()  # crops a window not yet embedded needs
        self._cropped = 0  # frames cropped (or passed over: past the audio) so far
        self._first_crop = 0  # the frame of the oldest crop held
        self._lip: dict[int, np.ndarray] = {}  # window -> lip embedding, until its distances are made
        self._windows = 0  # lip windows embedded
        self._audio: dict[int, np.ndarray] = {}  # window -> audio embedding, while a distance needs it
        self._audio_windows = 0  # audio windows embedded
        self.distances: list[np.ndarray] = []

    def add(self, frame: np.ndarray, box: Sequence[float]) -> None:
        """The run's next frame and its face's detector box (x1, y1, x2, y2)."""
        self._boxes.append(box_parameters(box))
        self._waiting.append(frame)
        self.frames += 1
        self._advance(final=False)

    def add_crop(self, crop: np.ndarray) -> None:
        """The run's next frame as a crop already made (224 x 224 x 3 uint8)."""
        if self._cropped < self.audio_frames - 1:
            self._crops.append(np.asarray(crop, np.uint8))
        self._cropped += 1
        self.frames += 1
        self._advance(final=False)

    def finish(self) -> SyncScore | None:
        """The run's score (None: fewer than 6 frames with audio, no window to score)."""
        self._advance(final=True)
        if not self.distances:
            return None
        return SyncScore.from_distances(np.stack(self.distances), self.frames)

    # ------------------------------------------------------------------------------------------------
    def _advance(self, final: bool) -> None:
        half = BOX_FILTER // 2
        while self._waiting and (final or self._cropped + half < self.frames):
            frame = self._waiting.popleft()
            if self._cropped < self.audio_frames - 1:  # later frames are in no window: past the audio
                self._crops.append(crop_face(frame, *filtered_box(self._boxes, self._cropped - self._box_first)))
            self._cropped += 1
        drop = self._cropped - half - self._box_first  # boxes no filter window still reaches
        if drop > 0:
            del self._boxes[:drop]
            self._box_first += drop
        # the windows the run has if it ends now (the reference stops at min(frames, audio) - 5), and
        # before the end only those whose five crops are made
        windows = max(0, min(self.frames, self.audio_frames) - LIP_FRAMES)
        if not final:
            windows = min(windows, self._cropped - LIP_FRAMES + 1)
        if windows - self._windows >= (1 if final else EMBED_BATCH):
            self._embed_lips(windows)
        # a window's distances need the audio windows up to 15 after it: known once 15 more lip
        # windows exist (the run has at least those), or at the end (past it: zeros)
        ready = self._windows if final else self._windows - VSHIFT
        if ready > len(self.distances):
            self._embed_audio(self._windows)
            dim = next(iter(self._audio.values())).shape[-1]
            zero = np.zeros(dim, np.float32)
            for w in range(len(self.distances), ready):
                # windows before the run or past its end are not in the dict: zeros
                block = np.stack([self._audio.get(j, zero) for j in range(w - VSHIFT, w + VSHIFT + 1)])
                self.distances.append(window_distances(self._lip.pop(w), block))
            for j in [j for j in self._audio if j < ready - VSHIFT]:  # no later window reaches back to it
                del self._audio[j]

    def _embed_lips(self, stop: int) -> None:
        first = self._first_crop
        stacks = [np.stack([self._crops[w - first + t] for t in range(LIP_FRAMES)]) for w in range(self._windows, stop)]
        # (N, 5, 224, 224, 3) in the frames' BGR order -> (N, 3, 5, 224, 224) floats 0-255, as the reference feeds them
        windows = np.stack(stacks).transpose(0, 4, 1, 2, 3).astype(np.float32)
        for w, embedding in zip(range(self._windows, stop), self.embedder.lips(windows)):
            self._lip[w] = embedding
        self._windows = stop
        while self._crops and self._first_crop < stop:  # in no window still to make
            self._crops.popleft()
            self._first_crop += 1

    def _embed_audio(self, stop: int) -> None:
        first = self._audio_windows
        if stop <= first:
            return
        columns = mfcc_columns(self.audio, first * MFCC_PER_FRAME, (stop - 1) * MFCC_PER_FRAME + MFCC_WINDOW)
        blocks = np.stack([columns[:, (j - first) * MFCC_PER_FRAME:(j - first) * MFCC_PER_FRAME + MFCC_WINDOW]
                           for j in range(first, stop)])[:, None]
        for j, embedding in zip(range(first, stop), self.embedder.audio(blocks)):
            self._audio[j] = embedding
        self._audio_windows = stop


def measure(crops: np.ndarray, waveform_16k: np.ndarray, model) -> SyncScore | None:
    """The score of one run of face crops: ``crops`` N x 224 x 224 x 3 uint8 BGR at 25 fps (already
    made with the reference's rule, :func:`crop_face`), ``waveform_16k`` float32 in [-1, 1] from the
    run's first frame, ``model`` a SyncNet module (:func:`latentmuse.models.syncnet.load`) or an
    embedder. None when the run is too short for one window (fewer than 6 frames with audio)."""
    scorer = RunScorer(int16_scale(waveform_16k), as_embedder(model))
    for crop in crops:
        scorer.add_crop(crop)
    return scorer.finish()


# ------------------------------------------------------------------------------------------- the clip


@dataclass
class RunResult:
    """A scored run of the clip, in output frames (inclusive)."""

    first_frame: int
    last_frame: int
    score: SyncScore
    instant_frames: list[int]  # the output frame of each of the run's 25 fps frames (window i starts at i)

    def to_dict(self) -> dict:
        return {"first_frame": self.first_frame, "last_frame": self.last_frame, "frames": self.frames,
                "confidence": round(self.score.confidence, 4), "distance": round(self.score.distance, 4),
                "offset_frames": self.score.offset_frames}

    @property
    def frames(self) -> int:
        return self.last_frame - self.first_frame + 1


@dataclass
class ClipSync:
    """The clip's score: its scored runs combined, weighted by their frames."""

    runs: list[RunResult] = field(default_factory=list)
    runs_too_short: int = 0  # runs of the dubbed face shorter than the minimum (not scored)
    frames_too_short: int = 0
    min_run: int = DEFAULT_MIN_RUN
    resampled: str | None = None  # how a frame rate other than 25 fps was sampled
    seconds: float = 0.0

    @property
    def frames_scored(self) -> int:
        return sum(r.frames for r in self.runs)

    def _weighted(self, value: Callable[[SyncScore], float]) -> float | None:
        total = self.frames_scored
        return sum(r.frames * value(r.score) for r in self.runs) / total if total else None

    @property
    def confidence(self) -> float | None:
        return self._weighted(lambda s: s.confidence)

    @property
    def distance(self) -> float | None:
        return self._weighted(lambda s: s.distance)

    @property
    def offset_frames(self) -> int | None:
        """The offset that most scored frames agree on."""
        if not self.runs:
            return None
        votes: dict[int, int] = {}
        for r in self.runs:
            votes[r.score.offset_frames] = votes.get(r.score.offset_frames, 0) + r.frames
        return max(votes, key=lambda offset: (votes[offset], -abs(offset)))

    def weakest(self) -> dict | None:
        """The second (25 windows, or a whole shorter run) of lowest mean per-window confidence."""
        best = None
        for run in self.runs:
            track = run.score.per_frame
            span = min(WEAKEST_SPAN, len(track))
            means = np.convolve(track, np.ones(span) / span, mode="valid")
            i = int(np.argmin(means))
            if best is None or means[i] < best[0]:  # the last window's last crop ends the stretch
                best = (float(means[i]), run.instant_frames[i], run.instant_frames[i + span - 1 + LIP_FRAMES - 1])
        if best is None:
            return None
        return {"first_frame": best[1], "last_frame": best[2], "confidence": round(best[0], 4)}

    def per_second(self) -> list[list]:
        """The per-window confidence in one-second steps (25 windows; a run's last step may be shorter):
        ``[first_frame, last_frame, mean confidence]`` each, in output frames, run after run: where the
        sync is weak along the clip, small enough for any clip's report (one entry a second)."""
        out = []
        for run in self.runs:
            track = run.score.per_frame
            for i in range(0, len(track), WEAKEST_SPAN):
                j = min(i + WEAKEST_SPAN, len(track))
                out.append([run.instant_frames[i], run.instant_frames[j - 1 + LIP_FRAMES - 1],
                            round(float(track[i:j].mean()), 4)])
        return out

    @property
    def status(self) -> str:
        return "scored" if self.runs else "no_scorable_run"

    def to_dict(self) -> dict:
        round4 = (lambda v: None if v is None else round(v, 4))
        return {"status": self.status, "confidence": round4(self.confidence), "distance": round4(self.distance),
                "offset_frames": self.offset_frames, "frames_scored": self.frames_scored,
                "runs": [r.to_dict() for r in self.runs], "runs_too_short": self.runs_too_short,
                "frames_too_short": self.frames_too_short, "min_run": self.min_run, "weakest": self.weakest(),
                "per_second": self.per_second(),
                "resampled": self.resampled, "seconds": round(self.seconds, 3)}


class ClipScorer:
    """A clip's output frames in order, each with the dubbed face's box or None, cut into runs and scored.

    ``waveform_16k``: the clip's audio (float, [-1, 1]) from output frame 0; ``fps`` the output's rate.
    A frame without the dubbed face ends a run; runs of fewer than ``min_run`` output frames are counted,
    not scored. At a rate other than 25 fps each run is sampled at 40 ms instants from its first frame
    (the frame nearest each), as the reference's ffmpeg conversion to 25 fps does.
    """

    def __init__(self, waveform_16k: np.ndarray, fps: Fraction | float, embedder: SyncEmbedder,
                 min_run: int = DEFAULT_MIN_RUN) -> None:
        self.audio = int16_scale(waveform_16k)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.embedder, self.min_run = embedder, min_run
        self.result = ClipSync(min_run=min_run, resampled=None if self.fps == FPS else
                               f"{float(self.fps):g} fps sampled at 25 fps (the frame nearest each 40 ms instant)")
        self._index = 0  # next output frame
        self._run: RunScorer | None = None
        self._run_first = 0
        self._run_frames = 0
        self._run_instants = 0  # 25 fps frames handed to the run
        self._instant_frames: list[int] = []
        self._last: tuple[np.ndarray, Sequence[float]] | None = None

    def add(self, frame: np.ndarray, box: Sequence[float] | None) -> None:
        tic = time.perf_counter()
        if box is None:
            self._end_run()
        else:
            if self._run is None:
                self._start_run()
            self._run_frames += 1
            self._last = (frame, box)
            self._feed(until=self._run_frames - 1, frame=frame, box=box)
        self._index += 1
        self.result.seconds += time.perf_counter() - tic

    def finish(self) -> ClipSync:
        tic = time.perf_counter()
        self._end_run()
        self.result.seconds += time.perf_counter() - tic
        return self.result

    # ------------------------------------------------------------------------------------------------
    def _start_run(self) -> None:
        start = round(Fraction(self._index) * SAMPLE_RATE / self.fps)
        self._run = RunScorer(self.audio[start:], self.embedder)
        self._run_first, self._run_frames, self._run_instants = self._index, 0, 0
        self._instant_frames = []

    def _nearest(self, instant: int) -> int:
        """The run's frame nearest 25 fps instant ``instant`` (halves round up)."""
        return math.floor(Fraction(instant) * self.fps / FPS + Fraction(1, 2))

    def _feed(self, until: int, frame: np.ndarray, box: Sequence[float]) -> None:
        """Hand the run every 25 fps instant whose nearest frame is ``until`` or earlier."""
        while self._nearest(self._run_instants) <= until:
            self._instant_frames.append(self._run_first + min(self._nearest(self._run_instants), until))
            self._run.add(frame, box)
            self._run_instants += 1

    def _end_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        # instants inside the run whose nearest frame would be past its end take its last frame
        while Fraction(self._run_instants) * self.fps / FPS < self._run_frames:
            self._instant_frames.append(self._run_first + self._run_frames - 1)
            run.add(*self._last)
            self._run_instants += 1
        last = self._run_first + self._run_frames - 1
        if self._run_frames < self.min_run:
            self.result.runs_too_short += 1
            self.result.frames_too_short += self._run_frames
            return
        score = run.finish()
        if score is None:
            self.result.runs_too_short += 1
            self.result.frames_too_short += self._run_frames
            return
        self.result.runs.append(RunResult(self._run_first, last, score, self._instant_frames))


class SyncTap:
    """Feeds a :class:`ClipScorer` the frames a run writes, as they are written.

    The generation loop says which face each output frame shows (:meth:`expect`, in output order); the
    encoder's thread hands the frame itself, pasted, to :meth:`write` just after the video writer took it
    (:meth:`over` puts the tap in front of the writer), so the score is of the very pixels encoded,
    without a second decode. A failure of the scoring is recorded (``error``) and scoring stops; the
    video is never lost to it.
    """

    def __init__(self, scorer: ClipScorer) -> None:
        self.scorer = scorer
        self.sink = None
        self.error: str | None = None
        self._boxes: deque = deque()

    def over(self, sink) -> SyncTap:
        self.sink = sink
        return self

    def expect(self, face) -> None:
        """The next output frame's dubbed face (a :class:`~.contracts.Face`, or None)."""
        self._boxes.append(None if face is None else face.box)

    def write(self, frame: np.ndarray) -> None:
        self.sink.write(frame)
        box = self._boxes.popleft()
        if self.error is None:
            try:
                self.scorer.add(frame, box)
            except Exception as exc:  # noqa: BLE001 - the score is a report line, never the video's end
                from .generators.chain import describe

                self.error = describe(exc)

    def result(self) -> dict:
        """The report's ``sync`` block: the clip's score, or why there is none."""
        if self.error is None:
            try:
                return self.scorer.finish().to_dict()
            except Exception as exc:  # noqa: BLE001
                from .generators.chain import describe

                self.error = describe(exc)
        return {"status": "error", "error": self.error, "seconds": round(self.scorer.result.seconds, 3)}


__all__ = ["ClipScorer", "ClipSync", "RunScorer", "RunnerEmbedder", "SyncEmbedder", "SyncScore", "SyncTap",
           "as_embedder", "box_parameters", "calc_pdist", "crop_face", "int16_scale", "measure", "mfcc", "mfcc_columns",
           "module_embedder"]
