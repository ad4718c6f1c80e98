"""Writing the output: frame sinks, and the video writer that is atomic, safe against concurrent
writers and a full disk, and keeps the audio in sync (encoded into the same file as the frames)."""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol

import av
import numpy as np

from ...errors import LatentmuseError
from ...files import AtomicFile
from .audio import AudioTrack, decode_audio
from .formats import ENCODE_FLAGS, OUTPUT_FORMATS, VideoCodec, audio_encoder, choose_codec, output_format
from .opening import _first_line
from .paths import check_output_path

_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_SAMPLE_FORMATS = ("fltp", "flt", "s16p", "s16", "s32p", "s32")  # preferred first; what _audio_frame makes
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


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


def _supported_rate(encoder: str, rate: int) -> int:
    """``rate`` when the encoder takes it, else the next higher rate it takes, else its highest."""
    rates = av.codec.Codec(encoder, "w").audio_rates
    if not rates or rate in rates:
        return rate
    higher = [r for r in rates if r >= rate]
    return min(higher) if higher else max(rates)


def _sample_format(encoder: str) -> str:
    offered = {f.name for f in av.codec.Codec(encoder, "w").audio_formats or ()}
    for name in _SAMPLE_FORMATS:
        if name in offered:
            return name
    raise LatentmuseError(f"the {encoder} encoder takes none of the sample formats {', '.join(_SAMPLE_FORMATS)}.",
                          "choose another output container.")


def _audio_frame(samples: np.ndarray, sample_fmt: str, layout: str, rate: int) -> av.AudioFrame:
    """(channels, n) float32 samples as an audio frame in the encoder's sample format."""
    base, planar = sample_fmt.rstrip("p"), sample_fmt.endswith("p")
    if base == "flt":
        data = samples.astype(np.float32, copy=False)
    else:
        top = 32767.0 if base == "s16" else 2147483647.0
        data = np.round(np.clip(samples, -1.0, 1.0).astype(np.float64) * top).astype(np.int16 if base == "s16" else np.int32)
    data = data if planar else data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_fmt, layout=layout)
    frame.sample_rate = rate
    return frame


