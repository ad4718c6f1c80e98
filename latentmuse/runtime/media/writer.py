"""Writing the output: frame sinks, and the H.264 + AAC writer that is atomic and keeps the audio in sync."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol

import av
import numpy as np
from av.video.reformatter import Interpolation

from ...errors import LatentmuseError
from .opening import _audio_stream, _corrupt, _first_line, _open_input
from .paths import check_output_path

# swscale's default RGB <-> YUV conversion darkens by ~2 levels per round trip (white 255 comes back
# as 250..253). Accurate rounding with full chroma interpolation makes the round trip unbiased
# (mean error ~0.02 levels on a photograph) at ~8 ms (encode) + ~13 ms (decode) per 1080p frame.
_ENCODE_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


class FrameSink(Protocol):
    """Where output frames go, in order: an encoder or a list."""

    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


@dataclass
class MemorySink:
    """A lossless sink that keeps every written frame (a copy) in ``frames``: the tests' reference."""

    frames: list[np.ndarray] = field(default_factory=list)
    closed: bool = False

    def write(self, frame: np.ndarray) -> None:
        if self.closed:
            raise ValueError("write to a closed MemorySink")
        self.frames.append(np.array(frame, dtype=np.uint8, copy=True))

    def close(self) -> None:
        self.closed = True

    @property
    def frames_written(self) -> int:
        return len(self.frames)

    def __enter__(self) -> "MemorySink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _aac_rate(rate: int) -> int:
    if rate in _AAC_RATES:
        return rate
    higher = [r for r in _AAC_RATES if r >= rate]
    return min(higher) if higher else 48000


