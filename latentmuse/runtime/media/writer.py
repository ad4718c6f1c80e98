"""Writing the output: frame sinks, and the video writer that is atomic, safe against concurrent
writers and a full disk, and keeps the audio in sync."""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol

import av
import numpy as np

from ...errors import LatentmuseError
from .formats import ENCODE_FLAGS, OUTPUT_FORMATS, VideoCodec, audio_encoder, choose_codec, output_format
from .opening import _audio_stream, _corrupt, _first_line, _open_input
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


def _fsync(path: Path) -> None:
    """Flush a file (or folder) to the disk, so a crash right after the rename leaves a whole file."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # folders cannot be opened on some systems (Windows): nothing to flush there
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # a filesystem without fsync (some FUSE)
            raise
    finally:
        os.close(fd)


class VideoWriter:
    """Stream-encode BGR frames and mux the audio on success; atomic, temp-file based.

    ``VideoWriter(path, width, height, fps, audio_source, codec=...)`` validates ``path``
    (:func:`check_output_path`, with ``audio_source`` as an input) and the codec for its container
    and the frame size (:func:`~.formats.choose_codec`: the container comes from the extension, see
    :mod:`.formats` for the matrix), then encodes each ``write(frame)`` into a temporary file in the
    output's folder, with the video time base exactly 1/fps and the frame size exactly
    ``width`` x ``height``. ``close()`` (or a clean ``with`` exit) encodes ``audio_source``'s first
    audio track (its own sample rate and channel layout whenever the container's audio codec takes
    them; trimmed to ``frames_written / fps`` seconds, or padded with silence to it), interleaves it
    with the video, flushes the file to disk and renames it onto ``path`` atomically. The audio is
    always re-encoded (never stream-copied), so the trim is sample-exact; it is taken from the
    source's first decoded sample (a container start offset between its audio and video is ignored,
    as :func:`load_audio` ignores it too, so features and output stay in sync).

    Failure leaves nothing: an exception inside the ``with`` block, ``abort()``, or any error while
    writing (a full disk is one line: "no space left on the disk holding ...") deletes the temporary
    files and leaves nothing at ``path`` (an older file there is kept as it was). Temporary names
    are unique per writer (created with ``O_EXCL``, like :func:`tempfile.mkstemp`, but with the
    umask's permissions so the output has the usual mode), so two runs writing the same output never
    share a file: each renames its own complete file into place, and the last rename wins.
    """

    def __init__(
        self,
        path: Path | str,
        width: int,
        height: int,
        fps: Fraction,
        audio_source: Path | str | None = None,
        *,
        codec: str = "auto",
        crf: int | None = None,
        preset: str = "medium",
        sample_aspect_ratio: Fraction | None = None,
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
        self.format = output_format(self.path)
        self.codec: VideoCodec = choose_codec(self.path, codec, (self.width, self.height))
        self.pix_fmt = self.codec.pixel_format(self.width, self.height)
        self.audio_source = Path(audio_source) if audio_source is not None else None
        if self.audio_source is not None:  # fail now, not after encoding the whole video
            with _open_input(self.audio_source, "audio file") as probe_container:
                _audio_stream(probe_container, self.audio_source, "audio file")
        self.encoded_size = (self.width, self.height)  # always the frame size: nothing is padded
        self.frames_written = 0
        self.audio_padded_s = 0.0  # silence appended to a shorter audio source, seconds
        self._closed = False
        self._container = None
        self._temps: list[Path] = []
        try:
            self._final_tmp = self._new_temp("")
            self._video_tmp = self._new_temp(".video") if self.audio_source is not None else self._final_tmp
            direct = self.audio_source is None  # no audio: this file is the final one
            options = {"movflags": "+faststart"} if direct and self.format.faststart else {}
            self._container = av.open(
                str(self._video_tmp), mode="w", format=self.format.container, container_options=options
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
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise self._failure(exc, "starting to write") from None
        except BaseException:  # an interrupt (SIGINT/SIGTERM) between creating the temp files and returning
            self.abort()
            raise

    # -- temporary files and errors

    def _new_temp(self, tag: str) -> Path:
        """A new, unique, empty hidden file next to the output:
        ``.{stem}.{host}-{pid}-{random}{tag}.partial{suffix}`` (the writer's host and process, so that
        a later writer of the same output can tell a dead writer's leftovers: :func:`sweep_stale_partials`)."""
        if not self._temps:
            sweep_stale_partials(self.path)
        while True:
            candidate = self.path.with_name(
                f".{self.path.stem}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{tag}.partial{self.path.suffix}"
            )
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            self._temps.append(candidate)
            return candidate

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
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise self._failure(exc, "writing") from None
        self.frames_written += 1

    # -- finishing

    def close(self) -> None:
        """Flush the encoder, mux the audio, flush the file to disk and move it into place."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise LatentmuseError(f"no frames were written to {self.path}.", "check the input video.")
            for packet in self._stream.encode(None):
                self._mux(self._container, packet)
            container, self._container = self._container, None
            self._finish(container)
            if self.audio_source is not None:
                self._mux_audio()
            _fsync(self._final_tmp)
            os.replace(self._final_tmp, self.path)
            self._temps.remove(self._final_tmp)  # now the output: never cleaned up as a temporary
            try:
                _fsync(self.path.parent)  # the rename itself to disk: best effort, the file is whole either way
            except OSError:
                pass
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
        """Delete this writer's own temporary files (never another writer's: the names are unique)."""
        for tmp in getattr(self, "_temps", []):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if hasattr(self, "_temps"):
            self._temps.clear()

    @property
    def duration_s(self) -> Fraction:
        return Fraction(self.frames_written) / self.fps

    # -- audio

    def _audio_packets(self, astream, sample_fmt: str, frame_size: int) -> Iterator[av.Packet]:
        """Encoded packets of the audio source, trimmed / silence-padded to the video length, sent to
        the encoder in frames of ``frame_size`` samples (the last one shorter)."""
        rate = astream.codec_context.sample_rate
        layout = astream.codec_context.layout
        channels = layout.nb_channels
        target = round(self.duration_s * rate)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        buffer = np.zeros((channels, 0), np.float32)
        taken = 0  # samples taken from the source (<= target)
        sent = 0  # samples given to the encoder

        def encode(samples: np.ndarray | None) -> Iterator[av.Packet]:
            nonlocal sent
            if samples is None:
                yield from astream.encode(None)
                return
            frame = _audio_frame(samples, sample_fmt, layout.name, rate)
            frame.pts = sent
            frame.time_base = Fraction(1, rate)
            sent += samples.shape[1]
            yield from astream.encode(frame)

        with _open_input(self.audio_source, "audio file") as source:
            src = _audio_stream(source, self.audio_source, "audio file")
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
            except av.FFmpegError as exc:  # decoding the source (the output's writes fail in _mux)
                raise _corrupt(self.audio_source, exc) from None
        self.audio_padded_s = (target - taken) / rate  # silence added at the end (0 when trimmed)
        buffer = np.concatenate([buffer, np.zeros((channels, target - taken), np.float32)], axis=1)
        while buffer.shape[1] > 0:
            yield from encode(buffer[:, :frame_size])
            buffer = buffer[:, frame_size:]
        yield from encode(None)

    def _audio_settings(self, encoder: str) -> tuple[int, str, str, int]:
        """Sample rate, channel layout, sample format and frame size for the audio source: its own rate
        and layout whenever ``encoder`` takes them (else its next higher rate; layouts it refuses become
        stereo). The frame size (Opus: 20 ms) is known only from an opened encoder, so one is opened
        here, apart from the output's stream."""
        with _open_input(self.audio_source, "audio file") as source:
            src = _audio_stream(source, self.audio_source, "audio file")
            rate = _supported_rate(encoder, src.codec_context.sample_rate or 48000)
            layout = src.codec_context.layout
            channels = layout.nb_channels if layout is not None else 0
            name = layout.name if channels else ""
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

    def _mux_audio(self) -> None:
        encoder = audio_encoder(self.format, self.codec)
        rate, layout, sample_fmt, frame_size = self._audio_settings(encoder)
        options = {"movflags": "+faststart"} if self.format.faststart else {}
        with av.open(str(self._video_tmp), mode="r") as video_in:
            out = av.open(str(self._final_tmp), mode="w", format=self.format.container, container_options=options)
            try:
                vin = video_in.streams.video[0]
                vout = out.add_stream_from_template(vin)
                vout.time_base = vin.time_base
                if vout.codec_context is not None:  # what the template does not keep:
                    vout.codec_context.framerate = self.fps  # the rate Matroska states (DefaultDuration)
                    tag = self.codec.tags.get(self.format.container)
                    if tag:
                        vout.codec_context.codec_tag = tag  # hvc1 (Apple players), XVID
                astream = out.add_stream(encoder, rate=rate)
                astream.layout = layout
                astream.format = sample_fmt
                if not encoder.startswith("pcm_"):
                    channels = astream.codec_context.layout.nb_channels
                    astream.codec_context.bit_rate = {1: 128000, 2: 192000}.get(channels, 64000 * channels)
                audio = self._audio_packets(astream, sample_fmt, frame_size)
                pending = next(audio, None)
                for packet in video_in.demux(vin):
                    if packet.size == 0:
                        continue
                    t = float(packet.dts * packet.time_base) if packet.dts is not None else 0.0
                    while pending is not None and (pending.pts is None or float(pending.pts * pending.time_base) <= t):
                        self._mux(out, pending)
                        pending = next(audio, None)
                    packet.stream = vout
                    self._mux(out, packet)
                while pending is not None:
                    self._mux(out, pending)
                    pending = next(audio, None)
            except BaseException:
                try:
                    out.close()
                except Exception:  # noqa: BLE001 - the file is being thrown away; the first error is the one
                    pass
                raise
            self._finish(out)
        self._video_tmp.unlink()
        self._temps.remove(self._video_tmp)


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def sweep_stale_partials(output: Path) -> list[Path]:
    """Delete the temporary files of ``output``'s writers that died on this host (killed by SIGKILL,
    the OOM killer, a lost Ray actor): files named as :meth:`VideoWriter._new_temp` names them for
    this very output, with this host's name and the id of a process that no longer exists. Nothing
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
