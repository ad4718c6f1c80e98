"""Face front ends: one 68-point iBUG landmark set (or ``None``) per frame, for batches of BGR frames.

Two interchangeable implementations of :class:`~latentmuse.runtime.contracts.FaceFrontEnd`:

* :class:`S3FDFanFrontEnd`, the production front end of MuseTalk / face-alignment: the S3FD detector
  (faces with score > 0.5 after NMS) followed by FAN 2DFAN-4 landmarks, reproducing
  face-alignment's pre- and post-processing (see the functions below for each detail). Batches are
  processed with torch ops on the model's device; frames of one forward pass must share a size, so
  a batch is grouped by frame shape internally.
* :class:`DlibFrontEnd`, the offline default: dlib's HOG frontal face detector + its 68-point shape
  predictor (Debian ``libdlib-data``). Same landmark layout, no downloadable weights needed.

:func:`make_front_end` picks one ("auto" = S3FD+FAN when both weight files are in the weights folder,
else dlib).

Every front end works in two steps, so that a tracker (:mod:`latentmuse.runtime.tracking`) can
choose the dubbed face between them and the landmarker's cost does not grow with the number of
people in view:

* ``candidates(frames)``: every usable detector box of each frame as a
  :class:`~latentmuse.runtime.contracts.FaceCandidate`, highest score first, at most
  ``MAX_CANDIDATES``. A box fully or mostly (more than half its area) outside the frame, empty or
  non-finite is not a candidate (a face leaving the frame stops being one at that point).
* ``landmarks(frames, chosen)``: for one chosen candidate per frame (or ``None``: nothing is run), a
  :class:`~latentmuse.runtime.contracts.Face` whose ``landmarks`` are float32 (68, 2) in full-frame
  pixels (x, y), or ``None`` for degenerate landmarks (non-finite, or spanning fewer than
  ``MIN_FACE_PX`` pixels).

``detect(frames)`` is both for the highest-scoring candidate of each frame. ``None`` frames are
passthrough frames for the pipeline. Landmarks are **not** clipped to the frame (a face at the border
legitimately has jaw points outside it); the generators decide what to do with those.

A front end is loaded once per session, but what it must find depends on the clip: ``for_clip(
min_face_size, width, height)`` is the front end configured for one clip (dlib derives its detection
scale from the smallest face to find, :func:`detection_scale`; S3FD needs nothing and returns itself),
and its ``settings`` (a JSON-able dict) describe the detection settings in effect, for the face
cache's key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentmuseError
from ..graphs.wrappers import S3FD_OUTPUTS, FANGraph, S3FDGraph
from ..runners.base import Runner, run_chunked
from ..runners.torch_runner import TorchRunner
from .contracts import Face, FaceCandidate, FaceFrontEnd


__all__ = [
    "DEFAULT_DLIB_PREDICTOR",
    "DLIB_SMALLEST_FACE",
    "DlibFrontEnd",
    "S3FDFanFrontEnd",
    "fan_center_scale",
    "fan_crop",
    "detection_scale",
    "detection_size",
    "heatmaps_to_landmarks",
    "make_front_end",
    "nms",
    "s3fd_best",
    "s3fd_candidates",
    "s3fd_decode",
    "usable_box",
    "usable_face",
]

#: Debian's ``libdlib-data`` location of dlib's 68-point iBUG shape predictor.
DEFAULT_DLIB_PREDICTOR = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")

#: A face whose landmarks span fewer pixels than this (in x or y) is treated as degenerate.
MIN_FACE_PX = 4.0
#: A detector box with less than this fraction of its area inside the frame is unusable.
MIN_INSIDE_FRACTION = 0.5
#: At most this many candidates per frame (the highest-scoring) reach the tracker: a crowd larger than
#: this loses its least certain detections, and a detector's noise cannot make tracking quadratic.
MAX_CANDIDATES = 20

# S3FD constants (face-alignment ``detection/sfd``).
S3FD_MEAN_BGR = (104.0, 117.0, 123.0)
S3FD_VARIANCES = (0.1, 0.2)
S3FD_CANDIDATE_THRESHOLD = 0.05
S3FD_NMS_THRESHOLD = 0.3
S3FD_SCORE_THRESHOLD = 0.5

# FAN constants (face-alignment ``utils.py``).
FAN_CROP = 256
FAN_REFERENCE_SCALE = 195.0
FAN_SCALE_FACTOR = 200.0
FAN_CENTER_Y_OFFSET = 0.12

#: Left-right mirror permutation of the 68 iBUG points (face-alignment ``shuffle_lr``).
IBUG_FLIP = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
)  # fmt: skip


# ------------------------------------------------------------------------------------------ checks


def usable_box(box: Sequence[float], frame_shape: Sequence[int], *, min_inside: float = MIN_INSIDE_FRACTION) -> bool:
    """Whether a detector box can be a candidate: finite, non-empty, at least ``min_inside`` of its
    area inside the frame."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return False
    inside = max(0.0, min(x2, w) - max(x1, 0.0)) * max(0.0, min(y2, h) - max(y1, 0.0))
    return inside >= min_inside * (x2 - x1) * (y2 - y1)