class VideoWriter:
    """Stream-encode BGR frames, with the audio, into one temporary file renamed into place on success.

    ``VideoWriter(path, width, height, fps, audio, codec=...)`` validates ``path``
    (:func:`check_output_path`, with the audio's file as an input) and the codec for its container
    and the frame size (:func:`~.formats.choose_codec`: the container comes from the extension, see
    :mod:`.formats` for the matrix), then encodes each ``write(frame)`` into a temporary file in the
    output's folder, with the video time base exactly 1/fps and the frame size exactly
    ``width`` x ``height``. ``audio`` is an :class:`~.audio.AudioTrack` (decoded once by the caller,
    who also took the features from it) or a path (decoded here, once); its samples are encoded
    into the same file as the frames arrive (its own sample rate and channel layout whenever the
    container's audio codec takes them), up to the video's length so far, so the file is
    interleaved; ``close()`` (or a clean ``with`` exit) encodes the rest, trimmed to
    ``frames_written / fps`` seconds or padded with silence to it, flushes the file to disk and
    renames it onto ``path`` atomically (:class:`latentmuse.files.AtomicFile`). Nothing is remuxed:
    there is one temporary file per writer. The audio is always re-encoded (never stream-copied), so
    the trim is sample-exact; it is taken from the source's first decoded sample (a container start
    offset between its audio and video is ignored, as :func:`load_audio` ignores it too, so features
    and output stay in sync).

    Failure leaves nothing: an exception inside the ``with`` block, ``abort()``, or any error while
    writing (a full disk is one line: "no space left on the disk holding ...") deletes the temporary
    file and leaves nothing at ``path`` (an older file there is kept as it was). Temporary names are
    unique per writer (created with ``O_EXCL``, with the umask's permissions so the output has the
    usual mode), so two runs writing the same output never share a file: each renames its own
    complete file into place, and the last rename wins.
    """

    def __init__(
        self,
        path: Path | str,
        width: int,
        height: int,
        fps: Fraction,
        audio: AudioTrack | Path | str | None = None,
        *,
        codec: str = "auto",
        crf: int | None = None,
        preset: str = "medium",
        sample_aspect_ratio: Fraction | None = None,
    ) -> None:
        audio_path = audio.path if isinstance(audio, AudioTrack) else audio
        self.path = check_output_path(path, [audio_path] if audio_path is not None else [], extensions=OUTPUT_FORMATS)
        if width <= 0 or height <= 0:
            raise ValueError(f"invalid frame size {width}x{height}")
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"invalid frame rate {fps}")
        self.format = output_format(self.path)
        self.codec: VideoCodec = choose_codec(self.path, codec, (self.width, self.height))
        self.pix_fmt = self.codec.pixel_format(self.width, self.height)
        # a path is decoded now: a missing or broken track fails before the video is encoded
        self.audio: AudioTrack | None = (
            audio if isinstance(audio, AudioTrack) or audio is None else decode_audio(audio, what="audio file")
        )
        self.audio_source = self.audio.path if self.audio is not None else None
        self.encoded_size = (self.width, self.height)  # always the frame size: nothing is padded
        self.frames_written = 0
        self.audio_padded_s = 0.0  # silence appended to a shorter audio source, seconds
        self._closed = False
        self._container = None
        self._file: AtomicFile | None = None
        self._astream = None
        try:
            sweep_stale_partials(self.path)
            self._file = AtomicFile(self.path, prefix=f".{self.path.stem}.{_HOST}-{os.getpid()}-",
                                    suffix=f".partial{self.path.suffix}")
            options = {"movflags": "+faststart"} if self.format.faststart else {}
            self._container = av.open(
                str(self._file.temp), mode="w", format=self.format.container, container_options=options
            )
            stream = self._container.add_stream(self.codec.encoder, rate=self.fps)
            stream.width, stream.height = self.width, self.height
            stream.pix_fmt = self.pix_fmt
            stream.time_base = 1 / self.fps
            cc = stream.codec_context
            cc.time_base = 1 / self.fps
            cc.framerate = self.fps
            cc.colorspace = 6  # BT.601 matrix (smpte170m), what bgr24 -> YUV conversion uses
            cc.color_range = 2 if self.codec.full_range else 1  # "pc" (JPEG) or limited ("tv") range
            if sample_aspect_ratio is not None and sample_aspect_ratio > 0 and sample_aspect_ratio != 1:
                cc.sample_aspect_ratio = Fraction(sample_aspect_ratio)
            tag = self.codec.tags.get(self.format.container)
            if tag:
                cc.codec_tag = tag
            stream.options = self.codec.options(crf, preset)
            stream.thread_type = "AUTO"
            self._stream = stream
            if self.audio is not None:
                self._start_audio()
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise self._failure(exc, "starting to write") from None
        except BaseException:  # an interrupt (SIGINT/SIGTERM) between creating the temp file and returning
            self.abort()
            raise

    # -- errors

    def _failure(self, exc: BaseException, doing: str) -> LatentmuseError:
        """One line for an error while writing: a full disk, an unwritable folder, an I/O or encoder error."""
        folder = self.path.parent
        if isinstance(exc, LatentmuseError):
            return exc
        code = exc.errno if isinstance(exc, OSError) else None
        if code in _NO_SPACE:
            return LatentmuseError(
                f"no space left on the disk holding {folder} while {doing} {self.path.name}.",
                "free space or choose another output folder.",
            )
        if code in _NOT_WRITABLE:
            return LatentmuseError(
                f"cannot write into {folder} while {doing} {self.path.name} ({_first_line(exc)}).",
                "choose another output folder.",
            )
        if isinstance(exc, OSError) and not isinstance(exc, av.FFmpegError) or code == errno.EIO:
            return LatentmuseError(
                f"writing {self.path} failed while {doing} it ({_first_line(exc)}).",
                f"check the disk holding {folder}, or choose another output folder.",
            )
        return LatentmuseError(
            f"encoding {self.path} failed while {doing} it ({_first_line(exc)}).",
            f"try another --codec (this container takes {', '.join(self.format.codecs)}) or output container.",
        )

    # -- seams: every packet and every container close goes through these (tests inject faults here)

    def _mux(self, container, packet: av.Packet) -> None:
        container.mux(packet)

    def _finish(self, container) -> None:
        container.close()

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
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        vf = vf.reformat(format=self.pix_fmt, interpolation=ENCODE_FLAGS)
        vf.pts = self.frames_written
        vf.time_base = self._stream.codec_context.time_base
        try:
            for packet in self._stream.encode(vf):
                self._mux(self._container, packet)
            self.frames_written += 1
            if self._astream is not None:
                self._pump_audio(final=False)
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise self._failure(exc, "writing") from None
        except BaseException:
            self.abort()
            raise

    # -- finishing

    def close(self) -> None:
        """Flush the video encoder, encode the rest of the audio, flush the file to disk and move it
        into place."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise LatentmuseError(f"no frames were written to {self.path}.", "check the input video.")
            for packet in self._stream.encode(None):
                self._mux(self._container, packet)
            if self._astream is not None:
                self._pump_audio(final=True)
            container, self._container = self._container, None
            self._finish(container)
            self._file.commit()
        except LatentmuseError:
            self.abort()
            raise
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise self._failure(exc, "finishing") from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._closed = True

    def abort(self) -> None:
        """Stop and delete the temporary file; nothing is written at ``path``."""
        self._closed = True
        if getattr(self, "_container", None) is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._container = None
        if getattr(self, "_file", None) is not None:
            self._file.discard()

    @property
    def duration_s(self) -> Fraction:
        return Fraction(self.frames_written) / self.fps

    # -- audio

    def _start_audio(self) -> None:
        """Add the audio stream (the output's audio codec at the track's rate and layout where it
        takes them) and the resampler that turns the track's decoded frames into its input."""
        encoder = audio_encoder(self.format, self.codec)
        rate, layout, sample_fmt, frame_size = self._audio_settings(encoder)
        astream = self._container.add_stream(encoder, rate=rate)
        astream.layout = layout
        astream.format = sample_fmt
        if not encoder.startswith("pcm_"):
            channels = astream.codec_context.layout.nb_channels
            astream.codec_context.bit_rate = {1: 128000, 2: 192000}.get(channels, 64000 * channels)
        self._astream, self._audio_fmt, self._audio_frame_size = astream, sample_fmt, frame_size
        self._audio_rate, self._audio_layout = rate, astream.codec_context.layout
        self._audio_chunks = self._resampled(av.AudioResampler(format="fltp", layout=self._audio_layout, rate=rate))
        self._audio_buffer = np.zeros((self._audio_layout.nb_channels, 0), np.float32)  # taken, not yet encoded
        self._audio_exhausted = False
        self._audio_sent = 0  # samples given to the encoder

    def _resampled(self, resampler: av.AudioResampler) -> Iterator[np.ndarray]:
        """The track at the output's rate and layout, (channels, k) float32 chunks."""
        for frame in self.audio.frames():
            for res in resampler.resample(frame):
                yield res.to_ndarray()
        for res in resampler.resample(None):
            yield res.to_ndarray()

    def _pump_audio(self, *, final: bool) -> None:
        """Encode the audio up to the video written so far, in whole encoder frames, so audio and
        video packets interleave; ``final``: up to exactly ``frames_written / fps``, the source
        trimmed or padded with silence, the last frame shorter, then flush the encoder."""
        rate, frame_size = self._audio_rate, self._audio_frame_size
        need = round(self.duration_s * rate) - self._audio_sent  # samples up to the video's end so far
        while self._audio_buffer.shape[1] < need and not self._audio_exhausted:
            chunk = next(self._audio_chunks, None)
            if chunk is None:
                self._audio_exhausted = True
            else:
                self._audio_buffer = np.concatenate([self._audio_buffer, chunk], axis=1)
        if final:
            missing = max(0, need - self._audio_buffer.shape[1])
            self.audio_padded_s = missing / rate  # silence added at the end (0 when trimmed)
            silence = np.zeros((self._audio_buffer.shape[0], missing), np.float32)
            self._audio_buffer = np.concatenate([self._audio_buffer[:, :need], silence], axis=1)
        while need >= frame_size and self._audio_buffer.shape[1] >= frame_size or final and need > 0:
            self._encode_audio(self._audio_buffer[:, :frame_size])  # the final frame may be shorter
            self._audio_buffer = self._audio_buffer[:, frame_size:]
            need -= frame_size
        if final:
            self._encode_audio(None)

    def _encode_audio(self, samples: np.ndarray | None) -> None:
        """Encode one frame of samples (None: flush the encoder) and mux its packets."""
        if samples is None:
            packets = self._astream.encode(None)
        else:
            frame = _audio_frame(samples, self._audio_fmt, self._audio_layout.name, self._audio_rate)
            frame.pts = self._audio_sent
            frame.time_base = Fraction(1, self._audio_rate)
            self._audio_sent += samples.shape[1]
            packets = self._astream.encode(frame)
        for packet in packets:
            self._mux(self._container, packet)

    def _audio_settings(self, encoder: str) -> tuple[int, str, str, int]:
        """Sample rate, channel layout, sample format and frame size for the audio: the track's own
        rate and layout whenever ``encoder`` takes them (else its next higher rate; layouts it refuses
        become stereo). The frame size (Opus: 20 ms) is known only from an opened encoder, so one is
        opened here, apart from the output's stream."""
        rate = _supported_rate(encoder, self.audio.sample_rate or 48000)
        channels = self.audio.channels
        name = self.audio.layout if channels else ""
        if "channels" in name:  # unspecified channel order (e.g. wav): the default layout for the count
            name = _DEFAULT_LAYOUTS.get(channels, "")
        sample_fmt = _sample_format(encoder)
        for layout in ([name] if name else []) + ["stereo"]:
            try:  # e.g. the native AAC encoder knows mono .. 7.1; anything else is downmixed to stereo
                cc = av.CodecContext.create(encoder, "w")
                cc.sample_rate, cc.layout, cc.format = rate, layout, sample_fmt
                cc.open()
                return rate, layout, sample_fmt, cc.frame_size or 1024
            except (av.FFmpegError, ValueError):
                continue
        raise LatentmuseError(f"the {encoder} encoder cannot encode {rate} Hz audio.", "choose another output container.")


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def sweep_stale_partials(output: Path) -> list[Path]:
    """Delete the temporary files of ``output``'s writers that died on this host (killed by SIGKILL,
    the OOM killer, a lost Ray actor): files named as :class:`VideoWriter` names its temporary file for
    this very output (older versions also left ``.video.partial`` files), with this host's name and the id of a process that no longer exists. Nothing
    else is touched: another host's, a live process's, or a file of another name stays. The deleted
    paths are returned."""
    pattern = re.compile(rf"^\.{re.escape(output.stem)}\.{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}[A-Za-z_.]*\.partial"
                         rf"{re.escape(output.suffix)}$")
    swept = []
    try:
        names = os.listdir(output.parent)
    except OSError:
        return swept
    for name in names:
        match = pattern.match(name)
        if match and not _alive(int(match.group(1))):
            candidate = output.parent / name
            try:
                candidate.unlink()
            except OSError:
                continue
            swept.append(candidate)
    return swept


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
