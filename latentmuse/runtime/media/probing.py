"""Probing a video in one demux pass (decoding only its first frame): size, exact frame rate, frame
count, orientation, the packet timestamps and whether the frame rate varies."""

from __future__ import annotations

import statistics
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av

from ...errors import LatentmuseError
from ..contracts import VideoInfo
from .audio import AudioTrack, TrackDecoder
from .opening import _corrupt, _open_input, _video_stream
from .orientation import Orientation, frame_orientation


def _timestamp_rate(stream, packets: list[tuple[int, int]]) -> Fraction | None:
    """The average rate of the packets' timestamps: (frames - 1) / (last - first)."""
    pts = sorted(ts for ts, _ in packets if ts >= 0)
    if len(pts) < 2 or pts[-1] <= pts[0] or not stream.time_base:
        return None
    return Fraction(len(pts) - 1) / (Fraction(pts[-1] - pts[0]) * Fraction(stream.time_base))


def _frame_rate(stream, packets: list[tuple[int, int]] | None = None) -> Fraction | None:
    """The stream's exact rate: its average rate, or, when the container states none, the rate of its
    packets' timestamps (a Matroska file without DefaultDuration makes FFmpeg guess its time base,
    1000 fps), or the demuxer's guess when there is nothing else.

    When the guessed (``r_frame_rate``) value agrees within 0.5 %, it wins: it is the clean fraction
    (30000/1001) where millisecond container timestamps (mkv, webm) blur the average.
    """
    avg = stream.average_rate
    guess = stream.guessed_rate
    avg = Fraction(avg) if avg else None
    guess = Fraction(guess) if guess else None
    if avg is None and packets is not None:
        avg = _timestamp_rate(stream, packets)
    if avg and guess and abs(avg - guess) <= guess * Fraction(1, 200):
        return guess
    if avg:
        return avg.limit_denominator(1001) if avg.denominator > 1001 else avg
    return guess or (Fraction(stream.base_rate) if stream.base_rate else None)


def _packets(container, stream) -> list[tuple[int, int]]:
    """(presentation timestamp, duration) of every video packet, by demuxing only (no decoding).

    An unknown timestamp is -1 (counted, but makes timestamp-based indexing unavailable), an unknown
    duration 0."""
    out = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        ts = packet.pts if packet.pts is not None else packet.dts
        out.append((-1 if ts is None else ts, packet.duration or 0))
    return out


def _packet_pts(container, stream) -> list[int]:
    """Presentation timestamps of every video packet, by demuxing only (no decoding)."""
    return [ts for ts, _ in _packets(container, stream)]


def _stated_seconds(stream) -> float | None:
    """The video track's own stated duration: Matroska's per-track ``DURATION`` tag (FFmpeg and
    mkvmerge write it), else the stream's duration. The container's duration is not used: it is the
    longest track's, and audio may rightly run past the video."""
    tag = stream.metadata.get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _check_complete(path: Path, stream, packets: list[tuple[int, int]], fps: Fraction) -> None:
    """A file cut short: its packets end before the end its header states, as a count of frames (MP4,
    AVI) or as the track's duration (a truncated Matroska file keeps its header's duration).

    The packets' end is the last timestamp plus its duration (one average frame when unstated), from
    the first timestamp; half a frame of slack absorbs container timestamp rounding (milliseconds in
    Matroska). Fewer packets than the stated count alone is no proof: an AVI's dropped frames are
    empty index entries the demuxer skips, while its timestamps still run to the end."""
    known = [(ts, dur) for ts, dur in packets if ts >= 0]
    tb = stream.time_base
    if not known or not tb:
        return
    last, duration = max(known)
    end = float((last - min(known)[0]) * tb) + (float(duration * tb) if duration else 1 / float(fps))
    slack = 0.5 / float(fps) + 0.002
    fix = "the copy was cut short: re-export or re-download it."
    stated = int(stream.frames or 0)
    if stated > len(packets) and stated / float(fps) - end > slack:
        raise LatentmuseError(
            f"{path} is truncated: its header lists {stated} video frames but only {len(packets)} are in the file.", fix
        )
    seconds = _stated_seconds(stream)
    if seconds is not None and seconds - end > slack:
        raise LatentmuseError(
            f"{path} is truncated: its video track should last {seconds:.2f} s but its frames end at {end:.2f} s.", fix
        )


def _scan(container, stream, path: Path, audio: TrackDecoder | None = None
          ) -> tuple[list[tuple[int, int]], av.VideoFrame | None, BaseException | None, LatentmuseError | None]:
    """One pass over the video packets: (timestamp, duration) of each, and the first frame decoded on
    the way (it proves the stream decodes and carries the display matrix and pixel format).

    Packets are fed to the decoder only until it gives its first frame; the rest is demux only. A
    decoding error is returned, not raised, so that the file's header checks (no frame rate, cut
    short) keep their precedence over it, as when the first frame was decoded in a second pass.
    ``audio``: the file's audio packets of the same pass go to this decoder; its error is returned
    too (fourth), so the video's checks come first."""
    packets: list[tuple[int, int]] = []
    first: av.VideoFrame | None = None
    failure: BaseException | None = None
    audio_failure: LatentmuseError | None = None
    decoding = True
    streams = (stream,) if audio is None else (stream, audio.stream)
    try:
        for packet in container.demux(*streams):
            if audio is not None and packet.stream.index == audio.stream.index:
                if audio_failure is None:
                    try:
                        audio.feed(packet)
                    except LatentmuseError as exc:
                        audio_failure = exc
                continue
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            ts = packet.pts if packet.pts is not None else packet.dts
            packets.append((-1 if ts is None else ts, packet.duration or 0))
            if decoding:
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    failure, decoding = exc, False
                    continue
                if frames:
                    first, decoding = frames[0], False
        if decoding and failure is None:  # a decoder that holds frames back (B-frames, threads): drain it
            try:
                frames = stream.codec_context.decode(None)
            except av.FFmpegError as exc:
                failure = exc
            else:
                first = frames[0] if frames else None
    except av.FFmpegError as exc:
        raise _corrupt(path, exc) from None
    return packets, first, failure, audio_failure