def usable_face(
    landmarks: np.ndarray,
    box: Sequence[float],
    frame_shape: Sequence[int],
    *,
    min_inside: float = MIN_INSIDE_FRACTION,
    min_size: float = MIN_FACE_PX,
) -> bool:
    """Whether a detection can be used: box mostly inside the frame and non-degenerate landmarks."""
    if not usable_box(box, frame_shape, min_inside=min_inside):
        return False
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        return False
    span = pts.max(axis=0) - pts.min(axis=0)
    return bool(span[0] >= min_size and span[1] >= min_size)


def _face_or_none(landmarks: np.ndarray, box: Sequence[float], score: float, frame_shape: Sequence[int]) -> Face | None:
    landmarks = np.ascontiguousarray(landmarks, dtype=np.float32)
    box_t = tuple(float(v) for v in box)
    if not usable_face(landmarks, box_t, frame_shape):
        return None
    return Face(landmarks=landmarks, box=box_t, score=float(score))  # type: ignore[arg-type]


def _candidate_list(boxes: Sequence[Sequence[float]], scores: Sequence[float], frame_shape: Sequence[int]) -> list[FaceCandidate]:
    """The usable boxes of one frame as candidates, highest score first (stable), at most ``MAX_CANDIDATES``."""
    found = [FaceCandidate(tuple(float(v) for v in box), float(score))  # type: ignore[arg-type]
             for box, score in zip(boxes, scores) if usable_box(box, frame_shape)]
    found.sort(key=lambda c: -c.score)
    return found[:MAX_CANDIDATES]


def _check_chosen(frames: Sequence[np.ndarray], chosen: Sequence[FaceCandidate | None]) -> None:
    if len(chosen) != len(frames):
        raise ValueError(f"landmarks need one choice per frame, got {len(chosen)} for {len(frames)} frames")
    for frame in frames:
        _check_frame(frame)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}"
        raise ValueError(f"face front ends take BGR uint8 (H, W, 3) frames, got {got}")


# -------------------------------------------------------------------------------------------- dlib


@lru_cache(maxsize=4)
def _dlib_predictor(path: str):
    """The shape predictor (a 99 MB model, about 1 s to read), loaded once per file and shared."""
    import dlib

    return dlib.shape_predictor(path)


@lru_cache(maxsize=1)
def _dlib_detector():
    """The HOG detector (about 0.3 s to build; immutable, so one is shared)."""
    import dlib

    return dlib.get_frontal_face_detector()


#: dlib's HOG detector window is 80 x 80 pixels and its image pyramid shrinks by 5/6 per level, so the
#: boxes it reports are quantized: 73 px at the finest level, then 88, 105, 126 ... (x 1.2) at the
#: detection scale, whatever the face's size in between. Measured on ``skimage.data.astronaut()``
#: resampled so that its face's box (88 px at native size) would be N px, 25 frames each with a small
#: sway and zoom, at ``upsample=0``: found in 0/25 frames at N = 48, 2/25 at 50, 10/25 at 52, 20/25 at
#: 54, 25/25 from 56 on; mirrored, darkened, rotated 8 degrees or JPEG-compressed, 25/25 from 58 on
#: (docs/FACES.md). 60 leaves a margin for faces and poses less favourable than these.
DLIB_SMALLEST_FACE = 60.0
#: The detector window: a detection image whose short side is below this cannot hold a window, so
#: :func:`detection_scale` never shrinks a frame's short side below it.
DLIB_WINDOW = 80
#: The largest enlargement :func:`detection_scale` asks for (cost x 16): a ``min_face_size`` below
#: ``DLIB_SMALLEST_FACE / 4`` (15 px) is not honoured, those faces are not found.
DLIB_MAX_UPSCALE = 4.0


