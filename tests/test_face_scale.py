"""dlib's detection scale follows --min-face-size (docs/FACES.md, "Detection scale"): real detector, real face.

The clips are ``skimage.data.astronaut()`` placed on a grey canvas at a chosen size, swaying and zooming
a little from frame to frame. The astronaut's face has an 88 px dlib box at native size (x 179..266,
y 83..170), so scaling the photograph by ``box / 88`` makes a face whose box is ``box`` pixels.

Run as a script to measure detection cost per frame (the numbers in docs/FACES.md):
``.venv/bin/python tests/test_face_scale.py``.
"""

from __future__ import annotations

import math
import sys
import time

import cv2
import numpy as np
import pytest
from skimage import data

from latentmuse.runtime import faces
from latentmuse.runtime.faces import DLIB_SMALLEST_FACE, DlibFrontEnd, S3FDFanFrontEnd, detection_scale, detection_size

needs_predictor = pytest.mark.skipif(
    not faces.DEFAULT_DLIB_PREDICTOR.is_file(), reason="libdlib-data (68-point shape predictor) not installed"
)

ASTRONAUT_BOX = 88.0  # dlib's box height of the astronaut's face at native size
ASTRONAUT_FACE = (222.5, 126.5)  # its centre


def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[..., ::-1])


def placed(image: np.ndarray, box: float, center: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """A ``size`` (width, height) grey frame with the astronaut scaled so its face box is ``box`` px and
    its face centred at ``center``."""
    s = box / ASTRONAUT_BOX
    matrix = np.array([[s, 0.0, center[0] - s * ASTRONAUT_FACE[0]], [0.0, s, center[1] - s * ASTRONAUT_FACE[1]]])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))


def swaying_clip(box: float, size: tuple[int, int], n: int = 25) -> list[np.ndarray]:
    """``n`` frames: the face (``box`` px, +-3 % zoom) circling the frame centre by a few pixels."""
    image = astronaut_bgr()
    w, h = size
    out = []
    for i in range(n):
        a = 2 * math.pi * i / (n - 1)
        center = (w / 2 + 6 * math.sin(a), h / 2 + 4 * math.cos(a))
        out.append(placed(image, box * (1 + 0.03 * math.sin(2 * a)), center, size))
    return out


def found(front_end: DlibFrontEnd, frames: list[np.ndarray]) -> int:
    return sum(bool(c) for c in front_end.candidates(frames))


# ------------------------------------------------------------------------------------ the pure function


@pytest.mark.parametrize(
    ("min_face", "width", "height", "scale", "detect"),
    [
        (64, 240, 320, 60 / 64, (225, 300)),  # a phone clip: 0.9375, slightly smaller than the frame
        (64, 1920, 1080, 60 / 64, (1800, 1012)),  # 1080p, default --min-face-size: nearly full size
        (200, 1920, 1080, 0.3, (576, 324)),  # 1080p, faces of 200 px or more: 0.3
        (128, 1280, 720, 60 / 128, (600, 338)),  # 720p, 128 px: 0.46875
        (48, 240, 320, 1.25, (300, 400)),  # smaller than dlib's smallest face: enlarged by 60 / 48
        (60, 640, 480, 1.0, (640, 480)),  # exactly dlib's smallest face: unchanged
        (200, 240, 320, 80 / 240, (80, 107)),  # 0.3 would leave 72 px across; the 80 px window must fit
        (64, 60, 60, 1.0, (60, 60)),  # a frame smaller than the window is not shrunk (nor enlarged)
        (10, 640, 480, 4.0, (2560, 1920)),  # 6x would be needed; capped at 4x (faces below 15 px not found)
    ],
)
def test_detection_scale_worked_by_hand(min_face, width, height, scale, detect) -> None:
    got = detection_scale(min_face, width, height)
    assert got == pytest.approx(scale, rel=1e-12)
    assert detection_size(got, width, height) == detect
    # the derived factor makes a face of min_face at least dlib's smallest, unless capped at 4x
    assert min_face * got >= DLIB_SMALLEST_FACE - 1e-9 or got == faces.DLIB_MAX_UPSCALE


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf")])
def test_detection_scale_rejects_impossible_sizes(bad) -> None:
    with pytest.raises(ValueError):
        detection_scale(bad, 640, 480)


# ------------------------------------------------------------------------------- the real detector


@needs_predictor
def test_hd_clip_small_face_found_in_every_frame_only_with_the_derived_scale() -> None:
    """A 72 px face in 1280 x 720: the fixed 640 px detection halves it to 36 px, below dlib's
    smallest face, so it is never found; the scale derived for --min-face-size 64 keeps it at 67 px."""
    frames = swaying_clip(72, (1280, 720))
    old = DlibFrontEnd()
    new = old.for_clip(64, 1280, 720)
    assert old.scale(1280, 720) == 0.5 and new.scale(1280, 720) == pytest.approx(60 / 64)
    assert found(old, frames) == 0
    assert found(new, frames) == 25


@needs_predictor
def test_phone_clip_at_the_detectors_limit_found_in_every_frame_with_the_derived_scale() -> None:
    """A 240 x 320 clip whose face is at dlib's limit at full size (52 px: found now and then, with a
    73 px box, dlib's smallest): --min-face-size 48 enlarges the frame by 1.25 and finds it every time."""
    frames = swaying_clip(52, (240, 320))
    old_count = found(DlibFrontEnd(), frames)
    assert 3 <= old_count <= 18  # measured 6 of 25
    new = DlibFrontEnd().for_clip(48, 240, 320)
    got = new.candidates(frames)
    assert sum(bool(c) for c in got) == 25
    # found at the detection scale's finest level: dlib's 73 px box, mapped back by 1 / 1.25
    heights = {round(c[0].height) for c in got}
    assert heights <= {58, 59}


