"""Face front ends: dlib on a real face, S3FD/FAN decoding against hand-worked values, end-to-end plumbing."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from latentmuse.errors import LatentmuseError
from latentmuse.runtime import faces
from latentmuse.runtime.contracts import Face
from latentmuse.runtime.faces import (
    IBUG_FLIP,
    DlibFrontEnd,
    S3FDFanFrontEnd,
    fan_center_scale,
    fan_crop,
    heatmaps_to_landmarks,
    make_front_end,
    nms,
    s3fd_best,
    s3fd_candidates,
    s3fd_decode,
    usable_face,
)

needs_predictor = pytest.mark.skipif(
    not faces.DEFAULT_DLIB_PREDICTOR.is_file(), reason="libdlib-data (68-point shape predictor) not installed"
)


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[..., ::-1])  # RGB -> BGR, 512 x 512


@pytest.fixture(scope="module")
def dlib_fe() -> DlibFrontEnd:
    if not faces.DEFAULT_DLIB_PREDICTOR.is_file():
        pytest.skip("libdlib-data not installed")
    return DlibFrontEnd()


@pytest.fixture(scope="module")
def reference_face(dlib_fe: DlibFrontEnd, astronaut: np.ndarray) -> Face:
    (face,) = dlib_fe.detect([astronaut])
    assert face is not None
    return face


def _check_face(face: Face | None) -> None:
    assert face is not None
    assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (68, 2)
    assert np.isfinite(face.landmarks).all()
    assert len(face.box) == 4


# --------------------------------------------------------------------------------------------- dlib


@needs_predictor
def test_dlib_finds_the_astronaut_with_landmarks_in_place(reference_face: Face) -> None:
    face = reference_face
    _check_face(face)
    x1, y1, x2, y2 = face.box
    # The face is in the upper middle of the picture (about x 180-265, y 85-170).
    assert 150 < x1 < 200 and 240 < x2 < 290 and 60 < y1 < 110 and 150 < y2 < 200
    L = face.landmarks.astype(np.float64)
    mid_y = (y1 + y2) / 2
    eyes, mouth, jaw, brows = L[36:48], L[48:68], L[0:17], L[17:27]
    assert ((eyes[:, 0] > x1) & (eyes[:, 0] < x2)).all()
    assert ((eyes[:, 1] > y1) & (eyes[:, 1] < mid_y)).all()  # upper half of the box
    assert (mouth[:, 1] > mid_y).all() and mouth[:, 1].min() > eyes[:, 1].max()
    assert (brows[:, 1].mean() < eyes[:, 1].mean())
    assert jaw[:, 0].max() - jaw[:, 0].min() > 0.8 * (x2 - x1)  # the jaw spans the face width
    assert L[8, 1] > mouth[:, 1].max()  # chin below the mouth
    right_eye_x, left_eye_x = L[36:42, 0].mean(), L[42:48, 0].mean()  # subject's right eye is image-left
    assert right_eye_x < L[30, 0] < left_eye_x  # nose tip between the eyes
    assert L[48, 0] < L[54, 0] and L[36, 0] < L[39, 0] < L[42, 0] < L[45, 0]
    assert face.score > 0.5


@needs_predictor
def test_dlib_translation_moves_landmarks(dlib_fe: DlibFrontEnd, astronaut: np.ndarray, reference_face: Face) -> None:
    dx, dy = 72, 40
    canvas = np.zeros((600, 640, 3), np.uint8)
    canvas[dy : dy + 512, dx : dx + 512] = astronaut
    (moved,) = dlib_fe.detect([canvas])
    _check_face(moved)
    err = np.abs(moved.landmarks - reference_face.landmarks - np.array([dx, dy], np.float32))
    assert err.max() <= 3.0 and err.mean() <= 1.0


@needs_predictor
def test_dlib_scaling_scales_landmarks_and_downscaled_detection_agrees(
    astronaut: np.ndarray, reference_face: Face, dlib_fe: DlibFrontEnd
) -> None:
    s = 2.0
    big = cv2.resize(astronaut, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)  # 1024 x 1024 > 640
    (full,) = DlibFrontEnd(detect_max_side=None).detect([big])
    (fast,) = dlib_fe.detect([big])  # detection at 640, predictor at full resolution
    _check_face(full)
    _check_face(fast)
    expected = (reference_face.landmarks.astype(np.float64) + 0.5) * s - 0.5
    err = np.abs(full.landmarks - expected)
    assert err.max() <= 5.0 and err.mean() <= 1.5
    diff = np.abs(fast.landmarks - full.landmarks)
    assert diff.max() <= 3.0 and diff.mean() <= 1.0
    # the boxes describe the same face
    assert np.allclose(fast.box, full.box, atol=0.1 * (full.box[2] - full.box[0]))


@needs_predictor
def test_dlib_hd_frame_and_no_face(dlib_fe: DlibFrontEnd, astronaut: np.ndarray) -> None:
    hd = np.zeros((1080, 1920, 3), np.uint8)
    hd[:, 420:1500] = cv2.resize(astronaut, (1080, 1080), interpolation=cv2.INTER_CUBIC)
    gray = np.full((240, 320, 3), 128, np.uint8)
    sky = np.ascontiguousarray(astronaut[:150, 300:])  # flag and sky, no face
    got = dlib_fe.detect([hd, gray, sky, astronaut])
    assert got[1] is None and got[2] is None
    _check_face(got[0])
    _check_face(got[3])
    # the HD face is the 512 one scaled by 1080/512 and moved right by 420
    s = 1080 / 512
    expected = (got[3].landmarks.astype(np.float64) + 0.5) * s - 0.5 + np.array([420, 0])
    assert np.abs(got[0].landmarks - expected).mean() <= 2.0


def test_dlib_missing_predictor_names_the_file_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "shape_predictor_68_face_landmarks.dat"
    with pytest.raises(LatentmuseError) as err:
        DlibFrontEnd(missing)
    assert str(missing) in err.value.message and "apt-get install libdlib-data" in err.value.fix


# --------------------------------------------------------------------------------------------- S3FD


def _empty_maps(batch: int, height: int, width: int, background: float = 10.0) -> list[torch.Tensor]:
    """S3FD-shaped raw outputs with every anchor confidently background and zero regression."""
    maps = []
    for i in range(6):
        stride = 2 ** (i + 2)
        h, w = max(1, math.ceil(height / stride)), max(1, math.ceil(width / stride))
        cls = torch.zeros(batch, 2, h, w)
        cls[:, 0] = background
        maps += [cls, torch.zeros(batch, 4, h, w)]
    return maps


def _put(maps, b, scale, row, col, face_logit, reg) -> None:
    maps[2 * scale][b, 0, row, col] = 0.0
    maps[2 * scale][b, 1, row, col] = face_logit
    maps[2 * scale + 1][b, :, row, col] = torch.tensor(reg, dtype=torch.float32)


def _expected_box(scale: int, row: int, col: int, reg) -> np.ndarray:
    stride = 2 ** (scale + 2)
    side = 4 * stride
    cx = stride / 2 + col * stride + reg[0] * 0.1 * side
    cy = stride / 2 + row * stride + reg[1] * 0.1 * side
    w, h = side * math.exp(reg[2] * 0.2), side * math.exp(reg[3] * 0.2)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def test_s3fd_decoding_of_one_hand_made_anchor() -> None:
    maps = _empty_maps(2, 64, 64)
    reg = (0.5, -0.25, 0.3, -0.1)
    _put(maps, 0, scale=1, row=2, col=3, face_logit=5.0, reg=reg)  # stride 8: anchor (28, 20), side 32
    # Worked by hand: centre (28 + 0.5*0.1*32, 20 - 0.25*0.1*32) = (29.6, 19.2); size 32 e^0.06 x 32 e^-0.02.
    w, h = 32 * math.exp(0.06), 32 * math.exp(-0.02)
    expected = np.array([29.6 - w / 2, 19.2 - h / 2, 29.6 + w / 2, 19.2 + h / 2])
    assert np.allclose(expected, _expected_box(1, 2, 3, reg))
    scores, boxes = s3fd_decode(maps)
    n = sum(m.shape[2] * m.shape[3] for m in maps[0::2])
    assert scores.shape == (2, n) and boxes.shape == (2, n, 4)
    index = 16 * 16 + 2 * 8 + 3  # after the 16x16 stride-4 map, row-major in the 8x8 stride-8 map
    assert scores[0, index].item() == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert np.allclose(boxes[0, index].numpy(), expected, atol=1e-9)
    # a zero regression decodes to the anchor itself: stride-4 cell (0, 0) -> centre (2, 2), side 16
    assert np.allclose(boxes[1, 0].numpy(), [-6, -6, 10, 10])

    best, best_score, found = s3fd_best(maps)
    assert found.tolist() == [True, False]  # frame 1 has only background
    assert np.allclose(best[0].numpy(), expected, atol=1e-9)
    (dets0, dets1) = s3fd_candidates(maps)
    assert dets0.shape == (1, 5) and np.allclose(dets0[0, :4], expected) and dets1.shape == (0, 5)


def test_s3fd_score_threshold_and_best_of_several() -> None:
    maps = _empty_maps(1, 128, 128)
    _put(maps, 0, scale=0, row=5, col=5, face_logit=-0.5, reg=(0, 0, 0, 0))  # p = 0.38 < 0.5
    assert not s3fd_best(maps)[2].item()
    assert len(s3fd_candidates(maps)[0]) == 0
    _put(maps, 0, scale=2, row=3, col=4, face_logit=2.0, reg=(0.1, 0.2, 0.0, 0.0))
    _put(maps, 0, scale=3, row=1, col=1, face_logit=3.0, reg=(-0.2, 0.1, 0.5, 0.5))  # the best
    box, score, found = s3fd_best(maps)
    assert found.item() and score.item() == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert np.allclose(box[0].numpy(), _expected_box(3, 1, 1, (-0.2, 0.1, 0.5, 0.5)))
    dets = s3fd_candidates(maps)[0]
    assert np.allclose(dets[0, :4], box[0].numpy())  # candidates + NMS + filter agree on the top face


def test_nms_on_hand_made_boxes() -> None:
    dets = np.array(
        [
            [0, 0, 10, 10, 0.90],  # A: IoU with D = 66/176 = 0.375 > 0.3 -> suppressed
            [1, 1, 11, 11, 0.80],  # B: IoU with D = 70/172 = 0.407 -> suppressed
            [20, 20, 30, 30, 0.70],  # C: apart -> kept
            [5, 0, 15, 10, 0.95],  # D: best
            [6, 20, 16, 30, 0.60],  # E: no overlap with D or C -> kept
            [22, 22, 32, 32, 0.65],  # F: IoU with C = 81/161 = 0.503 -> suppressed
            [13, 0, 23, 10, 0.50],  # G: IoU with D = 3*11/(242-33) = 0.158 <= 0.3 -> kept
        ]
    )
    assert nms(dets, 0.3) == [3, 2, 4, 6]
    assert nms(dets, 0.39) == [3, 0, 2, 4, 6]  # A (0.375) survives a looser threshold, B (0.407) not
    assert nms(np.zeros((0, 5))) == []


def test_s3fd_best_equals_full_candidate_path_on_random_maps() -> None:
    g = torch.Generator().manual_seed(3)
    maps = [t.normal_(0, 2, generator=g) for t in _empty_maps(4, 64, 96)]
    box, score, found = s3fd_best(maps)
    for b, dets in enumerate(s3fd_candidates(maps)):
        assert bool(found[b]) == (len(dets) > 0)
        if len(dets):
            assert np.allclose(dets[0, :4], box[b].numpy()) and dets[0, 4] == pytest.approx(score[b].item())


# ---------------------------------------------------------------------------------------------- FAN


def test_fan_center_scale_formula() -> None:
    centers, scales = fan_center_scale(torch.tensor([[100.0, 50.0, 180.0, 150.0]]))
    # centre (140, 100 - 0.12 * 100) = (140, 88); scale (80 + 100) / 195
    assert np.allclose(centers.numpy(), [[140.0, 88.0]]) and scales.item() == pytest.approx(180 / 195)


def _reference_crop(image_rgb: np.ndarray, center, scale, res: int = 256) -> np.ndarray:
    """face-alignment's ``crop`` written out directly (integer window, zero pad, cv2 bilinear resize)."""
    side = 200.0 * scale
    ul = [int((1 / res - 0.5) * side + center[0]), int((1 / res - 0.5) * side + center[1])]
    br = [int(0.5 * side + center[0]), int(0.5 * side + center[1])]
    out = np.zeros((br[1] - ul[1], br[0] - ul[0], 3), np.uint8)
    h, w = image_rgb.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, ul[0]), max(0, ul[1]), min(br[0], w), min(br[1], h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - ul[1] : sy1 - ul[1], sx0 - ul[0] : sx1 - ul[0]] = image_rgb[sy0:sy1, sx0:sx1]
    return cv2.resize(out, (res, res), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize(
    "center, scale",
    [
        ((160.0, 110.0), 0.9),  # inside, upscaled 180 -> 256
        ((30.0, 200.0), 1.7),  # over the left and bottom edges, downscaled
        ((150.0, 120.0), 0.5),  # small face: 100 -> 256
        ((300.0, 20.0), 1.2),  # over a corner
        ((160.0, 120.0), 2.56),  # exactly 512 -> 256 (OpenCV's 2x special case)
        ((-400.0, 100.0), 1.0),  # entirely outside: all zeros
    ],
    ids=["inside", "left-edge", "upscale", "corner", "exact-2x", "outside"],
)
def test_fan_crop_is_bit_exact_with_face_alignment_crop(center, scale) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)  # BGR
    ours = fan_crop(
        torch.from_numpy(frame).permute(2, 0, 1)[None],
        torch.tensor([center], dtype=torch.float64),
        torch.tensor([scale], dtype=torch.float64),
    )[0]
    assert ours.dtype == torch.float32 and ours.shape == (3, 256, 256)
    ref = _reference_crop(frame[..., ::-1].copy(), center, scale)  # face-alignment crops the RGB image
    assert np.array_equal((ours.permute(1, 2, 0).numpy() * 255).round(), ref.astype(np.float64))


