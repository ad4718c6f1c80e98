"""Decoding an audio track once: the native-rate buffer the writer muxes, and the 16 kHz mono waveform
the features are computed from, both from the same decoded samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ...errors import LatentmuseError
from .opening import _audio_stream, _corrupt, _open_input


@dataclass(frozen=True)
class AudioTrack:
    """A file's first audio track, decoded once and kept as the decoder gave it.

    ``samples`` is planar, (channels, n), in the decoder's own sample type (``sample_format``, the
    planar form of its format: ``s16p`` for 16-bit PCM, ``fltp`` for AAC/Opus/MP3), at the decoder's
    ``sample_rate`` and channel ``layout``. Keeping the decoder's type (not float32) is what makes
    :meth:`mono` equal, sample for sample, to resampling the decoded frames directly: swresample
    resamples 16-bit input in 16-bit arithmetic. ``frame_sizes`` are the decoded frames' lengths, so
    :meth:`frames` hands resamplers the same frames the decoder did. ``duration`` is the stream's
    stated duration in seconds (None when unstated), used to drop a lossy codec's end padding.
    """

    path: Path
    samples: np.ndarray = field(repr=False)
    sample_format: str
    sample_rate: int
    layout: str
    frame_sizes: tuple[int, ...] = field(repr=False)
    duration: Fraction | None = None

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def seconds(self) -> float:
        """Length of the decoded samples (end padding included)."""
        return self.samples.shape[1] / self.sample_rate if self.sample_rate else 0.0

    def frames(self) -> Iterator[av.AudioFrame]:
        """The decoded frames again, without timestamps (resample by sample count: stray timestamps
        must not insert gaps), for a resampler."""
        start = 0
        for size in self.frame_sizes:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(self.samples[:, start : start + size]), format=self.sample_format, layout=self.layout
            )
            frame.sample_rate = self.sample_rate
            start += size
            yield frame

    def mono(self, sample_rate: int = 16000) -> np.ndarray:
        """The track as mono float32 in [-1, 1] at ``sample_rate``: what the audio features take.

        Lossy codecs decode whole frames: an AAC track ends with up to one frame of encoder padding
        past its stated duration (mp4 edit lists say where it really ends). That padding is dropped,
        but only when the excess is at most about one codec frame, so an estimated (wrong) duration,
        e.g. of a VBR mp3 without a header, never cuts real audio. An empty track is an error.
        """
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in self.frames() for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
        if self.duration is not None:
            stated = round(self.duration * sample_rate)
            slack = int(2048 * sample_rate / (self.sample_rate or sample_rate)) + 2
            excess = audio.size - stated
            if 0 < excess <= slack:
                audio = audio[:stated]
        if audio.size == 0:
            raise LatentmuseError(f"the audio track of {self.path} is empty (0 samples).", "pass audio with speech in it.")
        np.clip(audio, -1.0, 1.0, out=audio)
        return audio


class TrackDecoder:
    """Decodes one audio stream's packets, fed one at a time, into an :class:`AudioTrack`.

    :func:`decode_audio` feeds it a container's packets of that stream; :func:`~.probing.probe_clip`
    feeds it the audio packets of the same demux pass that reads the video's timestamps, so a video
    whose own track is the audio is opened and read once for both.
    """

    def __init__(self, stream, path: Path) -> None:
        stream.thread_type = "AUTO"
        cc = stream.codec_context
        self.stream, self.path = stream, path
        self.duration = Fraction(stream.duration) * Fraction(stream.time_base) if stream.duration and stream.time_base else None
        self.fmt, self.layout, self.rate = cc.format.planar.name if cc.format else "fltp", cc.layout.name, cc.sample_rate
        self.planes: list[np.ndarray] = []

    def feed(self, packet: av.Packet) -> None:
        """Decode one packet (the demuxer's empty end-of-stream packet flushes the decoder)."""
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            raise _corrupt(self.path, exc) from None
        for frame in frames:
            if not self.planes:  # the decoder's actual output, which a header may misstate
                self.fmt, self.layout, self.rate = frame.format.planar.name, frame.layout.name, frame.sample_rate
            elif (frame.format.planar.name, frame.layout.name, frame.sample_rate) != (self.fmt, self.layout, self.rate):
                raise _corrupt(self.path, ValueError("the audio format changes mid-stream"))
            array = frame.to_ndarray()
            if not frame.format.is_planar:  # packed: (1, n * channels) interleaved
                array = array.reshape(-1, frame.layout.nb_channels).T
            self.planes.append(array)

    def track(self) -> AudioTrack:
        channels = av.AudioLayout(self.layout).nb_channels
        samples = np.concatenate(self.planes, axis=1) if self.planes else np.zeros((channels, 0), np.float32)
        return AudioTrack(path=self.path, samples=samples, sample_format=self.fmt, sample_rate=int(self.rate or 0),
                          layout=self.layout, frame_sizes=tuple(p.shape[1] for p in self.planes), duration=self.duration)


def decode_audio(path: Path | str, *, what: str = "video") -> AudioTrack:
    """Decode the first audio track of any file PyAV reads, once, into an :class:`AudioTrack`.

    ``what`` is where the audio was asked for: the ``"video"``'s own track, or an ``"audio file"``
    given on its own (``--audio``, which may be a video too); it chooses the fix when there is no
    track. An empty track decodes (the writer pads it with silence); :meth:`AudioTrack.mono` refuses it.
    """
    path = Path(path)
    container = _open_input(path, "audio file")
    with container:
        decoder = TrackDecoder(_audio_stream(container, path, what), path)
        try:
            for packet in container.demux(decoder.stream):
                decoder.feed(packet)
        except av.FFmpegError as exc:
            raise _corrupt(path, exc) from None
    return decoder.track()


def load_audio(path: Path | str, sample_rate: int = 16000, *, what: str = "video") -> np.ndarray:
    """The first audio track of any file PyAV reads, as mono float32 in [-1, 1] at ``sample_rate``
    (:func:`decode_audio` then :meth:`AudioTrack.mono`; decode once and keep the track when the
    writer needs it too)."""
    return decode_audio(path, what=what).mono(sample_rate)