def detection_scale(min_face_size: float, width: int, height: int, *, smallest: float = DLIB_SMALLEST_FACE,
                    window: int = DLIB_WINDOW, max_upscale: float = DLIB_MAX_UPSCALE) -> float:
    """The factor by which a ``width`` x ``height`` frame is resized for dlib's detector so that a face
    ``min_face_size`` pixels tall (detector box height, full-frame pixels) is ``smallest`` pixels tall at
    the detection scale, dlib's smallest reliably detected face.

    Why one exact resize and never dlib's own ``upsample``: HOG detection costs about the pixel count,
    so resizing by ``f`` costs ``f**2`` while each dlib upsample step doubles the side (x 4). For any
    factor up to 4 the exact resize is the cheaper way to make the face large enough (``f = 1.25``:
    1.6x instead of 4x), and below 1 it is what makes large frames cheap: a frame is shrunk exactly as
    far as the smallest face that must be found allows, however large it is.

    Two bounds: the short side is not shrunk below ``window`` pixels (the detector's 80 x 80 window
    must fit; a frame already smaller is not enlarged for that), and the factor is at most
    ``max_upscale`` (smaller minimum sizes are not honoured; cost grows with its square).
    """
    if not (math.isfinite(min_face_size) and min_face_size > 0):
        raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size}")
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width} x {height}")
    scale = min(smallest / min_face_size, max_upscale)
    return max(scale, min(1.0, window / min(width, height)))