def test_heatmap_decoding_with_quarter_pixel_shift_and_known_transform() -> None:
    hm = torch.zeros(1, 68, 64, 64)
    for j in range(68):  # background peaks everywhere else must not matter
        hm[0, j, 40, 40] = 0.5
    # landmark 0: peak at col 20, row 30; right neighbour higher than left, lower neighbour higher
    # than upper -> (20 + 0.5 + 0.25, 30 + 0.5 + 0.25) = (20.75, 30.75)
    hm[0, 0, 30, 20] = 1.0
    hm[0, 0, 30, 21], hm[0, 0, 30, 19] = 0.5, 0.2
    hm[0, 0, 31, 20], hm[0, 0, 29, 20] = 0.3, 0.1
    # landmark 1: on the left border (col 0): no refinement on either axis -> (0.5, 10.5)
    hm[0, 1, 10, 0], hm[0, 1, 11, 0] = 1.0, 0.9
    # landmark 2: left neighbour higher, equal vertical neighbours -> (10 + 0.5 - 0.25, 50.5) = (10.25, 50.5)
    hm[0, 2, 50, 10], hm[0, 2, 50, 9], hm[0, 2, 49, 10], hm[0, 2, 51, 10] = 1.0, 0.4, 0.2, 0.2
    centers = torch.tensor([[100.0, 120.0]], dtype=torch.float64)
    scales = torch.tensor([1.0], dtype=torch.float64)  # crop side 200 px -> 3.125 px per heatmap cell
    exact = heatmaps_to_landmarks(hm, centers, scales, quantize=False)[0].numpy()
    # (p / 64 - 0.5) * 200 + centre
    assert np.allclose(exact[0], [64.84375, 116.09375])
    assert np.allclose(exact[1], [100 - 98.4375, 120 - 67.1875])
    assert np.allclose(exact[2], [100 - 67.96875, 120 + 57.8125])
    assert np.allclose(exact[3], [100 + 26.5625, 120 + 26.5625])  # the shared (40, 40) peak, no shift
    quantized = heatmaps_to_landmarks(hm, centers, scales)[0].numpy()
    assert quantized[0].tolist() == [64.0, 116.0]
    # truncation goes towards zero, as face-alignment's astype(int32): -0.15625 -> 0, 53.125 -> 53
    neg = heatmaps_to_landmarks(hm[:, 1:2], torch.tensor([[-1.40625, 0.0]]), scales)[0, 0].numpy()
    assert neg.tolist() == [-99.0, -67.0]  # -99.84375 -> -99, -67.1875 -> -67


