"""Opening media files: one-line errors for a missing, unreadable or corrupt file or a missing stream."""

from __future__ import annotations

import os
from pathlib import Path

import av

from ...errors import LatentmuseError


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise LatentmuseError(f"{what} {path} does not exist.", "check the path and try again.")
    if path.is_dir():
        raise LatentmuseError(f"{what} {path} is a folder, not a file.", f"pass a {what} file.")
    if not os.access(path, os.R_OK):
        raise LatentmuseError(f"{what} {path} cannot be read (permission denied).", "fix its permissions.")
    if path.stat().st_size == 0:
        raise LatentmuseError(f"{what} {path} is empty (0 bytes).", "re-export or re-download it.")
    return path


def _first_line(exc: BaseException) -> str:
    """The error's own words: FFmpeg's message without PyAV's repetition of the file name."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _open_input(path: Path, what: str) -> av.container.InputContainer:
    path = _require_file(path, what)
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise LatentmuseError(
            f"{what} {path} is not a media file PyAV can read, or it is damaged or truncated ({_first_line(exc)}).",
            "pass a complete video or audio file (e.g. mp4, mov, mkv, webm, avi, wav, mp3, m4a, flac); "
            "re-export or re-download it if it was cut short.",
        ) from None


def _corrupt(path: Path, exc: BaseException) -> LatentmuseError:
    return LatentmuseError(
        f"{path} is damaged or truncated and cannot be decoded ({_first_line(exc)}).",
        "re-export or re-download the file, or re-encode it (e.g. with ffmpeg -i in.mp4 out.mp4).",
    )


def _is_still_image(container: av.container.InputContainer) -> bool:
    """An image file (png, jpeg, ...): FFmpeg's image demuxers are ``image2`` and ``<codec>_pipe``."""
    name = container.format.name.split(",")[0]
    return name == "image2" or name.endswith("_pipe")


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    """The first real video stream.

    A still image is refused: its demuxer invents a frame rate (25 fps) and it has one frame, so a run
    on it would silently make a video of a photograph at a rate nobody chose.
    """
    if _is_still_image(container):
        codec = container.streams.video[0].codec_context.name if container.streams.video else "image"
        raise LatentmuseError(
            f"{path} is a still image ({codec}), not a video.",
            "pass a video; to animate a photo, make a video of it first "
            "(e.g. ffmpeg -loop 1 -i photo.png -t 5 -pix_fmt yuv420p photo.mp4).",
        )
    # an mp3/m4a cover image is a one-frame "video" stream flagged attached_pic: not a video
    streams = [
        s for s in container.streams.video
        if s.codec_context is not None and not (s.disposition & av.stream.Disposition.attached_pic)
    ]
    if not streams:
        raise LatentmuseError(
            f"{path} has no video stream.", "pass a video file (an audio file goes to --audio)."
        )
    return streams[0]


#: The fix for a missing audio track: the video's own track was wanted, or a file given as the audio.
NO_TRACK_FIX = {
    "video": "pass --audio FILE with the speech to use.",
    "audio file": "pass an audio file, or a video that has sound, as --audio.",
}


def _audio_stream(
    container: av.container.InputContainer, path: Path, what: str = "video"
) -> av.audio.stream.AudioStream:
    """The first audio track; ``what`` ("video" or "audio file") says which fix fits its absence."""
    streams = [s for s in container.streams.audio if s.codec_context is not None]
    if not streams:
        raise no_audio_error(path, what)
    return streams[0]


def no_audio_error(path: Path, what: str = "video") -> LatentmuseError:
    """"PATH has no audio track." with the fix for where the audio was asked for."""
    return LatentmuseError(f"{path} has no audio track.", NO_TRACK_FIX.get(what, NO_TRACK_FIX["video"]))
