"""Data passed between pipeline stages.

Frames are BGR ``uint8`` arrays of shape (H, W, 3), as OpenCV and every original script use them.
Landmarks follow the 68-point iBUG layout in frame pixel coordinates (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input video before decoding it."""

    path: Path
    width: int
    height: int
    fps: Fraction  # exact: 30000/1001 stays 30000/1001
    frame_count: int  # counted by decoding when the container does not say
    has_audio: bool
    codec: str

    @property
    def duration_s(self) -> float:
        return float(self.frame_count / self.fps)


@dataclass(frozen=True)
class Face:
    """One detected face in one frame."""

    landmarks: np.ndarray  # (68, 2) float32, iBUG order, frame pixels
    box: tuple[float, float, float, float]  # detector box (x1, y1, x2, y2), frame pixels
    score: float = 1.0


class FaceFrontEnd(Protocol):
    """A face detector plus 68-point landmarker: one result per frame, ``None`` when no usable face."""

    name: str

    def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
        """Detect the most prominent face in each BGR frame of a batch."""
        ...