# ------------------------------------------------------------------------------- S3FD + FAN, end to end


@pytest.fixture(scope="module")
def face_weights(tmp_path_factory) -> Path:
    from latentmuse.models.random_weights import write_random_weights

    root = tmp_path_factory.mktemp("face_weights")
    write_random_weights(root, models=["s3fd", "fan68"])
    return root


def test_s3fd_fan_runs_with_random_weights(face_weights: Path) -> None:
    fe = S3FDFanFrontEnd.from_weights(face_weights, "cpu", batch_size=2)
    assert fe.name == "s3fd"
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    frames.insert(1, rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))  # a second size in the batch
    out = fe.detect(frames)
    assert len(out) == 4
    for face, frame in zip(out, frames):
        if face is None:
            continue
        _check_face(face)
        assert face.score > 0.5
        assert usable_face(face.landmarks, face.box, frame.shape)
    assert fe.detect([]) == []


class _StubS3FD(nn.Module):
    """Returns hand-made maps: per frame, one anchor (scale, row, col, logit, reg) or none."""

    def __init__(self, anchors):
        super().__init__()
        self.anchors = anchors
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        maps = _empty_maps(x.shape[0], x.shape[2], x.shape[3])
        for b in range(x.shape[0]):
            if self.anchors[b] is not None:
                _put(maps, b, *self.anchors[b])
        return maps


class _StubFAN(nn.Module):
    """Returns fixed heatmaps with peaks at ``cells`` (68 x (col, row)); records its input crops."""

    def __init__(self, cells):
        super().__init__()
        self.cells = cells
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        hm = torch.zeros(x.shape[0], 68, 64, 64)
        for j, (c, r) in enumerate(self.cells):
            hm[:, j, r, c] = 1.0
        return [hm * 0.5, hm]  # two stacks: the last is used


def test_s3fd_fan_end_to_end_with_stub_networks() -> None:
    rng = np.random.default_rng(2)
    frames = [cv2.resize(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), (240, 200)) for _ in range(4)]
    reg = (0.2, -0.1, 0.1, 0.05)
    anchors = [
        (2, 5, 6, 4.0, reg),  # stride 16, anchor centre (104, 88), side 64: a usable face
        None,  # nothing
        (0, 2, 3, -1.0, (0, 0, 0, 0)),  # score 0.27 < 0.5
        (5, 0, 0, 4.0, (-8.0, -8.0, 0.0, 0.0)),  # stride 128 box centred at (-345.6, -345.6): outside
    ]
    cells = [(10 + (j * 7) % 44, 8 + (j * 13) % 48) for j in range(68)]
    s3fd_net, fan_net = _StubS3FD(anchors), _StubFAN(cells)
    fe = S3FDFanFrontEnd(s3fd_net, fan_net, "cpu", quantize=False)
    out = fe.detect(frames)
    assert out[1] is None and out[2] is None and out[3] is None
    face = out[0]
    _check_face(face)

    # S3FD saw BGR minus (104, 117, 123), full resolution
    seen = s3fd_net.seen[0]
    assert seen.shape == (4, 3, 200, 240)
    assert torch.equal(seen[2, :, 7, 9], torch.tensor(frames[2][7, 9], dtype=torch.float32) - torch.tensor([104.0, 117.0, 123.0]))

    box = _expected_box(2, 5, 6, reg)
    assert np.allclose(face.box, box) and face.score == pytest.approx(1 / (1 + math.exp(-4.0)))
    w, h = box[2] - box[0], box[3] - box[1]
    center = np.array([box[0] + w / 2, box[1] + h / 2 - 0.12 * h])
    scale = (w + h) / 195
    # every peak has equal (zero) neighbours: no quarter-pixel shift
    expected = (np.array(cells, np.float64) + 0.5) / 64 * 200 * scale + center - 100 * scale
    assert np.allclose(face.landmarks, expected, atol=1e-4)

    # FAN got only the detected face's crop, face-alignment's crop of the RGB frame
    (crops,) = fan_net.seen
    assert crops.shape == (1, 3, 256, 256)
    ref = _reference_crop(frames[0][..., ::-1].copy(), center, scale)
    assert np.array_equal((crops[0].permute(1, 2, 0).numpy() * 255).round(), ref.astype(np.float64))

    # default quantize=True: face-alignment's integer landmarks
    quantized = S3FDFanFrontEnd(_StubS3FD(anchors), _StubFAN(cells), "cpu").detect(frames[:1])[0]
    assert np.array_equal(quantized.landmarks, np.trunc(expected).astype(np.float32))


