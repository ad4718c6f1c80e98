"""Probing a video without decoding it: size, exact frame rate, frame count, variable frame rate."""

from __future__ import annotations

import statistics
from fractions import Fraction
from pathlib import Path

import av

from ...errors import LatentmuseError
from ..contracts import VideoInfo
from .opening import _corrupt, _open_input, _video_stream


def _frame_rate(stream) -> Fraction | None:
    """The stream's exact rate: its average rate, or the demuxer's guess when that is missing.

    When both exist and agree within 0.5 %, the guessed (``r_frame_rate``) value wins: it is the clean
    fraction (30000/1001) where millisecond container timestamps (mkv, webm) blur the average.
    """
    avg = stream.average_rate
    guess = stream.guessed_rate
    avg = Fraction(avg) if avg else None
    guess = Fraction(guess) if guess else None
    if avg and guess and abs(avg - guess) <= guess * Fraction(1, 200):
        return guess
    return avg or guess or (Fraction(stream.base_rate) if stream.base_rate else None)


def _packet_pts(container, stream) -> list[int]:
    """Presentation timestamps of every video packet, by demuxing only (no decoding)."""
    out = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            ts = -1  # unknown: counted, but makes timestamp-based indexing unavailable
        out.append(ts)
    return out


def probe(path: Path | str) -> VideoInfo:
    """Size, exact frame rate, frame count, audio presence and codec of a video file.

    The frame count is the container's own (``stream.frames``) when it states one, otherwise the
    number of demuxed video packets (no decoding).
    """
    path = Path(path)
    container = _open_input(path, "video")
    with container:
        stream = _video_stream(container, path)
        fps = _frame_rate(stream)
        if not fps or fps <= 0:
            raise LatentmuseError(
                f"{path} does not state a frame rate.", "re-encode it with a constant frame rate."
            )
        count = int(stream.frames or 0)
        if count <= 0:
            try:
                count = len(_packet_pts(container, stream))
            except av.FFmpegError as exc:
                raise _corrupt(path, exc) from None
        if count <= 0:
            raise LatentmuseError(f"{path} has a video stream with no frames.", "pass a video with frames.")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise _corrupt(path, ValueError("video stream has no frame size"))
        return VideoInfo(
            path=path,
            width=int(width),
            height=int(height),
            fps=fps,
            frame_count=count,
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
        )


def is_variable_frame_rate(path: Path | str, *, tolerance: float = 0.1) -> bool:
    """Whether the video's frame durations vary (then it is treated as constant at its average rate).

    Frame durations are read from the packet timestamps (demux only). A duration that differs from
    the median by more than ``tolerance`` of the median plus one time-base tick (container timestamp
    rounding, e.g. 33/34 ms in mkv) makes the video variable-rate.
    """
    path = Path(path)
    container = _open_input(path, "video")
    with container:
        stream = _video_stream(container, path)
        try:
            pts = sorted(p for p in _packet_pts(container, stream) if p >= 0)
        except av.FFmpegError as exc:
            raise _corrupt(path, exc) from None
    deltas = [b - a for a, b in zip(pts, pts[1:])]
    if len(deltas) < 2:
        return False
    median = statistics.median(deltas)
    limit = tolerance * median + 1
    return any(abs(d - median) > limit for d in deltas)