def detection_size(scale: float, width: int, height: int) -> tuple[int, int]:
    """The (width, height) of a ``width`` x ``height`` frame resized by ``scale`` (at least 1 x 1)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


class DlibFrontEnd:
    """dlib's HOG frontal face detector + 68-point shape predictor (the offline front end).

    Per frame: ``detector.run(rgb, upsample, 0)`` gives boxes with scores (every usable one is a
    candidate); the shape predictor places the 68 iBUG points in the chosen box only.

    Detection scale. HOG detection cost grows with the pixel count (and x4 per ``upsample`` step), and
    dlib finds no face much below :data:`DLIB_SMALLEST_FACE` pixels at the detection scale, so the
    frame is resized for detection (``INTER_AREA`` down, ``INTER_LINEAR`` up) and the boxes are mapped
    back to full-frame pixels (pixel-centre convention). Two ways to choose the factor:

    * **per clip** (``min_face_size`` given, normally through :meth:`for_clip`): the factor of
      :func:`detection_scale`, so every face at least ``min_face_size`` tall is found, and large
      frames are shrunk as far as that allows (raising ``--min-face-size`` makes detection cheaper);
      ``upsample`` must then be 0.
    * **fixed** (``min_face_size=None``, the constructor's default): the frame is shrunk only when its
      longest side exceeds ``detect_max_side`` (default 640), to that size, then ``upsample`` dlib
      steps; ``DlibFrontEnd()`` is exactly the front end of earlier releases (upsample 0, 640), whose
      smallest face is about 56 px times (longest side / 640) in large frames.

    The shape predictor always runs on the full-resolution frame, so landmark precision is that of
    the full frame whatever the detection scale. dlib gives integer landmark coordinates; they are
    returned as float32.
    """

    name = "dlib"

    def __init__(
        self,
        predictor_path: str | Path | None = None,
        upsample: int = 0,
        detect_max_side: int | None = 640,
        *,
        min_face_size: float | None = None,
        clip_size: tuple[int, int] | None = None,
    ) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - dlib-bin is a dependency
            raise LatentmuseError(f"dlib is not installed ({exc}).", "pip install dlib-bin") from None
        path = Path(predictor_path) if predictor_path is not None else DEFAULT_DLIB_PREDICTOR
        if not path.is_file():
            raise LatentmuseError(
                f"dlib 68-point shape predictor {path} not found.",
                "apt-get install libdlib-data (it installs /usr/share/dlib/shape_predictor_68_face_landmarks.dat), "
                "or pass the path of shape_predictor_68_face_landmarks.dat.",
            )
        if upsample not in (0, 1, 2):
            raise ValueError(f"upsample must be 0, 1 or 2, got {upsample}")
        if min_face_size is not None:
            if upsample:
                raise ValueError("a per-clip detection scale (min_face_size) replaces upsample; use upsample=0")
            detection_scale(min_face_size, 1, 1)  # validates the size
        self._dlib = dlib
        self.predictor_path = path
        self.upsample = int(upsample)
        self.detect_max_side = detect_max_side
        self.min_face_size = min_face_size
        self.clip_size = clip_size  # (width, height) the per-clip settings describe, or None
        self.detector = _dlib_detector()
        self.predictor = _dlib_predictor(str(path.resolve()))

    def for_clip(self, min_face_size: float, width: int, height: int) -> DlibFrontEnd:
        """This front end detecting every face at least ``min_face_size`` pixels tall in ``width`` x
        ``height`` frames (:func:`detection_scale`); the detector and predictor are shared, not reloaded.
        A frame of another size still gets the factor derived for its own size."""
        return DlibFrontEnd(self.predictor_path, 0, self.detect_max_side, min_face_size=min_face_size,
                            clip_size=(int(width), int(height)))

    @property
    def settings(self) -> dict:
        """The detection settings in effect (JSON-able): what the face cache's key needs so that a pass
        made with other settings misses, and what the report can show."""
        if self.min_face_size is None:
            return {"detector": "dlib_hog", "upsample": self.upsample, "detect_max_side": self.detect_max_side}
        out: dict = {"detector": "dlib_hog", "upsample": 0, "min_face_size": self.min_face_size}
        if self.clip_size is not None:
            w, h = self.clip_size
            scale = detection_scale(self.min_face_size, w, h)
            out.update(scale=round(scale, 6), detect_size=list(detection_size(scale, w, h)),
                       smallest_face=round(DLIB_SMALLEST_FACE / scale, 1))
        return out

    def scale(self, width: int, height: int) -> float:
        """The detection factor for a ``width`` x ``height`` frame under these settings."""
        if self.min_face_size is not None:
            return detection_scale(self.min_face_size, width, height)
        longest = max(width, height)
        if self.detect_max_side is not None and longest > self.detect_max_side:
            return self.detect_max_side / longest
        return 1.0

    def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
        return self.landmarks(frames, [found[0] if found else None for found in self.candidates(frames)])

    def candidates(self, frames: Sequence[np.ndarray]) -> list[list[FaceCandidate]]:
        return [self._candidates_one(frame) for frame in frames]

    def landmarks(self, frames: Sequence[np.ndarray], chosen: Sequence[FaceCandidate | None]) -> list[Face | None]:
        _check_chosen(frames, chosen)
        return [None if c is None else self._landmarks_one(frame, c) for frame, c in zip(frames, chosen)]

    def _candidates_one(self, frame: np.ndarray) -> list[FaceCandidate]:
        _check_frame(frame)
        h, w = frame.shape[:2]
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        s = self.scale(w, h)
        if s != 1.0:
            sw, sh = detection_size(s, w, h)
            small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR)
            fx, fy = w / sw, h / sh
        else:
            small, fx, fy = rgb, 1.0, 1.0
        rects, scores, _ = self.detector.run(small, self.upsample, 0.0)
        # dlib boxes are inclusive pixel indices; map pixel centres back to the full frame.
        boxes = [((r.left() + 0.5) * fx - 0.5, (r.top() + 0.5) * fy - 0.5,
                  (r.right() + 0.5) * fx - 0.5, (r.bottom() + 0.5) * fy - 0.5) for r in rects]
        return _candidate_list(boxes, scores, frame.shape)

    def _landmarks_one(self, frame: np.ndarray, candidate: FaceCandidate) -> Face | None:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        rect = self._dlib.rectangle(*(round(v) for v in candidate.box))
        shape = self.predictor(rgb, rect)
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return _face_or_none(pts, candidate.box, candidate.score, frame.shape)


# ------------------------------------------------------------------------------------------- S3FD


def s3fd_decode(outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode S3FD's raw maps into per-anchor face probabilities and boxes for a batch.

    ``outputs`` is the network's list ``[cls1, reg1, ..., cls6, reg6]`` (logits, (B, 2, h, w); box
    regressions, (B, 4, h, w)). Scale ``i`` has stride ``2 ** (i + 2)`` (4 ... 128); the anchor of cell
    (row, col) is centred at (stride / 2 + col * stride, stride / 2 + row * stride) with side
    ``4 * stride``. With variances (0.1, 0.2) a regression (dx, dy, dw, dh) decodes to centre
    ``anchor_c + d * 0.1 * side`` and size ``side * exp(dwh * 0.2)``; the box is (x1, y1, x1 + w, y1 + h).
    Probabilities are the softmax over the two classes, channel 1 (face).

    Returns ``scores`` (B, N) and ``boxes`` (B, N, 4) float64, anchors ordered scale by scale, row-major
    within a scale (face-alignment's candidate order).
    """
    scores, boxes = [], []
    v_c, v_s = S3FD_VARIANCES
    for i in range(len(outputs) // 2):
        cls, reg = outputs[2 * i], outputs[2 * i + 1]
        b, _, h, w = cls.shape
        stride = 2 ** (i + 2)
        prob = F.softmax(cls.float(), dim=1)[:, 1].reshape(b, h * w)
        loc = reg.double().permute(0, 2, 3, 1).reshape(b, h * w, 4)
        rows, cols = torch.meshgrid(
            torch.arange(h, dtype=torch.float64, device=cls.device),
            torch.arange(w, dtype=torch.float64, device=cls.device),
            indexing="ij",
        )
        acx = (stride / 2 + cols * stride).reshape(1, -1)
        acy = (stride / 2 + rows * stride).reshape(1, -1)
        side = 4.0 * stride
        cx = acx + loc[..., 0] * v_c * side
        cy = acy + loc[..., 1] * v_c * side
        bw = side * torch.exp(loc[..., 2] * v_s)
        bh = side * torch.exp(loc[..., 3] * v_s)
        x1, y1 = cx - bw / 2, cy - bh / 2
        scores.append(prob.double())
        boxes.append(torch.stack([x1, y1, x1 + bw, y1 + bh], dim=-1))
    return torch.cat(scores, dim=1), torch.cat(boxes, dim=1)


def nms(dets: np.ndarray, threshold: float = S3FD_NMS_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression with face-alignment's conventions.

    ``dets`` is (N, 5) ``x1, y1, x2, y2, score``. Areas count pixels inclusively (``x2 - x1 + 1``);
    a box is suppressed when its overlap (intersection over union) with a kept, higher-scoring box
    exceeds ``threshold``. Returns the kept indices, highest score first (equal scores: lower
    index first, where face-alignment's reversed ``argsort`` takes an unspecified order).
    """
    dets = np.asarray(dets, dtype=np.float64)
    if len(dets) == 0:
        return []
    x1, y1, x2, y2, sc = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-sc, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return keep


def s3fd_candidates(
    outputs: Sequence[torch.Tensor],
    *,
    candidate_threshold: float = S3FD_CANDIDATE_THRESHOLD,
    nms_threshold: float = S3FD_NMS_THRESHOLD,
    score_threshold: float = S3FD_SCORE_THRESHOLD,
) -> list[np.ndarray]:
    """All faces per frame as face-alignment's ``detect_from_batch`` gives them: (K, 5) arrays.

    face-alignment decodes the anchors with probability > ``candidate_threshold``, suppresses them with
    :func:`nms` and keeps those with score > ``score_threshold``, highest score first. Suppression only
    ever comes from a kept, higher-scoring box, so a box above ``score_threshold`` is suppressed by
    boxes above it alone: running NMS on the anchors above both thresholds gives the same faces,
    without an NMS over the thousands of weak anchors a frame has.
    """
    scores, boxes = s3fd_decode(outputs)
    result = []
    for b in range(scores.shape[0]):
        mask = scores[b] > max(candidate_threshold, score_threshold)
        dets = torch.cat([boxes[b][mask], scores[b][mask, None]], dim=1).cpu().numpy()
        dets = dets[nms(dets, nms_threshold)] if len(dets) else dets.reshape(0, 5)
        result.append(dets[dets[:, 4] > score_threshold])
    return result


def s3fd_best(
    outputs: Sequence[torch.Tensor], *, score_threshold: float = S3FD_SCORE_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The highest-scoring face per frame: ``boxes`` (B, 4), ``scores`` (B,), ``found`` (B,) bool.

    Equal to the first row of :func:`s3fd_candidates` (greedy NMS always keeps the top-scoring
    candidate first, and it passes the 0.05 pre-filter whenever it passes ``score_threshold``), but
    without running NMS over thousands of candidates.
    """
    scores, boxes = s3fd_decode(outputs)
    best_score, best = scores.max(dim=1)
    best_box = boxes[torch.arange(boxes.shape[0], device=boxes.device), best]
    return best_box, best_score, best_score > score_threshold


# -------------------------------------------------------------------------------------------- FAN


def fan_center_scale(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """face-alignment's crop centre and scale from detector boxes (B, 4) ``x1, y1, x2, y2``.

    centre = box centre with y moved up by 0.12 x box height; scale = (width + height) / 195
    (the crop side is 200 x scale pixels).
    """
    boxes = boxes.double()
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx = x2 - (x2 - x1) / 2.0
    cy = y2 - (y2 - y1) / 2.0 - (y2 - y1) * FAN_CENTER_Y_OFFSET
    scale = (x2 - x1 + y2 - y1) / FAN_REFERENCE_SCALE
    return torch.stack([cx, cy], dim=-1), scale


def _crop_corners(centers: torch.Tensor, scales: torch.Tensor, resolution: int = FAN_CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer corners ``ul``, ``br`` (B, 2) of face-alignment's crop: inverse transform of (1, 1) and
    (res, res), truncated towards zero."""
    side = (FAN_SCALE_FACTOR * scales.double())[:, None]
    c = centers.double()
    ul = torch.trunc((1.0 / resolution - 0.5) * side + c)
    br = torch.trunc(0.5 * side + c)
    return ul, br


_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE (11 bits)


def _linear_taps(
    size: torch.Tensor, resolution: int, *, horizontal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's ``INTER_LINEAR`` taps for resizing ``size`` pixels (B,) to ``resolution`` (uint8 path).

    Source position ``(u + 0.5) * size / res - 0.5`` in float32; the two weights are rounded to
    11-bit fixed point. Horizontally OpenCV moves a position outside [0, size - 1] onto the edge pixel
    with weights (1, 0); vertically it keeps the weights and clamps the row indices instead (the two
    taps then read the same row). Returns both tap indices and weights, (B, res) int64 each.
    """
    u = torch.arange(resolution, dtype=torch.float64, device=size.device)
    scale = 1.0 / (resolution / size.double())
    f = ((u[None, :] + 0.5) * scale[:, None] - 0.5).float()
    s = torch.floor(f)
    f = f - s
    s = s.long()
    last = (size.long() - 1)[:, None]
    if horizontal:
        edge = (s < 0) | (s >= last)
        s = torch.where(s < 0, torch.zeros_like(s), torch.minimum(s, last))
        f = torch.where(edge, torch.zeros_like(f), f)
    s0 = torch.minimum(s.clamp(min=0), last)
    s1 = torch.minimum((s + 1).clamp(min=0), last)
    w1 = torch.round(f * _COEF_SCALE).long()
    w0 = torch.round((1.0 - f) * _COEF_SCALE).long()
    return s0, s1, w0, w1


def fan_crop(frames: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, resolution: int = FAN_CROP) -> torch.Tensor:
    """face-alignment's ``crop`` for a batch, bit-exact, with torch integer ops.

    ``frames``: (B, 3, H, W) BGR with integer values 0..255 (uint8 or float; one frame per face);
    returns (B, 3, res, res) float32 RGB in [0, 1], the FAN input. The original cuts the integer window
    [ul, br) (:func:`_crop_corners`) out of the image, zero where it leaves the frame, and resizes it
    to res x res with ``cv2.resize(..., INTER_LINEAR)`` on uint8. This reproduces that resize's
    fixed-point arithmetic (11-bit weights, horizontal pass, then
    ``((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2``), so the crop is identical.
    """
    b, _, h, w = frames.shape
    ul, br = _crop_corners(centers, scales, resolution)
    size = (br - ul).clamp(min=1.0)  # (B, 2): window width, height
    x0, x1, ax0, ax1 = _linear_taps(size[:, 0], resolution, horizontal=True)
    y0, y1, ay0, ay1 = _linear_taps(size[:, 1], resolution, horizontal=False)
    x0, x1 = x0 + ul[:, 0:1].long(), x1 + ul[:, 0:1].long()  # window -> frame coordinates
    y0, y1 = y0 + ul[:, 1:2].long(), y1 + ul[:, 1:2].long()

    def rows(y: torch.Tensor) -> torch.Tensor:  # (B, 3, res, W) int64, zero outside the frame
        inside = ((y >= 0) & (y < h)).view(b, 1, resolution, 1)
        idx = y.clamp(0, h - 1).view(b, 1, resolution, 1).expand(b, 3, resolution, w)
        return frames.gather(2, idx).to(torch.int64) * inside

    def cols(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, 3, res, res)
        inside = ((x >= 0) & (x < w)).view(b, 1, 1, resolution)
        idx = x.clamp(0, w - 1).view(b, 1, 1, resolution).expand(b, 3, resolution, resolution)
        return r.gather(3, idx) * inside

    def horizontal(r: torch.Tensor) -> torch.Tensor:
        return cols(r, x0) * ax0.view(b, 1, 1, resolution) + cols(r, x1) * ax1.view(b, 1, 1, resolution)

    h0, h1 = horizontal(rows(y0)), horizontal(rows(y1))
    by0, by1 = ay0.view(b, 1, resolution, 1), ay1.view(b, 1, resolution, 1)
    out = (((by0 * (h0 >> 4)) >> 16) + ((by1 * (h1 >> 4)) >> 16) + 2) >> 2
    return out.clamp(0, 255).flip(1).float() / 255.0  # BGR -> RGB


def heatmaps_to_landmarks(
    heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, *, quantize: bool = True
) -> torch.Tensor:
    """face-alignment's ``get_preds_fromhm`` + inverse transform, for a batch: (B, N, 2) float64.

    Per heatmap: the argmax cell (col, row) (first maximum on ties); if it is not on the border, each
    coordinate moves 0.25 towards its higher neighbour (sign of the neighbour difference, 0 on a tie);
    the heatmap coordinate is then ``cell + 0.5 + shift`` (face-alignment's 1-based index minus 0.5)
    and maps to the frame by ``(p / res - 0.5) * 200 * scale + centre`` (res = heatmap size, 64).
    face-alignment truncates the result towards zero (``astype(int32)``); ``quantize=False`` keeps the
    sub-pixel value.
    """
    b, n, h, w = heatmaps.shape
    hm = heatmaps.float()
    idx = hm.reshape(b, n, h * w).argmax(dim=-1)
    px, py = idx % w, idx // w

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        flat = yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
        return hm.reshape(b, n, h * w).gather(-1, flat[..., None])[..., 0]

    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    dx = torch.sign(at(py, px + 1) - at(py, px - 1))
    dy = torch.sign(at(py + 1, px) - at(py - 1, px))
    shift = torch.stack([dx, dy], dim=-1).double() * 0.25 * inner[..., None]
    preds = torch.stack([px, py], dim=-1).double() + 0.5 + shift
    side = (FAN_SCALE_FACTOR * scales.double())[:, None, None]
    out = (preds / h - 0.5) * side + centers.double()[:, None, :]
    return torch.trunc(out) if quantize else out


class S3FDFanFrontEnd:
    """S3FD face detection + FAN 68-point landmarks, as face-alignment runs them, batched.

    * S3FD sees the full-resolution frame, BGR minus the VGG mean (104, 117, 123), as face-alignment
      feeds it (face-alignment converts its RGB input back to BGR). Note that MuseTalk's vendored
      copy feeds RGB minus this BGR mean (a channel-order bug inherited from Wav2Lip); we do not.
    * Every face with score > 0.5 after NMS 0.3 is a candidate (:func:`s3fd_candidates`); ``detect``
      takes the highest-scoring one, as face-alignment.
    * FAN on face-alignment's 256 x 256 crop (:func:`fan_center_scale`, :func:`fan_crop`), last
      stack's heatmaps, decoded with :func:`heatmaps_to_landmarks`. ``flip_input`` (face-alignment's
      option, off by default in every release MuseTalk and LatentSync used) adds the mirrored
      prediction. ``quantize`` (default, as face-alignment) truncates landmark coordinates to
      integers.

    Frames are grouped by shape and run ``batch_size`` at a time (S3FD memory grows with frame size
    and batch: a 1080p batch of 8 needs several GB on a GPU). FAN sees one crop per frame, the chosen
    candidate's.
    """

    name = "s3fd"

    def __init__(
        self,
        s3fd: Runner | nn.Module,
        fan: Runner | nn.Module,
        device: str | torch.device = "cpu",
        *,
        batch_size: int = 8,
        flip_input: bool = False,
        quantize: bool = True,
        score_threshold: float = S3FD_SCORE_THRESHOLD,
    ) -> None:
        self.device = torch.device(device)
        # Both networks run through runners (a bare module is wrapped in a PyTorch runner on ``device``).
        self.s3fd = s3fd if not isinstance(s3fd, nn.Module) else TorchRunner("s3fd_frames", S3FDGraph(s3fd), self.device)
        self.fan = fan if not isinstance(fan, nn.Module) else TorchRunner("fan68", FANGraph(fan), self.device)
        self.batch_size = max(1, int(batch_size))
        self.flip_input = flip_input
        self.quantize = quantize
        self.score_threshold = score_threshold

    @classmethod
    def from_weights(cls, root: str | Path, device: str | torch.device = "cpu", *,
                     trust_torchscript: str | Path | None = None, **kwargs) -> S3FDFanFrontEnd:
        """Load S3FD and FAN (strictly) from a weights folder (``latentmuse weights download``);
        ``trust_torchscript``: a FAN TorchScript archive the user vouches for (else only the pinned one)."""
        from ..models.folder import load_model

        fan = load_model(root, "fan68", device=device, trust_torchscript=trust_torchscript)
        return cls(load_model(root, "s3fd", device=device), fan, device, **kwargs)

    def for_clip(self, min_face_size: float, width: int, height: int) -> S3FDFanFrontEnd:
        """This front end, unchanged: S3FD already finds faces far below any sensible
        ``--min-face-size`` at full resolution (its smallest anchors are 16 px, stride 4), and its boxes
        must stay face-alignment's, which sees the full frame; so there is no per-clip scale to derive."""
        return self

    @property
    def settings(self) -> dict:
        """The detection settings in effect (JSON-able), for the face cache's key and the report."""
        return {"detector": "s3fd", "score_threshold": self.score_threshold, "flip_input": self.flip_input,
                "quantize": self.quantize}

    def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
        return self.landmarks(frames, [found[0] if found else None for found in self.candidates(frames)])

    def candidates(self, frames: Sequence[np.ndarray]) -> list[list[FaceCandidate]]:
        for frame in frames:
            _check_frame(frame)
        results: list[list[FaceCandidate]] = [[] for _ in frames]
        for chunk in self._batches(frames, range(len(frames))):
            for i, found in zip(chunk, self._candidates_batch([frames[i] for i in chunk])):
                results[i] = found
        return results

    def landmarks(self, frames: Sequence[np.ndarray], chosen: Sequence[FaceCandidate | None]) -> list[Face | None]:
        _check_chosen(frames, chosen)
        results: list[Face | None] = [None] * len(frames)
        for chunk in self._batches(frames, [i for i, c in enumerate(chosen) if c is not None]):
            faces = self._landmarks_batch([frames[i] for i in chunk], [chosen[i] for i in chunk])  # type: ignore[misc]
            for i, face in zip(chunk, faces):
                results[i] = face
        return results

    def _batches(self, frames: Sequence[np.ndarray], indices: Sequence[int]) -> Iterator[list[int]]:
        """``indices`` grouped by frame shape (one forward pass needs one size), ``batch_size`` at a time."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in indices:
            groups.setdefault(frames[i].shape, []).append(i)
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                yield group[start : start + self.batch_size]

    def _upload(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2).float()  # BGR 0..255

    @torch.no_grad()
    def _candidates_batch(self, frames: Sequence[np.ndarray]) -> list[list[FaceCandidate]]:
        mean = torch.tensor(S3FD_MEAN_BGR, device=self.device).view(1, 3, 1, 1)
        heads = self.s3fd({"image": self._upload(frames) - mean})
        dets = s3fd_candidates([heads[name].to(self.device, torch.float32) for name in S3FD_OUTPUTS],
                               score_threshold=self.score_threshold)
        return [_candidate_list(d[:, :4], d[:, 4], frame.shape) for d, frame in zip(dets, frames)]

    @torch.no_grad()
    def _landmarks_batch(self, frames: Sequence[np.ndarray], chosen: Sequence[FaceCandidate]) -> list[Face | None]:
        boxes = torch.tensor([c.box for c in chosen], dtype=torch.float64, device=self.device)
        centers, scales = fan_center_scale(boxes)
        crops = fan_crop(self._upload(frames), centers, scales)
        heatmaps = self._heatmaps(crops)
        if self.flip_input:
            mirrored = self._heatmaps(crops.flip(-1))
            heatmaps = heatmaps + mirrored[:, list(IBUG_FLIP)].flip(-1)
        landmarks = heatmaps_to_landmarks(heatmaps, centers, scales, quantize=self.quantize).cpu().numpy()
        return [_face_or_none(landmarks[k], c.box, c.score, frame.shape) for k, (c, frame) in enumerate(zip(chosen, frames))]

    def _heatmaps(self, crops: torch.Tensor) -> torch.Tensor:
        return run_chunked(self.fan, {"image": crops}, "heatmaps", len(crops), self.device)


# ---------------------------------------------------------------------------------------- factory

FrontEndKind = Literal["auto", "s3fd", "dlib"]


def _missing_face_weights(weights_root: Path | None) -> list[str]:
    """Expected paths (relative to the folder) of the S3FD / FAN weights that are not present."""
    from ..models.folder import folder_layouts
    from ..models.layouts import layouts

    if weights_root is None or not Path(weights_root).is_dir():
        return [" or ".join(e.targets) for e in layouts() if e.key in ("s3fd", "fan68")]
    root = Path(weights_root)
    return [" or ".join(e.targets) for e in folder_layouts(root, ["s3fd", "fan68"]) if e.locate(root) is None]


def front_end_kind(kind: FrontEndKind | str = "auto", weights_root: str | Path | None = None) -> str:
    """``"s3fd"`` or ``"dlib"`` for ``kind`` (see :func:`make_front_end`); raises when s3fd lacks weights."""
    root = Path(weights_root) if weights_root is not None else None
    if kind == "dlib":
        return "dlib"
    if kind not in ("auto", "s3fd"):
        raise LatentmuseError(f"unknown face front end {kind!r}.", "use auto, s3fd or dlib.")
    missing = _missing_face_weights(root)
    if not missing:
        return "s3fd"
    if kind == "auto":
        return "dlib"
    where = root if root is not None else "the weights folder (none given)"
    target = root if root is not None else "WEIGHTS_DIR"
    raise LatentmuseError(
        f"face front end s3fd needs {' and '.join(missing)} in {where}.",
        f"run `latentmuse weights download --dir {target} -m s3fd -m fan68`, or use the dlib front end.",
    )


def make_front_end(
    kind: FrontEndKind | str = "auto", weights_root: str | Path | None = None, device: str | torch.device = "cpu",
    runners: Mapping[str, Runner] | None = None,
) -> FaceFrontEnd:
    """The face front end for ``kind``.

    ``"auto"``: S3FD + FAN when both weight files are in ``weights_root``, else dlib (the offline
    default). ``"s3fd"``: S3FD + FAN, a :class:`LatentmuseError` naming the missing file otherwise.
    ``"dlib"``: dlib HOG + shape predictor. ``runners`` (a run's model set) supplies the ``s3fd`` and
    ``fan68`` runners; without them the networks load from ``weights_root`` onto ``device``.
    """
    if front_end_kind(kind, weights_root) == "dlib":
        return DlibFrontEnd()
    if runners is not None and "s3fd" in runners:
        return S3FDFanFrontEnd(runners["s3fd"], runners["fan68"], device)
    return S3FDFanFrontEnd.from_weights(Path(weights_root), device)
