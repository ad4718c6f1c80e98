"""Loading the audio the features are computed from: any file's first track, mono, resampled."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from ...errors import LatentmuseError
from .opening import _corrupt, _audio_stream, _open_input


def load_audio(path: Path | str, sample_rate: int = 16000, *, what: str = "video") -> np.ndarray:
    """The first audio track of any file PyAV reads, as mono float32 in [-1, 1] at ``sample_rate``.

    ``what`` is where the audio was asked for: the ``"video"``'s own track, or an ``"audio file"``
    given on its own (``--audio``, which may be a video too); it chooses the fix when there is no track.
    """
    path = Path(path)
    container = _open_input(path, "audio file")
    chunks: list[np.ndarray] = []
    with container:
        stream = _audio_stream(container, path, what)
        stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        stated, slack = None, 0
        if stream.duration and stream.time_base:
            stated = round(stream.duration * stream.time_base * sample_rate)
            src_rate = stream.codec_context.sample_rate or sample_rate
            slack = int(2048 * sample_rate / src_rate) + 2
        try:
            for frame in container.decode(stream):
                frame.pts = None  # resample by sample count: stray timestamps must not insert gaps
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise _corrupt(path, exc) from None
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if stated is not None:
        # Lossy codecs decode whole frames: an AAC track ends with up to one frame of encoder padding
        # past its stated duration (mp4 edit lists say where it really ends). Drop that padding, but
        # only when the excess is at most about one codec frame, so an estimated (wrong) duration,
        # e.g. of a VBR mp3 without a header, never cuts real audio.
        excess = audio.size - stated
        if 0 < excess <= slack:
            audio = audio[:stated]
    if audio.size == 0:
        raise LatentmuseError(f"the audio track of {path} is empty (0 samples).", "pass audio with speech in it.")
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio
