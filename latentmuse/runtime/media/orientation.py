"""Display rotation: how a player turns the stored picture, and turning decoded frames upright.

Phones record portrait video as landscape pixels plus a *display matrix* (mp4/mov ``tkhd``, Matroska
projection, carried by FFmpeg as ``DISPLAYMATRIX`` side data) that tells players to turn it. The media
layer turns every decoded frame upright the way ffmpeg's own autorotate does (``fftools``: a
``transpose``/``hflip``/``vflip`` chosen from the matrix), so:

* faces are detected upright (a HOG or S3FD detector finds few faces lying on their side);
* the output is written as upright pixels with no display matrix. It then plays upright in every
  player and container, including those without a rotation field (avi) or players that ignore it,
  and its stored size is the input's displayed size. Keeping the input's matrix instead would mean
  turning the generated frames back before encoding, for no gain in quality, and an output that
  shows sideways wherever the matrix is not honoured.

Only right angles are supported (what cameras write); any other angle is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np

from ...errors import LatentmuseError


@dataclass(frozen=True)
class Orientation:
    """Turn ``rotation`` degrees clockwise, then flip left-right when ``mirrored``."""

    rotation: int = 0  # 0, 90, 180 or 270
    mirrored: bool = False

    @property
    def swaps_axes(self) -> bool:
        return self.rotation in (90, 270)

    def displayed_size(self, width: int, height: int) -> tuple[int, int]:
        return (height, width) if self.swaps_axes else (width, height)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The displayed frame (a contiguous array; the input itself when there is nothing to do)."""
        if self.rotation == 0 and not self.mirrored:
            return frame
        out = np.rot90(frame, k=-(self.rotation // 90)) if self.rotation else frame
        if self.mirrored:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


UPRIGHT = Orientation()


def _rotation_get(m: np.ndarray) -> float:
    """libavutil's ``av_display_rotation_get``: the counter-clockwise angle of the matrix, degrees."""
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return math.nan
    return -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))


def orientation_of_matrix(matrix: np.ndarray | list[int], where: str = "the video") -> Orientation:
    """The orientation a 3x3 display matrix (FFmpeg layout, 9 int32) asks for, as ffmpeg applies it.

    fftools: ``theta = -round(rotation_get)`` modulo 360; 90: ``transpose=clock`` (``cclock_flip``
    when m[3] > 0); 180: ``hflip`` if m[0] < 0 and ``vflip`` if m[4] < 0; 270: ``transpose=cclock``
    (``clock_flip`` when m[3] < 0); 0: ``vflip`` if m[4] < 0.
    """
    m = np.asarray(matrix, dtype=np.float64).reshape(9)
    angle = _rotation_get(m)
    if math.isnan(angle):
        return UPRIGHT  # a degenerate matrix: ffmpeg shows the picture as stored too
    theta = -round(angle)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return Orientation(90, mirrored=m[3] > 0)  # cclock_flip == clockwise 90 then left-right
    if abs(theta - 180) < 1:
        hflip, vflip = m[0] < 0, m[4] < 0
        if hflip and vflip:
            return Orientation(180)
        if vflip:
            return Orientation(180, mirrored=True)  # a vertical flip == 180 then left-right
        return Orientation(0, mirrored=bool(hflip))
    if abs(theta - 270) < 1:
        return Orientation(270, mirrored=m[3] < 0)  # clock_flip == clockwise 270 then left-right
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return Orientation(180, mirrored=True) if m[4] < 0 else UPRIGHT
    raise LatentmuseError(
        f"{where} asks players to rotate it by {theta:g} degrees; only multiples of 90 are supported.",
        "re-encode it upright (e.g. ffmpeg -i in.mp4 out.mp4, which applies the rotation).",
    )


def frame_orientation(frame: av.VideoFrame, where: str = "the video") -> Orientation:
    """The orientation of a decoded frame from its ``DISPLAYMATRIX`` side data (upright when absent)."""
    side = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if side is None:
        return UPRIGHT
    raw = bytes(side)
    if len(raw) < 36:
        return UPRIGHT
    return orientation_of_matrix(np.frombuffer(raw[:36], dtype="<i4"), where)
