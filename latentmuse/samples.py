"""The embedded demo input: a talking-head-like clip built from ``skimage.data.astronaut()`` and espeak-ng.

``build_sample(out_dir)`` writes ``sample.mp4`` (H.264 + AAC speech track, so ``latentmuse run
sample.mp4`` needs no ``--audio``) and ``sample_speech.wav`` (the speech alone), deterministically and
in a few seconds on two cores. The video is a slow zoom and pan over the astronaut photograph (the face
stays whole and large enough for dlib's frontal HOG detector in every frame), interrupted by a cutaway
(by default the middle second) that shows the space-shuttle side of the photograph: no face there, so
the pipeline must pass those frames through unchanged.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .errors import LatentmuseError
from .runtime.media import VideoWriter

DEFAULT_TEXT = (
    "Hello, this is latent muse. Watch the lips follow every word."
)

# Source-image geometry (astronaut() is 512 x 512; dlib finds the face at x 179..266, y 83..170).
_FACE_CENTER = (222.5, 126.5)
_CUTAWAY_CENTER = (432.0, 150.0)  # the shuttle model at the right, no face


@dataclass(frozen=True)
class SampleMedia:
    """What :func:`build_sample` wrote."""

    video: Path  # H.264 video with the speech as its AAC audio track
    speech: Path  # the speech alone, 16-bit wav from espeak-ng (its own rate, 22.05 kHz)
    frame_count: int
    fps: Fraction
    size: tuple[int, int]  # (width, height)
    cutaway_frames: range  # frame indices of the cutaway (no face)

    @property
    def face_frames(self) -> list[int]:
        return [i for i in range(self.frame_count) if i not in self.cutaway_frames]


def _smooth(u: float) -> float:
    """Ease in/out on [0, 1]."""
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def _view(image: np.ndarray, center: tuple[float, float], span: float, size: tuple[int, int]) -> np.ndarray:
    """The square region of side ``span`` source pixels around ``center``, resampled to ``size``.

    The output's aspect ratio is kept by widening the region for wide sizes (span is its height).
    """
    width, height = size
    scale = height / span
    cx, cy = center
    matrix = np.array(
        [[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]], dtype=np.float64
    )
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def render_frame(index: int, total: int, size: tuple[int, int], cutaway: range, image: np.ndarray) -> np.ndarray:
    """Frame ``index`` of the sample (BGR uint8)."""
    u = index / max(total - 1, 1)
    if index in cutaway:
        v = (index - cutaway.start) / max(len(cutaway) - 1, 1)
        center = (_CUTAWAY_CENTER[0], _CUTAWAY_CENTER[1] + 40.0 * (v - 0.5))
        return _view(image, center, 200.0, size)
    # slow zoom in (span 300 -> 240 source px) with a gentle sideways sway and a small drift down
    span = 300.0 - 60.0 * _smooth(u)
    center = (_FACE_CENTER[0] + 14.0 * math.sin(2 * math.pi * u), _FACE_CENTER[1] + 18.0 + 8.0 * u)
    return _view(image, center, span, size)


def speak(text: str, wav: Path) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise LatentmuseError("espeak-ng is not installed; it speaks the demo's text.", "apt-get install espeak-ng")
    try:
        subprocess.run([exe, "-w", str(wav), "--", text], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise LatentmuseError(f"espeak-ng failed to synthesise the demo speech ({exc}).", "check espeak-ng --version") from None


def build_sample(
    out_dir: Path | str,
    *,
    seconds: float = 5.0,
    fps: Fraction | int = Fraction(25),
    size: tuple[int, int] = (320, 320),
    cutaway: tuple[float, float] | None = None,
    text: str = DEFAULT_TEXT,
    crf: int = 18,
    preset: str = "fast",
) -> SampleMedia:
    """Write the demo clip into ``out_dir`` and describe it.

    ``seconds * fps`` frames (rounded down) at ``size`` = (width, height); ``cutaway`` = (start_s, end_s)
    is the face-free interval, by default the middle second; frame i is in it when
    start_s <= i / fps < end_s. The speech of ``text`` (espeak-ng) is muxed as the video's audio,
    trimmed or padded with silence to the video's length; ``sample_speech.wav`` keeps it untouched.
    ``crf`` and ``preset`` are libx264's (the soak writes long clips with ``ultrafast``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps = Fraction(fps)
    width, height = size
    if width < 200 or height < 200:
        raise ValueError("the sample needs at least 200 x 200 pixels for the face to be detectable")
    total = math.floor(Fraction(seconds) * fps)
    if total < 1:
        raise ValueError("the sample needs at least one frame")
    if cutaway is None:
        mid = seconds / 2
        cutaway = (mid - 0.5, mid + 0.5)
    start = max(0, math.ceil(Fraction(cutaway[0]) * fps))
    stop = min(total, math.ceil(Fraction(cutaway[1]) * fps))
    cut = range(start, max(start, stop))

    from skimage.data import astronaut

    image = np.ascontiguousarray(astronaut()[:, :, ::-1])  # RGB -> BGR
    speech = out_dir / "sample_speech.wav"
    video = out_dir / "sample.mp4"
    speak(text, speech)
    with VideoWriter(video, width, height, fps, speech, crf=crf, preset=preset) as writer:
        for index in range(total):
            writer.write(render_frame(index, total, (width, height), cut, image))
    return SampleMedia(video=video, speech=speech, frame_count=total, fps=fps, size=(width, height), cutaway_frames=cut)


def main() -> None:  # pragma: no cover - `python -m latentmuse.samples OUT_DIR`
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="latentmuse-sample-"))
    sample = build_sample(target)
    print(sample.video)


if __name__ == "__main__":  # pragma: no cover
    main()