@needs_predictor
def test_fixed_settings_are_exactly_the_old_front_end() -> None:
    """``DlibFrontEnd()`` (no min_face_size) is today's detection: frames longer than 640 px shrunk to 640
    with INTER_AREA, upsample 0, pixel-centre mapping. Checked against dlib called directly."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    image = astronaut_bgr()
    frames = [placed(image, 150, (700, 380), (1280, 720)), placed(image, 90, (160, 120), (320, 240)),
              placed(image, 200, (500, 300), (1000, 640))]
    fe = DlibFrontEnd()
    assert fe.settings == {"detector": "dlib_hog", "upsample": 0, "detect_max_side": 640}
    for frame, got in zip(frames, fe.candidates(frames)):
        h, w = frame.shape[:2]
        s = 640 / max(w, h) if max(w, h) > 640 else 1.0
        sw, sh = round(w * s), round(h * s)
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        rects, scores, _ = detector.run(small, 0, 0.0)
        expected = [((r.left() + 0.5) * w / sw - 0.5, (r.top() + 0.5) * h / sh - 0.5,
                     (r.right() + 0.5) * w / sw - 0.5, (r.bottom() + 0.5) * h / sh - 0.5) for r in rects]
        assert len(got) == len(expected) == 1
        assert got[0].box == pytest.approx(expected[0], abs=1e-9) and got[0].score == pytest.approx(scores[0])


@needs_predictor
@pytest.mark.parametrize(("zoom", "min_face"), [(3.0, 180), (0.5, 30)])
def test_boxes_map_back_to_full_frame_pixels(zoom: float, min_face: int) -> None:
    """The astronaut zoomed by 3 (detected at 1/3) or by 1/2 (detected at 2x): the detection image is
    the 512 px original again, so the mapped box is the original's box through the pixel-centre
    mapping ``(v + 0.5) * zoom - 0.5``, within a pixel or two."""
    image = astronaut_bgr()
    (reference,) = DlibFrontEnd().candidates([image])
    (ref,) = reference
    frame = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC if zoom > 1 else cv2.INTER_AREA)
    fe = DlibFrontEnd().for_clip(min_face, frame.shape[1], frame.shape[0])
    assert fe.scale(frame.shape[1], frame.shape[0]) == pytest.approx(1 / zoom)
    assert fe.settings["detect_size"] == [512, 512]
    (got,) = fe.candidates([frame])
    assert len(got) == 1
    expected = [(v + 0.5) * zoom - 0.5 for v in ref.box]
    assert np.abs(np.subtract(got[0].box, expected)).max() <= 2.0
    # the landmarks (predictor at full resolution) land on the same face
    (face,) = fe.landmarks([frame], [got[0]])
    (ref_face,) = DlibFrontEnd().landmarks([image], [ref])
    assert face is not None and ref_face is not None
    err = np.abs(face.landmarks - ((ref_face.landmarks.astype(np.float64) + 0.5) * zoom - 0.5))
    assert err.mean() <= 1.5 * max(zoom, 1.0)


@needs_predictor
def test_settings_name_the_scale_and_change_with_it() -> None:
    base = DlibFrontEnd()
    a = base.for_clip(64, 1920, 1080)
    assert a.settings == {"detector": "dlib_hog", "upsample": 0, "min_face_size": 64, "scale": 0.9375,
                          "detect_size": [1800, 1012], "smallest_face": 64.0}
    assert a.predictor is base.predictor and a.detector is base.detector  # nothing reloaded
    assert base.for_clip(200, 1920, 1080).settings["detect_size"] == [576, 324]
    assert base.for_clip(200, 1920, 1080).settings != a.settings != base.settings
    assert base.for_clip(64, 1920, 1080).settings == a.settings  # JSON-equal: same cache key
    with pytest.raises(ValueError):
        DlibFrontEnd(upsample=1, min_face_size=64)


def test_s3fd_for_clip_is_itself() -> None:
    fe = S3FDFanFrontEnd(lambda inputs: {}, lambda inputs: {})  # networks never run here
    assert fe.for_clip(64, 1920, 1080) is fe
    assert fe.settings == {"detector": "s3fd", "score_threshold": 0.5, "flip_input": False, "quantize": True}


# ------------------------------------------------------------------------------ the cost, measured


def bench(repeats: int = 10) -> None:  # pragma: no cover - a measurement, run by hand
    """Milliseconds per frame of dlib detection (``candidates``: resize + HOG) per frame size and
    setting, median of ``repeats`` frames; one 120 px face in view (HOG cost hardly depends on faces)."""
    import cv2 as _cv2

    _cv2.setNumThreads(1)
    base = DlibFrontEnd()
    sizes = [(320, 240), (640, 480), (1280, 720), (1920, 1080)]
    print(f"{'frame':>10} {'setting':>28} {'detect px':>11} {'ms/frame':>9}")
    for w, h in sizes:
        frame = placed(astronaut_bgr(), min(120, h // 2), (w / 2, h / 2), (w, h))
        setups = [("fixed (upsample 0, 640)", base)] + [(f"--min-face-size {m}", base.for_clip(m, w, h))
                                                         for m in (64, 128, 200)]
        for name, fe in setups:
            sw, sh = detection_size(fe.scale(w, h), w, h)
            fe.candidates([frame])
            times = []
            for _ in range(repeats):
                tic = time.perf_counter()
                fe.candidates([frame])
                times.append(time.perf_counter() - tic)
            print(f"{w:>5}x{h:<4} {name:>28} {sw:>5}x{sh:<5} {1000 * float(np.median(times)):9.1f}")


if __name__ == "__main__":  # pragma: no cover
    bench(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
