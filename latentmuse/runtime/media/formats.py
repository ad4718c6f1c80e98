"""What the output can be: the container chosen by the output's extension, the video codec (``--codec``)
it allows, the pixel format a frame size needs, and the audio codec that goes with them.

The matrix (first codec = the default, ``--codec auto``):

=========== ============ ===================================== ==========================
extension   container    video codecs                          audio
=========== ============ ===================================== ==========================
.mp4 .m4v   MP4          h264, hevc, mpeg4                     AAC
.mov        QuickTime    h264, hevc, prores, mpeg4, mjpeg      AAC (ProRes: PCM 16-bit)
.mkv        Matroska     h264, hevc, vp9, mpeg4, mjpeg, prores AAC (ProRes: PCM 16-bit)
.webm       WebM         vp9                                   Opus
.avi        AVI          mpeg4, mjpeg                          PCM 16-bit
=========== ============ ===================================== ==========================

Why these: each pair is one players and editors take without a second thought (the combinations a
muxer merely tolerates, like VP9 in MP4 or H.264 in AVI, are left out). AVI's usual compressed audio,
MP3, holds two channels at 48 kHz at most, so AVI gets PCM, which keeps any rate and channel count
(as WAVE_FORMAT_EXTENSIBLE); ProRes is an editing format and editors expect PCM beside it.

Pixel formats are 8-bit 4:2:0 (the one every player decodes), MJPEG full-range 4:2:0, ProRes 422 HQ
10-bit (ProRes has no 4:2:0). Frames reach the writer as 8-bit BGR, so a 10-bit or 4:4:4 input is
not carried through at more than 8 bits. Sizes are kept exactly: H.264 4:2:0 cannot code an odd
width or height, so an odd-sized H.264 output is 4:4:4 (High 4:4:4 Predictive profile: exact size,
played by FFmpeg-based players and browsers' software decoders, not by every hardware decoder);
libx265 cannot code odd sizes or sizes under 16 pixels at all, which is an error naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
from av.video.reformatter import Interpolation

from ...choices import CODECS
from ...errors import LatentmuseError

# swscale's default RGB <-> YUV conversion darkens by ~2 levels per round trip (white 255 comes back
# as 250..253). Accurate rounding with full chroma interpolation makes the round trip unbiased
# (mean error ~0.02 levels on a photograph) at ~8 ms (encode) + ~13 ms (decode) per 1080p frame.
# Full chroma is taken on the side that has it: the YUV -> BGR decode interpolates the output's
# chroma (FULL_CHR_H_INT), the BGR -> YUV encode reads the input's full chroma (FULL_CHR_H_INP).
_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND
DECODE_FLAGS = _ACCURATE | Interpolation.FULL_CHR_H_INT
ENCODE_FLAGS = _ACCURATE | Interpolation.FULL_CHR_H_INP


@dataclass(frozen=True)
class VideoCodec:
    """One ``--codec`` value: its encoder, pixel formats, size limits and encoder options."""

    name: str  # what --codec takes
    label: str  # what people call it
    encoder: str  # the FFmpeg encoder
    pix_fmt: str
    odd_pix_fmt: str | None = None  # for an odd width or height, when ``pix_fmt`` cannot code one
    odd_sizes: bool = True  # False: no pixel format of this encoder codes an odd size
    min_size: int = 1  # smallest width and height the encoder takes
    audio: str | None = None  # an audio codec this codec always goes with (else the container's)
    full_range: bool = False  # JPEG-style 0..255 levels
    tags: dict[str, str] = field(default_factory=dict)  # container -> codec tag (FourCC)

    def options(self, crf: int | None, preset: str) -> dict[str, str]:
        """Encoder options: constant quality. ``crf`` and ``preset`` apply to x264, x265 and libvpx."""
        if self.encoder == "libx264":
            return {"crf": str(18 if crf is None else crf), "preset": preset}
        if self.encoder == "libx265":
            return {"crf": str(20 if crf is None else crf), "preset": preset, "x265-params": "log-level=error"}
        if self.encoder == "libvpx-vp9":
            return {"crf": str(24 if crf is None else crf), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        if self.encoder in ("mpeg4", "mjpeg"):
            return {"flags": "+qscale", "global_quality": str(2 * 118)}  # qscale 2 (FF_QP2LAMBDA = 118)
        if self.encoder == "prores_ks":
            return {"profile": "3", "vendor": "apl0"}  # 422 HQ, Apple's vendor id (QuickTime checks it)
        return {}

    def pixel_format(self, width: int, height: int) -> str:
        odd = width % 2 or height % 2
        return self.odd_pix_fmt if odd and self.odd_pix_fmt else self.pix_fmt


#: Every ``--codec`` value but ``auto`` (:data:`latentmuse.choices.CODECS`, which the command line reads
#: without importing PyAV, lists them in this order; a test keeps the two equal).
VIDEO_CODECS: dict[str, VideoCodec] = {
    c.name: c
    for c in (
        VideoCodec("h264", "H.264", "libx264", "yuv420p", odd_pix_fmt="yuv444p"),
        VideoCodec("hevc", "HEVC", "libx265", "yuv420p", odd_sizes=False, min_size=16,
                   tags={"mp4": "hvc1", "mov": "hvc1"}),  # hvc1: the tag Apple players require
        VideoCodec("vp9", "VP9", "libvpx-vp9", "yuv420p"),
        VideoCodec("mpeg4", "MPEG-4 Part 2", "mpeg4", "yuv420p", tags={"avi": "XVID"}),
        VideoCodec("mjpeg", "Motion JPEG", "mjpeg", "yuvj420p", full_range=True),
        VideoCodec("prores", "ProRes 422 HQ", "prores_ks", "yuv422p10le", audio="pcm_s16le"),
    )
}


@dataclass(frozen=True)
class OutputFormat:
    """A container: its FFmpeg muxer, the video codecs it takes (first = default) and its audio codec."""

    container: str  # FFmpeg muxer name
    label: str
    codecs: tuple[str, ...]
    audio: str  # FFmpeg audio encoder

    @property
    def faststart(self) -> bool:
        """MP4/QuickTime: the index goes first, so a player starts before the whole file is read."""
        return self.container in ("mp4", "mov")


_MP4 = OutputFormat("mp4", "MP4", ("h264", "hevc", "mpeg4"), "aac")
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    ".mp4": _MP4,
    ".m4v": _MP4,
    ".mov": OutputFormat("mov", "QuickTime", ("h264", "hevc", "prores", "mpeg4", "mjpeg"), "aac"),
    ".mkv": OutputFormat("matroska", "Matroska", ("h264", "hevc", "vp9", "mpeg4", "mjpeg", "prores"), "aac"),
    ".webm": OutputFormat("webm", "WebM", ("vp9",), "libopus"),
    ".avi": OutputFormat("avi", "AVI", ("mpeg4", "mjpeg"), "pcm_s16le"),
}


def _either(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def output_format(path: Path | str) -> OutputFormat:
    """The container for an output path, by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise LatentmuseError(
            f"cannot write {path}: unsupported extension {Path(path).suffix or '(none)'!r}.",
            f"name the output with one of {', '.join(sorted(OUTPUT_FORMATS))}.",
        )
    return OUTPUT_FORMATS[suffix]