def test_flip_input_on_mirror_symmetric_heatmaps_keeps_landmarks() -> None:
    frame = np.full((160, 160, 3), 90, np.uint8)
    anchors = [(2, 4, 4, 4.0, (0, 0, 0, 0))]
    cells = []
    for j in range(68):
        k = IBUG_FLIP[j]
        base = 5 + (min(j, k) * 3) % 25
        row = 6 + (min(j, k) * 11) % 50
        cells.append((base if j <= k else 63 - base, row) if j != k else (31, row))
    # self-mirrored points (nose bridge 27-30, 33, 51, 57, 62, 66, 8) sit at col 31 -> mirror col 32:
    # give them a plateau over cols 31-32 so the peak is the same after mirroring.
    plain = S3FDFanFrontEnd(_StubS3FD(anchors), _PlateauFAN(cells), "cpu", quantize=False).detect([frame])[0]
    flipped = S3FDFanFrontEnd(_StubS3FD(anchors), _PlateauFAN(cells), "cpu", quantize=False, flip_input=True).detect(
        [frame]
    )[0]
    _check_face(plain)
    _check_face(flipped)
    assert np.allclose(plain.landmarks, flipped.landmarks)


class _PlateauFAN(_StubFAN):
    def forward(self, x):
        hm = super().forward(x)[-1]
        for j, (c, r) in enumerate(self.cells):
            if c == 31:
                hm[:, j, r, 32] = 1.0
        return hm


