"""LatentSync's face alignment and paste-back (docs/GENERATORS.md, "Alignment" and "Paste-back").

LatentSync does not crop a box: it warps the face with a similarity transform (rotation, uniform scale,
translation) that takes three landmark points (eyebrow centres and nose) onto a fixed template, so the
mouth sits at the same place of the crop in every frame, whatever the head does. The generated crop is
warped back with the inverse transform and blended in through an eroded, blurred mask.

Everything here is a pure function of numpy arrays, written from LatentSync's ``affine_transform.py``
(``AlignRestore``), with OpenCV standing in for kornia (same conventions: pixel centres at integer
coordinates, the transform maps source to destination, constant fill, reflect-101 blur borders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: Template of the three points for a 256 crop, before scaling by ``resolution / 256 * 2.8``.
TEMPLATE_256 = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
#: The warped crop is 75 x 100 template units (width x height), i.e. 210 x 280 at 256.
CROP_UNITS = (75, 100)
FILL = 127.0
#: Weight of the previous frame's bias in the temporal smoothing (the current one gets 1 - this).
SMOOTHING = 0.2
#: 68-point iBUG indices of the three points: left eyebrow (image left), right eyebrow, nose.
POINT_GROUPS = (tuple(range(17, 22)), tuple(range(22, 27)), tuple(range(27, 36)))


def template_ratio(resolution: int) -> float:
    return resolution / 256 * 2.8


def face_template(resolution: int) -> np.ndarray:
    """(3, 2) template points in crop pixels for a ``resolution`` x ``resolution`` model input."""
    return TEMPLATE_256 * template_ratio(resolution)


def crop_size(resolution: int) -> tuple[int, int]:
    """(width, height) of the warped crop: (210, 280) at 256, (420, 560) at 512."""
    ratio = template_ratio(resolution)
    return int(CROP_UNITS[0] * ratio), int(CROP_UNITS[1] * ratio)


def alignment_points(landmarks: np.ndarray) -> np.ndarray:
    """The three points from 68 landmarks: the means of 17-21, 22-26 and 27-35, rounded to whole pixels."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {lm.shape}")
    return np.round(np.stack([lm[list(group)].mean(axis=0) for group in POINT_GROUPS]))


def similarity_transform(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original's least-squares similarity transform taking ``points`` onto ``template``.

    Both point sets are centred and divided by their standard deviation (unbiased, over all six
    coordinates, as ``torch.std``); the rotation comes from the SVD of the 2 x 2 covariance with a
    reflection fix; scale ``s_tpl / s_src``; translation ``c_tpl - s R c_src``. Returns the (2, 3)
    matrix and the smoothing bias ``n_tpl[2] - n_src[2]`` (nose row of the normalised point sets).
    """
    src = np.asarray(points, dtype=np.float64)
    tpl = np.asarray(template, dtype=np.float64)
    c_src, c_tpl = src.mean(axis=0), tpl.mean(axis=0)
    s_src, s_tpl = (src - c_src).std(ddof=1), (tpl - c_tpl).std(ddof=1)
    if not (s_src > 0 and math.isfinite(s_src)):
        raise ValueError(f"alignment points {src.tolist()} are degenerate")
    n_src, n_tpl = (src - c_src) / s_src, (tpl - c_tpl) / s_tpl
    u, _, vt = np.linalg.svd(n_src.T @ n_tpl)
    v = vt.T
    rotation = v @ u.T
    if np.linalg.det(rotation) < 0:
        v[:, -1] = -v[:, -1]
        rotation = v @ u.T
    scale = s_tpl / s_src
    translation = c_tpl - scale * rotation @ c_src
    return np.concatenate([scale * rotation, translation[:, None]], axis=1), n_tpl[2] - n_src[2]


class TransformSmoother:
    """The smoothed transforms of :func:`smoothed_transforms`, one frame at a time in input order.

    The smoothing is causal (a frame's bias depends on the frames before it only), so the stream
    computes each input frame's transform as soon as its face is known: ``push(points)`` returns
    frame k's transform (or None) for the k-th call.
    """

    def __init__(self, template: np.ndarray) -> None:
        self.template = template
        self._previous: np.ndarray | None = None

    def push(self, points: np.ndarray | None) -> np.ndarray | None:
        try:
            matrix, bias = similarity_transform(points, self.template) if points is not None else (None, None)
        except ValueError:  # degenerate points: no alignment for this frame (the fallback serves it)
            matrix = None
        if matrix is None:
            self._previous = None
            return None
        if self._previous is not None:
            bias = SMOOTHING * self._previous + (1 - SMOOTHING) * bias
        self._previous = bias
        matrix = matrix.copy()
        matrix[:, 2] += bias
        return matrix


def smoothed_transforms(points: Sequence[np.ndarray | None], template: np.ndarray) -> list[np.ndarray | None]:
    """One (2, 3) transform per frame in input order; ``None`` where a frame has no points.

    Temporal smoothing as the original: the translation gets ``bias = 0.2 previous + 0.8 current``
    added (the first frame of a run uses its own bias). A frame without a face ends the run, so the
    smoothing restarts after a passthrough gap instead of dragging an unrelated face's bias along.
    Degenerate points (all three equal) give ``None`` too.
    """
    smoother = TransformSmoother(template)
    return [smoother.push(pts) for pts in points]


def _bounds(corners: np.ndarray, margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    x0 = max(0, int(math.floor(corners[:, 0].min())) - margin)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - margin)
    x1 = min(width, int(math.ceil(corners[:, 0].max())) + margin + 1)
    y1 = min(height, int(math.ceil(corners[:, 1].max())) + margin + 1)
    return x0, y0, x1, y1


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _shifted(matrix: np.ndarray, dx: float, dy: float, *, source: bool) -> np.ndarray:
    """The same mapping with the source (or destination) origin moved to (dx, dy)."""
    m = matrix.astype(np.float64).copy()
    if source:  # dst = A (src' + d) + t
        m[:, 2] += m[:, :2] @ np.array([dx, dy])
    else:  # dst' = dst - d
        m[:, 2] -= np.array([dx, dy])
    return m


def warp_face(frame: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The aligned crop ``(height, width, C)`` uint8: bilinear, grey fill 127, truncated to uint8.

    Only the part of the frame the crop can see is converted to float (a 4K frame is not).
    """
    width, height = size
    frame_h, frame_w = frame.shape[:2]
    inverse = cv2.invertAffineTransform(matrix.astype(np.float64))
    corners = _apply(inverse, np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], float))
    x0, y0, x1, y1 = _bounds(corners, 2, frame_w, frame_h)
    channels = frame.shape[2] if frame.ndim == 3 else 1
    if x1 <= x0 or y1 <= y0:
        return np.full((height, width, channels), int(FILL), dtype=np.uint8).squeeze()
    roi = np.ascontiguousarray(frame[y0:y1, x0:x1], dtype=np.float32)
    warped = cv2.warpAffine(roi, _shifted(matrix, x0, y0, source=True), (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL,) * 4)
    return np.clip(warped, 0, 255).astype(np.uint8)  # truncation, as the original's astype


