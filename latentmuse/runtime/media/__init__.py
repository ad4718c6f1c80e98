"""Frame and audio I/O on PyAV: probe, decode, schedule-driven frame access, audio decoding, writing.

Everything goes through PyAV (libav* in-process): no ffmpeg subprocess and no image files on disk.
Frames are BGR ``uint8`` arrays of shape (H, W, 3). Every problem a user can cause (a missing,
unreadable or corrupt file, a file without the stream we need, an output path we cannot write) is
raised as a one-line :class:`~latentmuse.errors.LatentmuseError`, never as a PyAV traceback.

Decisions the pipeline relies on:

* **Each input is read once**: :func:`probe` opens the video once and demuxes it once, decoding only
  its first frame, and keeps the packet timestamps and the variable-frame-rate flag in its
  :class:`~latentmuse.runtime.contracts.VideoInfo`; pass that ``info`` on to :class:`FrameSource`,
  :func:`iter_frames` and :func:`is_variable_frame_rate`, and none of them demuxes the file again
  (the decoding pass is the only other open). :func:`decode_audio` decodes the audio once into an
  :class:`AudioTrack`: ``track.mono(16000)`` is the features' waveform (what :func:`load_audio`
  returns) and the same track goes to :class:`VideoWriter`, which encodes it into the output
  without reading any file again.

* **Frame rate** is exact: :func:`probe` returns a :class:`fractions.Fraction` (29.97 stays
  30000/1001) and :class:`VideoWriter` uses a video time base of exactly 1/fps, so the output has the
  input's rate.
* **Variable frame rate** input is treated as constant-rate at its *average* rate: every decoded frame
  is used once, in presentation order, and frame ``i`` of the output is shown at ``i / fps``. Timing
  jitter of the input is therefore not reproduced (a frame shown twice as long in the input is shown
  once). :func:`is_variable_frame_rate` tells the pipeline when to warn about this.
* **Frame identity**: frame ``i`` is the ``i``-th frame in presentation-time order. :class:`FrameSource`
  maps decoded timestamps to indices through the demuxed packet timestamps, so seeking never shifts it.
* **Orientation**: frames are yielded as displayed, turned upright by the container's display matrix
  (:mod:`.orientation`, as ffmpeg's autorotate), and :func:`probe` reports that displayed size; the
  output is written upright with no rotation metadata, at exactly that size.
* **Frame sizes are kept exactly**, odd and tiny ones included (:mod:`.formats` says which pixel
  format each codec needs for them, and which codec cannot code a size at all).
* **Output container and codec**: chosen by the output's extension and ``--codec``
  (:mod:`.formats` has the matrix: mp4/m4v, mov, mkv, webm, avi; H.264, HEVC, VP9, MPEG-4 Part 2,
  MJPEG, ProRes).
* **Audio in the output**: the audio source is re-encoded in the container's audio codec (AAC, Opus,
  PCM) at its own sample rate and channel layout where that codec takes them, trimmed to exactly
  ``frames_written / fps`` seconds when longer and **padded with silence** to that length when
  shorter, so the output's audio and video always have the same length.
* **Nothing half-written**: the writer encodes video and audio into one unique temporary file
  (:class:`latentmuse.files.AtomicFile`) and renames the complete file into place; any failure (a
  full disk included) removes it and is one line.

Modules, by concern: :mod:`.opening` (files and streams), :mod:`.probing`, :mod:`.orientation`,
:mod:`.frames` (decoding), :mod:`.audio` (:func:`decode_audio`), :mod:`.paths` (output checks,
shared with the bench: :func:`latentmuse.files.check_output_path`), :mod:`.formats` (what the output
can be, and the swscale flags decoding and encoding share), :mod:`.writer`.
"""

from __future__ import annotations

from .audio import AudioTrack, decode_audio, load_audio
from .formats import CODECS, OUTPUT_FORMATS, VIDEO_CODECS, choose_codec
from .frames import DEFAULT_CHUNK, FrameSource, iter_frames
from .opening import no_audio_error
from .paths import check_output_path
from .probing import is_variable_frame_rate, probe, probe_clip
from .writer import FrameSink, MemorySink, VideoWriter


__all__ = [
    "AudioTrack",
    "CODECS",
    "DEFAULT_CHUNK",
    "OUTPUT_FORMATS",
    "VIDEO_CODECS",
    "choose_codec",
    "FrameSink",
    "FrameSource",
    "MemorySink",
    "VideoWriter",
    "check_output_path",
    "decode_audio",
    "is_variable_frame_rate",
    "iter_frames",
    "load_audio",
    "no_audio_error",
    "probe",
    "probe_clip",
]