def test_unusable_faces() -> None:
    pts = np.stack(np.meshgrid(np.linspace(40, 80, 17), np.linspace(30, 90, 4)), -1).reshape(-1, 2)[:68]
    assert usable_face(pts, (35, 25, 85, 95), (120, 160))
    assert not usable_face(pts, (-100, -100, 20, 20), (120, 160))  # mostly outside
    assert not usable_face(pts, (200, 10, 260, 60), (120, 160))  # fully outside
    assert not usable_face(np.full((68, 2), 50.0), (35, 25, 85, 95), (120, 160))  # all points coincide
    bad = pts.copy()
    bad[3, 0] = np.nan
    assert not usable_face(bad, (35, 25, 85, 95), (120, 160))


# ------------------------------------------------------------------------------------------ factory


@needs_predictor
def test_make_front_end_choices(face_weights: Path, tmp_path: Path) -> None:
    assert isinstance(make_front_end("auto", None), DlibFrontEnd)
    assert isinstance(make_front_end("auto", tmp_path), DlibFrontEnd)  # empty folder
    assert isinstance(make_front_end("dlib", face_weights), DlibFrontEnd)
    fe = make_front_end("auto", face_weights, "cpu")
    assert isinstance(fe, S3FDFanFrontEnd)
    assert isinstance(make_front_end("s3fd", face_weights), S3FDFanFrontEnd)

    with pytest.raises(LatentmuseError) as err:
        make_front_end("s3fd", tmp_path)
    assert "s3fd-619a316812" in err.value.message and "2DFAN4" in err.value.message
    assert "weights download" in err.value.fix

    only_s3fd = tmp_path / "only"
    (only_s3fd / "face-detection").mkdir(parents=True)
    (only_s3fd / "face-detection" / "s3fd-619a316812.pth").write_bytes(
        (face_weights / "face-detection" / "s3fd-619a316812.pth").read_bytes()
    )
    with pytest.raises(LatentmuseError) as err:
        make_front_end("s3fd", only_s3fd)
    assert "2DFAN4" in err.value.message and "s3fd-619a316812" not in err.value.message
    assert isinstance(make_front_end("auto", only_s3fd), DlibFrontEnd)

    with pytest.raises(LatentmuseError):
        make_front_end("s3fd", None)
    with pytest.raises(LatentmuseError):
        make_front_end("mediapipe", None)


# ------------------------------------------------------------------------ candidates (every face)


def test_s3fd_candidates_equal_face_alignments_order_of_filters() -> None:
    """Our NMS over anchors above both thresholds = face-alignment's: > 0.05, NMS, then > 0.5."""
    g = torch.Generator().manual_seed(5)
    maps = [t.normal_(0, 2, generator=g) for t in _empty_maps(3, 64, 96)]
    scores, boxes = s3fd_decode(maps)
    ours = s3fd_candidates(maps)
    for b in range(3):
        mask = scores[b] > 0.05
        dets = torch.cat([boxes[b][mask], scores[b][mask, None]], dim=1).numpy()
        reference = dets[nms(dets, 0.3)]
        reference = reference[reference[:, 4] > 0.5]
        assert len(reference) > 3 and np.array_equal(ours[b], reference)


