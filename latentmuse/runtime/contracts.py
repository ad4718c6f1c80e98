"""Data passed between pipeline stages.

Frames are BGR ``uint8`` arrays of shape (H, W, 3), as OpenCV and every original script use them.
Landmarks follow the 68-point iBUG layout in frame pixel coordinates (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input video before decoding it.

    ``width`` and ``height`` are the *displayed* size: the size of the frames the media layer yields,
    which are turned upright by the container's display matrix (``rotation`` clockwise degrees, then
    ``mirrored`` left-right, as ffmpeg's autorotate does), so faces are found upright and the output,
    written upright, has exactly these dimensions.

    :func:`~latentmuse.runtime.media.probe` demuxes every packet once and keeps here what later stages
    would otherwise demux the file again for: the packets' presentation timestamps (``timestamps``,
    which :class:`~latentmuse.runtime.media.FrameSource` maps decoded frames and seeks by), whether the
    frame rate varies, and the first frame's stored (coded) size.
    """

    path: Path
    width: int
    height: int
    fps: Fraction  # exact: 30000/1001 stays 30000/1001
    frame_count: int  # counted by decoding when the container does not say
    has_audio: bool
    codec: str
    rotation: int = 0  # clockwise degrees (0, 90, 180, 270) a player turns the stored picture
    mirrored: bool = False  # then flipped left-right (a mirrored display matrix)
    pix_fmt: str = ""  # the decoder's pixel format (e.g. yuv420p10le), before conversion to BGR
    sample_aspect_ratio: Fraction | None = None  # of the displayed pixels; None when square or unstated
    # every video packet's presentation timestamp in the stream's time base, in presentation order
    # (sorted; -1 where a packet has none); empty when unknown (a VideoInfo not made by probe)
    timestamps: tuple[int, ...] = field(default=(), repr=False, compare=False)
    variable_frame_rate: bool = False  # frame durations vary (see media.is_variable_frame_rate)
    coded_size: tuple[int, int] | None = None  # the first frame as stored (width, height), before turning upright

    @property
    def duration_s(self) -> float:
        return float(self.frame_count / self.fps)


@dataclass(frozen=True)
class FaceCandidate:
    """One detector box in one frame, before any landmarks: what the tracker chooses among.

    Front ends report every candidate of a frame (highest score first), so the dubbed face can be
    chosen once and followed (:mod:`latentmuse.runtime.tracking`) instead of taking whichever face
    scores best in each frame; landmarks are then computed for the tracked candidate only.
    """

    box: tuple[float, float, float, float]  # (x1, y1, x2, y2), frame pixels
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class Face:
    """One detected face in one frame."""

    landmarks: np.ndarray  # (68, 2) float32, iBUG order, frame pixels
    box: tuple[float, float, float, float]  # detector box (x1, y1, x2, y2), frame pixels
    score: float = 1.0


class FaceFrontEnd(Protocol):
    """A face detector plus 68-point landmarker, in two steps so that a tracker can choose in between.

    ``candidates`` is the detector alone (every usable box of every frame); ``landmarks`` runs the
    landmarker on one chosen box per frame, so its cost does not grow with the number of people in
    view. ``detect`` is both for the highest-scoring box (one result per frame, ``None`` when no
    usable face).
    """

    name: str

    def candidates(self, frames: Sequence[np.ndarray]) -> list[list[FaceCandidate]]:
        """Every usable detection in each BGR frame of a batch, highest score first."""
        ...

    def landmarks(self, frames: Sequence[np.ndarray], chosen: Sequence[FaceCandidate | None]) -> list[Face | None]:
        """68 landmarks for the chosen candidate of each frame (``None``: no landmarks, no cost)."""
        ...

    def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
        """The highest-scoring face of each BGR frame of a batch, with its landmarks."""
        ...

    def for_clip(self, min_face_size: float, width: int, height: int) -> FaceFrontEnd:
        """This front end set up to find every face at least ``min_face_size`` pixels tall in
        ``width`` x ``height`` frames (dlib: its detection scale, docs/FACES.md); loads nothing."""
        ...

    @property
    def settings(self) -> dict:
        """The detection settings in effect (JSON-able), part of the face cache's key."""
        ...