def probe(path: Path | str) -> VideoInfo:
    """A video's :class:`VideoInfo` from one open and one demux pass (see :func:`_probe`)."""
    return _probe(Path(path))[0]


def probe_clip(path: Path | str) -> tuple[VideoInfo, AudioTrack | None]:
    """:func:`probe` and :func:`~.audio.decode_audio` of the video's own track in one open and one
    demux pass (a clip whose audio is its own track reads its file once before decoding frames).
    The video's errors come first; a video without an audio track gives ``None`` for the track, so
    the caller can make its other checks before saying so (:func:`~.opening.no_audio_error`)."""
    return _probe(Path(path), audio=True)


def _probe(path: Path, audio: bool = False) -> tuple[VideoInfo, AudioTrack | None]:
    """Size, exact frame rate, frame count, audio presence, codec and orientation of a video file,
    with the packet timestamps and the variable-frame-rate flag, from one open and one demux pass.

    The frame count is the number of demuxed video packets; a file holding fewer packets than its
    header lists, or ending before its stated duration, is refused as truncated (before any work,
    rather than when decoding reaches the gap). The first frame is decoded on the way, so a stream
    that does not decode at all is an error here, before any work, and its display matrix (rotation)
    and pixel format are known; the size reported is the displayed (upright) size. The packets'
    timestamps are kept in the result, so neither :func:`is_variable_frame_rate` nor
    :class:`~.frames.FrameSource` demuxes the file again.
    """
    container = _open_input(path, "video")
    with container:
        stream = _video_stream(container, path)
        tracks = [s for s in container.streams.audio if s.codec_context is not None] if audio else []
        decoder = TrackDecoder(tracks[0], path) if tracks else None
        packets, first, failure, audio_failure = _scan(container, stream, path, decoder)
        fps = _frame_rate(stream, packets)
        if not fps or fps <= 0:
            raise LatentmuseError(
                f"{path} does not state a frame rate.", "re-encode it with a constant frame rate."
            )
        _check_complete(path, stream, packets, fps)
        count = len(packets)
        if count <= 0:
            raise LatentmuseError(f"{path} has a video stream with no frames.", "pass a video with frames.")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise _corrupt(path, ValueError("video stream has no frame size"))
        has_audio, codec = bool(container.streams.audio), stream.codec_context.name
        sar = stream.sample_aspect_ratio
        if failure is not None:
            raise _corrupt(path, failure)
        if first is None:
            raise LatentmuseError(
                f"{path} has a video stream but no frame of it could be decoded.",
                "the file is damaged or truncated: re-export it.",
            )
        orientation: Orientation = frame_orientation(first, str(path))
        width, height = orientation.displayed_size(int(first.width), int(first.height))
        sar = Fraction(sar) if sar and sar > 0 and sar != 1 else None
        if sar is not None and orientation.swaps_axes:
            sar = 1 / sar  # a pixel twice as wide is twice as tall once turned on its side
        timestamps = tuple(sorted(ts for ts, _ in packets))
        if audio_failure is not None:
            raise audio_failure
        info = VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=fps,
            frame_count=count,
            has_audio=has_audio,
            codec=codec,
            rotation=orientation.rotation,
            mirrored=orientation.mirrored,
            pix_fmt=first.format.name,
            sample_aspect_ratio=sar,
            timestamps=timestamps,
            variable_frame_rate=_durations_vary(timestamps, VFR_TOLERANCE),
            coded_size=(int(first.width), int(first.height)),
        )
        return info, decoder.track() if decoder is not None else None


#: How far a frame duration may stray from the median, as a fraction of it, before the rate is variable.
VFR_TOLERANCE = 0.1


def _durations_vary(timestamps: Sequence[int], tolerance: float) -> bool:
    """Whether the gaps between the (known, sorted) timestamps vary by more than ``tolerance`` of their
    median plus one time-base tick (container timestamp rounding, e.g. 33/34 ms in mkv)."""
    pts = sorted(p for p in timestamps if p >= 0)
    deltas = [b - a for a, b in zip(pts, pts[1:])]
    if len(deltas) < 2:
        return False
    median = statistics.median(deltas)
    limit = tolerance * median + 1
    return any(abs(d - median) > limit for d in deltas)


def is_variable_frame_rate(video: VideoInfo | Path | str, *, tolerance: float = VFR_TOLERANCE) -> bool:
    """Whether the video's frame durations vary (then it is treated as constant at its average rate).

    Frame durations are read from the packet timestamps: those :func:`probe` kept in a
    :class:`VideoInfo` (no file is opened), or, given a path, demuxed from the file (no decoding). A
    duration that differs from the median by more than ``tolerance`` of the median plus one time-base
    tick (container timestamp rounding, e.g. 33/34 ms in mkv) makes the video variable-rate.
    """
    if isinstance(video, VideoInfo) and video.timestamps:
        if tolerance == VFR_TOLERANCE:
            return video.variable_frame_rate
        return _durations_vary(video.timestamps, tolerance)
    path = Path(video.path if isinstance(video, VideoInfo) else video)
    container = _open_input(path, "video")
    with container:
        stream = _video_stream(container, path)
        try:
            pts = _packet_pts(container, stream)
        except av.FFmpegError as exc:
            raise _corrupt(path, exc) from None
    return _durations_vary(pts, tolerance)
