"""Frame and audio I/O on PyAV: probe, decode, schedule-driven frame access, audio loading, writing.

Everything goes through PyAV (libav* in-process): no ffmpeg subprocess and no image files on disk.
Frames are BGR ``uint8`` arrays of shape (H, W, 3). Every problem a user can cause (a missing,
unreadable or corrupt file, a file without the stream we need, an output path we cannot write) is
raised as a one-line :class:`~latentmuse.errors.LatentmuseError`, never as a PyAV traceback.

Decisions the pipeline relies on:

* **Frame rate** is exact: :func:`probe` returns a :class:`fractions.Fraction` (29.97 stays
  30000/1001) and :class:`VideoWriter` uses a video time base of exactly 1/fps, so the output has the
  input's rate.
* **Variable frame rate** input is treated as constant-rate at its *average* rate: every decoded frame
  is used once, in presentation order, and frame ``i`` of the output is shown at ``i / fps``. Timing
  jitter of the input is therefore not reproduced (a frame shown twice as long in the input is shown
  once). :func:`is_variable_frame_rate` tells the pipeline when to warn about this.
* **Frame identity**: frame ``i`` is the ``i``-th frame in presentation-time order. :class:`FrameSource`
  maps decoded timestamps to indices through the demuxed packet timestamps, so seeking never shifts it.
* **Odd frame sizes**: H.264 in yuv420p needs even dimensions. :class:`VideoWriter` pads an odd width
  or height by one pixel, repeating the last column / row (no pixel is lost); the encoded size is
  :attr:`VideoWriter.encoded_size`.
* **Audio in the output**: the audio source is re-encoded as AAC at its own sample rate and channel
  layout, trimmed to exactly ``frames_written / fps`` seconds when longer and **padded with silence**
  to that length when shorter, so the output's audio and video always have the same length.

Modules, by concern: :mod:`.opening` (files and streams), :mod:`.probing`, :mod:`.frames` (decoding),
:mod:`.audio`, :mod:`.paths` (output checks), :mod:`.writer`.
"""

from __future__ import annotations

from .audio import load_audio
from .frames import DEFAULT_CHUNK, FrameSource, iter_frames
from .paths import check_output_path
from .probing import is_variable_frame_rate, probe
from .writer import OUTPUT_FORMATS, FrameSink, MemorySink, VideoWriter


__all__ = [
    "DEFAULT_CHUNK",
    "OUTPUT_FORMATS",
    "FrameSink",
    "FrameSource",
    "MemorySink",
    "VideoWriter",
    "check_output_path",
    "is_variable_frame_rate",
    "iter_frames",
    "load_audio",
    "probe",
]
