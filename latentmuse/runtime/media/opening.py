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
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _open_input(path: Path, what: str) -> av.container.InputContainer:
    path = _require_file(path, what)
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise LatentmuseError(
            f"{what} {path} is not a media file PyAV can read ({_first_line(exc)}).",
            "pass a valid video/audio file (e.g. mp4, mov, mkv, wav, mp3, m4a, flac).",
        ) from None


def _corrupt(path: Path, exc: BaseException) -> LatentmuseError:
    return LatentmuseError(
        f"{path} is damaged or truncated and cannot be decoded ({_first_line(exc)}).",
        "re-export or re-download the file, or re-encode it (e.g. with ffmpeg -i in.mp4 out.mp4).",
    )


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
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


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise LatentmuseError(f"{path} has no audio track.", "pass --audio FILE with the speech to use.")
    return container.streams.audio[0]