def test_s3fd_candidates_are_every_usable_face_and_fan_runs_on_the_chosen_one_only() -> None:
    frames = [np.full((200, 240, 3), 100, np.uint8) for _ in range(3)]
    reg = (0.0, 0.0, 0.0, 0.0)

    class ThreeFaces(_StubS3FD):
        def forward(self, x):
            maps = _empty_maps(x.shape[0], x.shape[2], x.shape[3])
            for b in range(x.shape[0]):
                _put(maps, b, 2, 3, 3, 2.0, reg)  # stride 16: centre (8 + 3 * 16, 8 + 3 * 16), side 64; p 0.881
                _put(maps, b, 2, 3, 10, 4.0, reg)  # centre (168, 56); p 0.982
                _put(maps, b, 1, 9, 2, 3.0, reg)  # stride 8: centre (4 + 2 * 8, 4 + 9 * 8), side 32; p 0.953
                _put(maps, b, 5, 0, 1, 5.0, (4.0, 0, 0, 0))  # a box mostly outside the frame: not a candidate
            return maps

    cells = [(20 + j % 20, 20 + j // 20) for j in range(68)]
    fan = _StubFAN(cells)
    fe = S3FDFanFrontEnd(ThreeFaces([None] * 3), fan, "cpu", quantize=False)
    found = fe.candidates(frames)
    assert [len(f) for f in found] == [3, 3, 3] and fan.seen == []  # no landmarks for candidates
    assert [tuple(round(v, 6) for v in c.box) for c in found[0]] == [(136, 24, 200, 88), (4, 60, 36, 92), (24, 24, 88, 88)]
    assert [c.score for c in found[0]] == pytest.approx([1 / (1 + math.exp(-s)) for s in (4.0, 3.0, 2.0)])
    chosen = [found[0][2], None, found[2][0]]
    faces_out = fe.landmarks(frames, chosen)
    assert faces_out[1] is None
    (crops,) = fan.seen
    assert crops.shape[0] == 2  # one crop per chosen face, whatever the number of people
    for face, c in zip((faces_out[0], faces_out[2]), (chosen[0], chosen[2])):
        assert face.box == c.box
        centroid = face.landmarks.mean(axis=0)
        assert c.box[0] <= centroid[0] <= c.box[2] and c.box[1] <= centroid[1] <= c.box[3]
    with pytest.raises(ValueError, match="one choice per frame"):
        fe.landmarks(frames, chosen[:2])
    # detect = the highest-scoring candidate with its landmarks
    assert fe.detect(frames[:1])[0].box == found[0][0].box


def test_s3fd_candidates_with_random_weights(face_weights: Path) -> None:
    fe = S3FDFanFrontEnd.from_weights(face_weights, "cpu", batch_size=2)
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    every = fe.candidates(frames)
    assert sum(map(len, every)) > 0  # random weights "see" faces in noise
    for found, frame in zip(every, frames):
        assert len(found) <= faces.MAX_CANDIDATES
        assert all(faces.usable_box(c.box, frame.shape) and c.score > 0.5 for c in found)
        assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)


@needs_predictor
def test_dlib_reports_both_faces_and_predicts_landmarks_for_the_chosen_one(dlib_fe: DlibFrontEnd, astronaut: np.ndarray) -> None:
    face = astronaut[40:220, 130:310]  # 180 x 180 around the face
    frame = np.zeros((200, 420, 3), np.uint8)
    frame[10:190, 10:190] = face
    frame[10:190, 230:410] = face[:, ::-1]  # the mirror image on the right
    (found,) = dlib_fe.candidates([frame])
    assert len(found) == 2
    left, right = sorted(found, key=lambda c: c.box[0])
    assert left.box[2] < 200 < right.box[0]
    calls = []
    predictor = dlib_fe.predictor
    fe = DlibFrontEnd()
    fe.predictor = lambda image, rect: calls.append(rect) or predictor(image, rect)
    (on_right,) = fe.landmarks([frame], [right])
    assert len(calls) == 1  # the shape predictor ran once, on the chosen box
    assert (on_right.landmarks[:, 0] > 215).all() and on_right.box == right.box
    assert fe.landmarks([frame], [None]) == [None] and len(calls) == 1