def choose_codec(path: Path | str, codec: str = "auto", size: tuple[int, int] | None = None) -> VideoCodec:
    """The video codec for ``path`` (``auto``: its container's default), checked against the container,
    this PyAV build's encoders and, when given, the frame ``size`` (width, height)."""
    fmt = output_format(path)
    if codec not in CODECS:
        raise LatentmuseError(f"--codec {codec} is not known.", f"use one of {', '.join(CODECS)}.")
    name = fmt.codecs[0] if codec == "auto" else codec
    if name not in fmt.codecs:
        takers = sorted(ext for ext, f in OUTPUT_FORMATS.items() if name in f.codecs)
        raise LatentmuseError(
            f"{VIDEO_CODECS[name].label} (--codec {name}) cannot go into {fmt.label} ({Path(path).suffix}).",
            f"use --codec {_either(fmt.codecs)} for {Path(path).suffix}, or name the output {_either(takers)}.",
        )
    chosen = VIDEO_CODECS[name]
    if chosen.encoder not in av.codecs_available:
        raise LatentmuseError(
            f"this PyAV build has no {chosen.encoder} encoder for {chosen.label}.",
            f"use --codec auto, or another of {', '.join(fmt.codecs)}.",
        )
    if size is not None:
        width, height = size
        small = width < chosen.min_size or height < chosen.min_size
        odd = (width % 2 or height % 2) and not chosen.odd_sizes
        if small or odd:
            need = f"even sizes of at least {chosen.min_size} pixels" if not chosen.odd_sizes else (
                f"at least {chosen.min_size} pixels")
            others = [c for c in fmt.codecs if c != name]
            raise LatentmuseError(
                f"{chosen.label} cannot encode {width}x{height} frames (it needs {need}).",
                f"use --codec {others[0] if others else 'auto'}, which keeps the size exactly, "
                "or resize the video.",
            )
    return chosen


def audio_encoder(fmt: OutputFormat, codec: VideoCodec) -> str:
    return codec.audio or fmt.audio