class VideoWriter:
    """Stream-encode BGR frames to H.264 and mux the audio on success; atomic, temp-file based.

    ``VideoWriter(path, width, height, fps, audio_source)`` validates ``path``
    (:func:`check_output_path`, with ``audio_source`` as an input), then encodes each ``write(frame)``
    with libx264 (yuv420p, ``crf``, preset ``medium``) into a hidden temporary file in the output's
    folder, with the video time base exactly 1/fps. ``close()`` (or a clean ``with`` exit) encodes
    ``audio_source``'s first audio track as AAC (its own sample rate and channel layout; trimmed to
    ``frames_written / fps`` seconds, or padded with silence to it), interleaves it with the video
    and renames the result onto ``path`` atomically. An exception inside the ``with`` block, or
    ``abort()``, deletes the temporary files and leaves nothing at ``path``. The audio is always
    re-encoded (never stream-copied), so the trim is sample-exact; it is taken from the source's first
    decoded sample (a container start offset between its audio and video is ignored, as
    :func:`load_audio` ignores it too, so features and output stay in sync).

    Odd width or height: the frame is padded by one pixel (last column / row repeated) to an even
    size; :attr:`encoded_size` is the size in the file.
    """

    def __init__(
        self,
        path: Path | str,
        width: int,
        height: int,
        fps: Fraction,
        audio_source: Path | str | None = None,
        *,
        crf: int = 18,
        preset: str = "medium",
    ) -> None:
        self.path = check_output_path(
            path, [audio_source] if audio_source is not None else [], extensions=OUTPUT_FORMATS
        )
        if width <= 0 or height <= 0:
            raise ValueError(f"invalid frame size {width}x{height}")
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"invalid frame rate {fps}")
        self.audio_source = Path(audio_source) if audio_source is not None else None
        if self.audio_source is not None:  # fail now, not after encoding the whole video
            with _open_input(self.audio_source, "audio file") as probe_container:
                _audio_stream(probe_container, self.audio_source)
        self.encoded_size = (self.width + self.width % 2, self.height + self.height % 2)
        self.frames_written = 0
        self.audio_padded_s = 0.0  # silence appended to a shorter audio source, seconds
        self._format = OUTPUT_FORMATS[self.path.suffix.lower()]
        self._final_tmp = self.path.with_name(f".{self.path.name}.partial{self.path.suffix}")
        self._video_tmp = (
            self.path.with_name(f".{self.path.name}.video.partial{self.path.suffix}")
            if self.audio_source is not None
            else self._final_tmp
        )
        self._closed = False
        try:
            direct = self.audio_source is None  # no audio: this file is the final one
            options = {"movflags": "+faststart"} if direct and self._format in ("mp4", "mov") else {}
            self._container = av.open(str(self._video_tmp), mode="w", format=self._format, container_options=options)
            stream = self._container.add_stream("libx264", rate=self.fps)
            stream.width, stream.height = self.encoded_size
            stream.pix_fmt = "yuv420p"
            stream.time_base = 1 / self.fps
            cc = stream.codec_context
            cc.time_base = 1 / self.fps
            cc.framerate = self.fps
            cc.colorspace = 6  # BT.601 matrix (smpte170m), what bgr24 -> yuv420p conversion uses
            cc.color_range = 1  # limited ("tv") range
            stream.options = {"crf": str(int(crf)), "preset": preset}
            stream.thread_type = "AUTO"
            self._stream = stream
        except av.FFmpegError as exc:
            self._cleanup()
            raise LatentmuseError(
                f"cannot start writing {self.path} ({_first_line(exc)}).", "check the output path and disk space."
            ) from None

    # -- context manager

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    # -- frames

    def write(self, frame: np.ndarray) -> None:
        if self._closed:
            raise ValueError("write to a closed VideoWriter")
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {self.frames_written} is {frame.dtype} {frame.shape}, expected uint8 "
                f"({self.height}, {self.width}, 3)"
            )
        pad_h, pad_w = self.height % 2, self.width % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        vf = vf.reformat(format="yuv420p", interpolation=_ENCODE_FLAGS)
        vf.pts = self.frames_written
        vf.time_base = self._stream.codec_context.time_base
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except av.FFmpegError as exc:
            self.abort()
            raise LatentmuseError(f"encoding {self.path} failed ({_first_line(exc)}).", "check free disk space.") from None
        self.frames_written += 1

    # -- finishing

    def close(self) -> None:
        """Flush the encoder, mux the audio and move the file into place."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise LatentmuseError(f"no frames were written to {self.path}.", "check the input video.")
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            if self.audio_source is not None:
                self._mux_audio()
            os.replace(self._final_tmp, self.path)
        except LatentmuseError:
            self.abort()
            raise
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise LatentmuseError(f"finishing {self.path} failed ({_first_line(exc)}).", "check free disk space.") from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._closed = True
        self._cleanup()

    def abort(self) -> None:
        """Stop and delete every temporary file; nothing is written at ``path``."""
        self._closed = True
        if getattr(self, "_container", None) is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._container = None
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp in {self._video_tmp, self._final_tmp}:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass

    @property
    def duration_s(self) -> Fraction:
        return Fraction(self.frames_written) / self.fps

    def _audio_packets(self, astream) -> Iterator[av.Packet]:
        """Encoded AAC packets of the audio source, trimmed / silence-padded to the video length."""
        rate = astream.codec_context.sample_rate
        layout = astream.codec_context.layout
        channels = layout.nb_channels
        target = round(self.duration_s * rate)
        frame_size = astream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        buffer = np.zeros((channels, 0), np.float32)
        taken = 0  # samples taken from the source (<= target)
        sent = 0  # samples given to the encoder

        def encode(samples: np.ndarray | None) -> Iterator[av.Packet]:
            nonlocal sent
            if samples is None:
                yield from astream.encode(None)
                return
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = sent
            frame.time_base = Fraction(1, rate)
            sent += samples.shape[1]
            yield from astream.encode(frame)

        with _open_input(self.audio_source, "audio file") as source:
            src = _audio_stream(source, self.audio_source)
            try:
                for decoded in source.decode(src):
                    decoded.pts = None
                    for res in resampler.resample(decoded):
                        if taken >= target:
                            break
                        arr = res.to_ndarray()[:, : target - taken]
                        taken += arr.shape[1]
                        buffer = np.concatenate([buffer, arr], axis=1)
                        while buffer.shape[1] >= frame_size:
                            yield from encode(buffer[:, :frame_size])
                            buffer = buffer[:, frame_size:]
                    if taken >= target:
                        break
                if taken < target:
                    for res in resampler.resample(None):
                        arr = res.to_ndarray()[:, : target - taken]
                        taken += arr.shape[1]
                        buffer = np.concatenate([buffer, arr], axis=1)
            except av.FFmpegError as exc:
                raise _corrupt(self.audio_source, exc) from None
        self.audio_padded_s = (target - taken) / rate  # silence added at the end (0 when trimmed)
        buffer = np.concatenate([buffer, np.zeros((channels, target - taken), np.float32)], axis=1)
        while buffer.shape[1] > 0:
            yield from encode(buffer[:, :frame_size])
            buffer = buffer[:, frame_size:]
        yield from encode(None)

    def _audio_settings(self) -> tuple[int, str]:
        """AAC sample rate and channel layout for the audio source: its own whenever AAC accepts them."""
        with _open_input(self.audio_source, "audio file") as source:
            src = _audio_stream(source, self.audio_source)
            rate = _aac_rate(src.codec_context.sample_rate or 48000)
            layout = src.codec_context.layout
            channels = layout.nb_channels if layout is not None else 0
            name = layout.name if channels else ""
        if "channels" in name:  # unspecified channel order (e.g. wav): the default layout for the count
            name = _DEFAULT_LAYOUTS.get(channels, "")
        if name:
            try:  # the native AAC encoder knows mono .. 7.1; anything else is downmixed to stereo
                cc = av.CodecContext.create("aac", "w")
                cc.sample_rate, cc.layout, cc.format = rate, name, "fltp"
                cc.open()
                cc.close() if hasattr(cc, "close") else None
                return rate, name
            except (av.FFmpegError, ValueError):
                pass
        return rate, "stereo"

    def _mux_audio(self) -> None:
        rate, layout = self._audio_settings()
        options = {"movflags": "+faststart"} if self._format in ("mp4", "mov") else {}
        with av.open(str(self._video_tmp), mode="r") as video_in, av.open(
            str(self._final_tmp), mode="w", format=self._format, container_options=options
        ) as out:
            vin = video_in.streams.video[0]
            vout = out.add_stream_from_template(vin)
            vout.time_base = vin.time_base
            astream = out.add_stream("aac", rate=rate)
            astream.layout = layout
            astream.format = "fltp"
            astream.codec_context.bit_rate = 128000 if astream.codec_context.layout.nb_channels == 1 else 192000
            audio = self._audio_packets(astream)
            pending = next(audio, None)
            for packet in video_in.demux(vin):
                if packet.size == 0:
                    continue
                t = float(packet.dts * packet.time_base) if packet.dts is not None else 0.0
                while pending is not None and (pending.pts is None or float(pending.pts * pending.time_base) <= t):
                    out.mux(pending)
                    pending = next(audio, None)
                packet.stream = vout
                out.mux(packet)
            while pending is not None:
                out.mux(pending)
                pending = next(audio, None)
        self._video_tmp.unlink()
