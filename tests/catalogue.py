"""Media for the input catalogue (tests/test_catalogue.py), generated here with PyAV: nothing is committed.

Every video shows the same *upright* scene: four quadrants of distinct gray levels (top-left 220,
top-right 160, bottom-left 100, bottom-right 40), which survive any codec, chroma subsampling and
gray pixel format, and tell all eight orientations apart. A clip with display rotation stores the
scene turned the other way and asks players (through its display matrix) to turn it back, so what a
player shows is always the upright scene. Reading it back here uses PyAV's own ``frame.rotation``
and numpy, not the code under test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

QUADRANTS = (220, 160, 100, 40)  # top-left, top-right, bottom-left, bottom-right

#: Input encoders by codec name: (FFmpeg encoder, default pixel format, options). Fast settings: the
#: clips are tiny and only their structure matters.
ENCODERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", "yuv420p", {"crf": "12", "preset": "ultrafast"}),
    "hevc": ("libx265", "yuv420p", {"crf": "12", "preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "mpeg4": ("mpeg4", "yuv420p", {"flags": "+qscale", "global_quality": "236"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"flags": "+qscale", "global_quality": "236"}),
    "prores": ("prores_ks", "yuv422p10le", {"profile": "3"}),
}
#: The audio codec each input container gets for its own track.
CONTAINER_AUDIO = {".mp4": "aac", ".m4v": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus",
                   ".avi": "libmp3lame", ".m4a": "aac", ".wav": "pcm_s16le", ".flac": "flac",
                   ".mp3": "libmp3lame", ".opus": "libopus", ".ogg": "libopus"}
MUXERS = {".mkv": "matroska", ".m4a": "mp4", ".opus": "ogg", ".m4v": "mp4"}
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def have_encoder(name: str) -> bool:
    return name in av.codecs_available


def scene(width: int, height: int) -> np.ndarray:
    """The upright scene (BGR uint8): four gray quadrants (a 1-pixel-wide frame keeps the left half)."""
    frame = np.empty((height, width, 3), np.uint8)
    top, left = max(1, height // 2), max(1, width // 2)
    frame[:top, :left], frame[:top, left:] = QUADRANTS[0], QUADRANTS[1]
    frame[top:, :left], frame[top:, left:] = QUADRANTS[2], QUADRANTS[3]
    return frame


def quadrant_levels(frame: np.ndarray) -> tuple[int, int, int, int]:
    """Mean level of each quadrant (top-left, top-right, bottom-left, bottom-right), rounded."""
    height, width = frame.shape[:2]
    top, left = max(1, height // 2), max(1, width // 2)
    parts = (frame[:top, :left], frame[:top, left:], frame[top:, :left], frame[top:, left:])
    return tuple(int(round(float(p.mean()))) if p.size else -1 for p in parts)  # type: ignore[return-value]


def stored_for_display(upright: np.ndarray, rotation: int, hflip: bool) -> np.ndarray:
    """The pixels to store so that a player honouring ``set_display_rotation(rotation, hflip)``
    (PyAV: turn ``rotation`` degrees counter-clockwise, then mirror left-right) shows ``upright``."""
    image = upright[:, ::-1] if hflip else upright
    return np.ascontiguousarray(np.rot90(image, k=-(rotation // 90)))


@dataclass(frozen=True)
class Tone:
    """An audio track: a sine per channel (440, 550, 660 ... Hz), or silence."""

    seconds: float
    rate: int = 16000
    channels: int = 1
    silent: bool = False

    def samples(self) -> np.ndarray:
        n = int(round(self.seconds * self.rate))
        t = np.arange(n) / self.rate
        rows = [np.zeros(n) if self.silent else 0.4 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(self.channels)]
        return np.asarray(rows, np.float32).reshape(self.channels, n)


def _as_format(samples: np.ndarray, fmt: str, layout: str, rate: int) -> av.AudioFrame:
    """(channels, n) float samples as a frame in sample format ``fmt`` (planar or packed, float or int)."""
    base, planar = fmt.rstrip("p"), fmt.endswith("p")
    if base == "flt":
        data = samples.astype(np.float32)
    else:
        scale, dtype = {"s16": (32767, np.int16), "s32": (2147483647, np.int32)}[base]
        data = np.round(np.clip(samples, -1, 1).astype(np.float64) * scale).astype(dtype)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data if planar else data.T.reshape(1, -1)),
                                       format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def _encode_audio(container, stream, tone: Tone) -> None:
    """Encode the tone in frames of the encoder's frame size, the last one short (never padded, so
    the track lasts exactly ``tone.seconds``), resampled first when the encoder needs another rate."""
    samples = tone.samples()
    layout = LAYOUTS[tone.channels]
    rate = stream.codec_context.sample_rate
    if rate != tone.rate and samples.shape[1]:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        src = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        src.sample_rate = tone.rate
        samples = np.concatenate([f.to_ndarray() for f in resampler.resample(src) + resampler.resample(None)], axis=1)
    fmt = stream.codec_context.format.name
    probe = av.CodecContext.create(stream.codec_context.name, "w")  # the frame size is known once open
    probe.sample_rate, probe.layout, probe.format = rate, layout, fmt
    probe.open()
    size = probe.frame_size or 1024
    for start in range(0, samples.shape[1], size):
        frame = _as_format(samples[:, start : start + size], fmt, layout, rate)
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _add_audio(container, suffix: str, tone: Tone, codec: str | None):
    codec = codec or CONTAINER_AUDIO[suffix]
    rate = tone.rate
    rates = av.codec.Codec(codec, "w").audio_rates
    if rates and rate not in rates:
        rate = min([r for r in rates if r >= rate] or [max(rates)])
    stream = container.add_stream(codec, rate=rate)
    stream.layout = LAYOUTS[tone.channels]
    stream.format = stream.codec_context.codec.audio_formats[0].name
    return stream


def write_audio(path: Path, tone: Tone, codec: str | None = None) -> Path:
    """An audio-only file; the container and codec follow the extension (or ``codec``). A zero-length
    tone is a wav with a header and no samples (PyAV writes no file without a packet)."""
    if tone.seconds == 0:
        if path.suffix.lower() != ".wav":
            raise ValueError("a zero-length audio file is written as wav")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(tone.channels)
            out.setsampwidth(2)
            out.setframerate(tone.rate)
        return path
    with av.open(str(path), "w", format=MUXERS.get(path.suffix.lower())) as container:
        stream = _add_audio(container, path.suffix.lower(), tone, codec)
        _encode_audio(container, stream, tone)
    return path


def write_video(
    path: Path,
    *,
    codec: str = "h264",
    pix_fmt: str | None = None,
    size: tuple[int, int] = (64, 48),
    frames: int = 5,
    fps: Fraction = Fraction(25),
    rotation: int = 0,
    hflip: bool = False,
    pts: list[int] | None = None,
    audio: Tone | None = None,
    audio_codec: str | None = None,
    container_format: str | None = None,
    state_rate: bool = True,
    picture: Callable[[int], np.ndarray] | None = None,
    sample_aspect_ratio: Fraction | None = None,
) -> Path:
    """A video of the upright scene, ``size`` = the *displayed* (width, height).

    ``rotation``/``hflip``: stored turned, with a display matrix asking players to turn it back
    (:func:`stored_for_display`). ``pts``: the frames' timestamps in 1/fps units (variable frame rate).
    ``audio``: its own track, in the container's usual audio codec unless ``audio_codec``.
    ``state_rate=False``: the container states no frame rate (Matroska without DefaultDuration).
    ``picture(i)``: frame i as displayed (BGR, ``size``) instead of the still scene.
    ``sample_aspect_ratio``: non-square pixels (anamorphic DV, HDV), stated in the stream.
    """
    encoder, default_fmt, options = ENCODERS[codec]
    pix_fmt = pix_fmt or default_fmt
    suffix = path.suffix.lower()
    stored = stored_for_display(scene(*size), rotation, hflip)
    height, width = stored.shape[:2]
    with av.open(str(path), "w", format=container_format or MUXERS.get(suffix)) as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = 1 / Fraction(fps)
        stream.codec_context.time_base = 1 / Fraction(fps)
        stream.options = dict(options)
        if not state_rate:
            stream.codec_context.framerate = Fraction(0, 1)
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        astream = _add_audio(container, suffix, audio, audio_codec) if audio is not None else None
        source = av.VideoFrame.from_ndarray(stored, format="bgr24").reformat(format=pix_fmt)
        for i in range(frames):
            if picture is not None:
                turned = stored_for_display(picture(i), rotation, hflip)
                source = av.VideoFrame.from_ndarray(turned, format="bgr24")
            frame = source.reformat(format=pix_fmt)
            frame.pts = i if pts is None else pts[i]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, audio)
    return path


@dataclass(frozen=True)
class Decoded:
    """What a player would show of a file: its frames turned by their display rotation, and its audio."""

    frames: list[np.ndarray]  # displayed, BGR
    fps: Fraction  # the stream's average rate
    sample_aspect_ratio: Fraction | None
    rotations: set[int]  # PyAV frame.rotation values seen (counter-clockwise degrees)
    codec: str
    codec_tag: str  # the container's FourCC for it (hvc1, XVID, ...)
    pix_fmt: str
    audio_codec: str | None
    channels: int | None
    rate: int | None
    audio_seconds: float | None  # decoded samples / rate (what a player plays)
    container_format: str

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.frames[0].shape[:2]
        return width, height


def decode(path: Path) -> Decoded:
    """Decode every frame and the first audio track with PyAV alone (pure rotations only)."""
    frames, rotations = [], set()
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        codec, tag = vstream.codec_context.name, vstream.codec_context.codec_tag
        sar = Fraction(vstream.sample_aspect_ratio) if vstream.sample_aspect_ratio else None
        rate = vstream.average_rate or vstream.guessed_rate  # Matroska may state no average
        fps = Fraction(rate) if rate else Fraction(0)
        fmt_name = container.format.name
        pix_fmt = ""
        for frame in container.decode(vstream):
            rotations.add(int(frame.rotation))
            pix_fmt = frame.format.name
            image = frame.to_ndarray(format="bgr24")
            frames.append(np.ascontiguousarray(np.rot90(image, k=round(frame.rotation / 90))))
    audio_codec = channels = rate = seconds = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            astream = container.streams.audio[0]
            audio_codec, rate = astream.codec_context.name, astream.codec_context.sample_rate
            channels = astream.codec_context.layout.nb_channels
            n = sum(f.samples for f in container.decode(astream))
            seconds = n / rate
            if astream.duration and astream.time_base:  # mp4 edit lists cut AAC priming and padding
                seconds = min(seconds, float(astream.duration * astream.time_base))
    return Decoded(frames, fps, sar, rotations, codec, tag, pix_fmt, audio_codec, channels, rate, seconds, fmt_name)


def snapshot(*paths: Path) -> dict[Path, tuple[bytes, int]]:
    """Bytes and mtime of each input, to show a run left them untouched."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths if p.is_file()}


def truncate_copy(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def copy_as(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs mounted at ``folder`` (a full disk, or a read-only one, for real); the test is
    skipped, saying why, when this machine does not allow mounting (not root, or no CAP_SYS_ADMIN)."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip() or done.returncode})")
    try:
        yield folder
    finally:
        subprocess.run([shutil.which("umount") or "umount", str(folder)], check=True, capture_output=True)