def soft_blend_mask(crop_hw: tuple[int, int], inverse_roi: np.ndarray, roi_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(eroded, soft) float32 masks over the paste region (the original's ``restore_img`` mask steps).

    A ones image of the crop size is inverse-warped (zero fill), eroded with a 2 x 2 kernel; with
    ``w_edge = int(sqrt(area)) // 20`` it is eroded again with a ``2 w_edge`` square and blurred with
    a Gaussian of size ``2 w_edge + 1`` and OpenCV's default sigma for that size. (For a face under
    400 px of area ``w_edge`` is 0 and the eroded mask is used as it is.)
    """
    height, width = crop_hw
    ones = np.ones((height, width), dtype=np.float32)
    warped = cv2.warpAffine(ones, inverse_roi, (roi_hw[1], roi_hw[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    eroded = cv2.erode(warped, np.ones((2, 2), np.uint8))
    w_edge = int(float(eroded.sum(dtype=np.float64)) ** 0.5) // 20
    if w_edge == 0:
        return eroded, eroded
    centre = cv2.erode(eroded, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
    k = 2 * w_edge + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    return eroded, cv2.GaussianBlur(centre, (k, k), sigma)


def paste_face(frame: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A new frame with ``face`` (the crop, float in [-1, 1], (h, w, C) in the frame's channel order)
    warped back by the inverse of ``matrix`` and blended in: ``soft (eroded face) + (1 - soft) frame``,
    truncated to uint8. Pixels the soft mask does not reach are bit-identical to ``frame``.

    Work is confined to the frame region the warped crop can touch (plus the blur's reach), which
    gives the same pixels as warping over the whole frame: everything outside is zero in the masks.
    """
    frame_h, frame_w = frame.shape[:2]
    height, width = face.shape[:2]
    inverse = cv2.invertAffineTransform(matrix.astype(np.float64))
    corners = _apply(inverse, np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], float))
    area = abs(np.linalg.det(inverse[:, :2])) * width * height
    margin = int(math.sqrt(area) / 10) + 4  # > 2 w_edge + 1: the erosion and the blur stay inside
    x0, y0, x1, y1 = _bounds(corners, margin, frame_w, frame_h)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    inverse_roi = _shifted(inverse, x0, y0, source=False)
    roi_hw = (y1 - y0, x1 - x0)
    warped = cv2.warpAffine(np.ascontiguousarray(face, dtype=np.float32), inverse_roi, (roi_hw[1], roi_hw[0]),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL,) * 4)
    pixels = np.clip(warped / 2 + 0.5, 0, 1) * 255
    eroded, soft = soft_blend_mask((height, width), inverse_roi, roi_hw)
    if pixels.ndim == 3:
        eroded, soft = eroded[..., None], soft[..., None]
    region = frame[y0:y1, x0:x1].astype(np.float32)
    blended = soft * (eroded * pixels) + (1 - soft) * region
    out[y0:y1, x0:x1] = np.clip(blended, 0, 255).astype(np.uint8)
    return out
