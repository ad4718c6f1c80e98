"""LatentSync alignment and paste-back against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from latentmuse.runtime import alignment as al


def similarity_by_complex_numbers(src: np.ndarray, tpl: np.ndarray) -> np.ndarray:
    """The same transform written independently: in the complex plane a similarity is z -> a z + b.

    Rotation = the argument of sum(conj(src_c) tpl_c) (the 2D Procrustes rotation), scale = the ratio
    of the point sets' standard deviations (what the original uses), b from the centroids.
    """
    zs, zt = src[:, 0] + 1j * src[:, 1], tpl[:, 0] + 1j * tpl[:, 1]
    cs, ct = zs.mean(), zt.mean()
    angle = np.angle(np.sum(np.conj(zs - cs) * (zt - ct)))
    scale = np.std(np.concatenate([(tpl - tpl.mean(0)).ravel()]), ddof=1) / np.std((src - src.mean(0)).ravel(), ddof=1)
    a = scale * np.exp(1j * angle)
    b = ct - a * cs
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_template_and_crop_sizes():
    assert al.crop_size(256) == (210, 280) and al.crop_size(512) == (420, 560)
    np.testing.assert_allclose(al.face_template(256), [[47.6, 56.0], [162.4, 56.0], [105.0, 112.0]])
    np.testing.assert_allclose(al.face_template(512), 2 * al.face_template(256))


def test_alignment_points_are_rounded_group_means():
    lm = np.zeros((68, 2))
    lm[17:22] = [[10, 20], [11, 20], [12, 21], [13, 21], [14, 20.4]]  # mean (12, 20.48) -> (12, 20)
    lm[22:27] = [[30.6, 20]] * 5
    lm[27:36] = np.arange(18).reshape(9, 2)  # mean (8, 9)
    np.testing.assert_array_equal(al.alignment_points(lm), [[12, 20], [31, 20], [8, 9]])


@pytest.mark.parametrize("seed", range(6))
def test_similarity_transform_equals_the_complex_plane_formula(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 500, (3, 2))
    tpl = al.face_template(256)
    matrix, bias = al.similarity_transform(src, tpl)
    np.testing.assert_allclose(matrix, similarity_by_complex_numbers(src, tpl), atol=1e-9)
    assert np.linalg.det(matrix[:, :2]) > 0  # a rotation, never a reflection (the det < 0 fix)
    n_src = (src - src.mean(0)) / (src - src.mean(0)).std(ddof=1)
    n_tpl = (tpl - tpl.mean(0)) / (tpl - tpl.mean(0)).std(ddof=1)
    np.testing.assert_allclose(bias, n_tpl[2] - n_src[2], atol=1e-12)


def test_mirrored_points_still_get_a_rotation():
    tpl = al.face_template(256)
    mirrored = tpl * [-1, 1] + [300, 0]  # a reflection of the template: least squares would want det < 0
    matrix, _ = al.similarity_transform(mirrored, tpl)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_three_points_map_exactly_onto_the_template():
    tpl = al.face_template(256)
    angle, scale, shift = math.radians(12), 1.7, np.array([140.0, 95.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = (tpl - 30) @ rot.T * scale + shift  # an exact similarity image of the template
    matrix, _ = al.similarity_transform(src, tpl)
    np.testing.assert_allclose(apply(matrix, src), tpl, atol=1e-9)
    # Without rotation the normalised point sets coincide, the smoothing bias is 0 and the smoothed
    # transforms map exactly too.
    plain = [tpl * 0.5 + [200, 120], tpl * 0.52 + [203, 121]]
    for pts, m in zip(plain, al.smoothed_transforms(plain, tpl)):
        np.testing.assert_allclose(apply(m, pts), tpl, atol=1e-9)


def test_smoothing_blends_the_bias_and_restarts_after_a_gap():
    tpl = al.face_template(256)
    rng = np.random.default_rng(5)
    pts = [rng.uniform(100, 300, (3, 2)) for _ in range(4)]
    raw = [al.similarity_transform(p, tpl) for p in pts]
    out = al.smoothed_transforms([pts[0], pts[1], None, pts[2], pts[3]], tpl)
    b0 = raw[0][1]
    b1 = 0.2 * b0 + 0.8 * raw[1][1]
    b2 = raw[2][1]  # restarted after the gap
    b3 = 0.2 * b2 + 0.8 * raw[3][1]
    for m, (plain, _), bias in zip([out[0], out[1], out[3], out[4]], raw, [b0, b1, b2, b3]):
        np.testing.assert_allclose(m[:, :2], plain[:, :2], atol=1e-12)
        np.testing.assert_allclose(m[:, 2], plain[:, 2] + bias, atol=1e-12)
    assert out[2] is None
    assert al.smoothed_transforms([np.zeros((3, 2))], tpl) == [None]  # degenerate points


@pytest.fixture(scope="module")
def astronaut_alignment():
    from skimage.data import astronaut

    from latentmuse.runtime.faces import DlibFrontEnd

    frame = np.ascontiguousarray(astronaut()[..., ::-1])
    face = DlibFrontEnd().detect([frame])[0]
    matrix = al.smoothed_transforms([al.alignment_points(face.landmarks)], al.face_template(256))[0]
    return frame, matrix


def test_warp_samples_the_frame_where_the_inverse_transform_points(astronaut_alignment):
    frame, matrix = astronaut_alignment
    crop = al.warp_face(frame, matrix, al.crop_size(256))
    assert crop.shape == (280, 210, 3) and crop.dtype == np.uint8
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:280, 0:210]
    src = apply(inverse, np.stack([xs.ravel(), ys.ravel()], 1).astype(float))
    for c in range(3):  # independent bilinear sampling (scipy), grey 127 outside
        expected = ndimage.map_coordinates(frame[..., c].astype(float), [src[:, 1], src[:, 0]], order=1, cval=127.0)
        diff = np.abs(crop[..., c].astype(float).ravel() - expected)
        assert diff.max() <= 6 and diff.mean() < 0.6  # OpenCV's 1/32 pixel grid and the truncation


def test_warp_then_paste_returns_the_face_region(astronaut_alignment):
    frame, matrix = astronaut_alignment
    crop = al.warp_face(frame, matrix, al.crop_size(256))
    face = crop.astype(np.float32) / 127.5 - 1.0
    out = al.paste_face(frame, face, matrix)
    changed = (out != frame).any(axis=2)
    # the region the crop covers in the frame: the inverse image of the crop rectangle
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:512, 0:512]
    crop_pts = apply(matrix, np.stack([xs.ravel(), ys.ravel()], 1).astype(float)).reshape(512, 512, 2)
    inside = (crop_pts[..., 0] >= 0) & (crop_pts[..., 0] <= 209) & (crop_pts[..., 1] >= 0) & (crop_pts[..., 1] <= 279)
    # The original's 2 x 2 erosion looks up and left, so a partly covered pixel just past the right and
    # bottom edges keeps some weight, and a frame pixel spans two crop pixels here: two pixels of slack.
    assert not (changed & ~ndimage.binary_dilation(inside, iterations=2)).any(), "pixels outside the crop's footprint changed"
    interior = ndimage.binary_erosion(inside, iterations=20)
    err = out[interior].astype(float) - frame[interior]
    psnr = 10 * math.log10(255**2 / np.mean(err**2))
    assert psnr > 32, psnr  # two bilinear resamplings + truncation, nothing else
    assert abs(err.mean()) < 1.0  # truncation twice biases down by under a level
    centre = apply(inverse, np.array([[104.5, 139.5]]))[0]  # the crop centre lands on the face
    assert 190 < centre[0] < 260 and 100 < centre[1] < 180


def test_soft_mask_hand_worked_for_an_axis_aligned_paste():
    # A pure integer translation: the warped ones are an exact 210 x 280 rectangle; the 2 x 2 erosion
    # removes one row and one column (209 x 279 = 58311 px), w_edge = int(sqrt(58311)) // 20 = 12, the
    # second erosion takes a 24 x 24 square off and the blur is 25 wide.
    inverse_roi = np.array([[1.0, 0, 50], [0, 1.0, 40]])
    eroded, soft = al.soft_blend_mask((280, 210), inverse_roi, (400, 320))
    assert eroded.sum() == 209 * 279
    assert eroded[40, 50] == 0 and eroded[41, 51] == 1 and eroded[319, 259] == 1 and eroded[320, 259] == 0
    assert soft[40 + 140, 50 + 105] == pytest.approx(1.0, abs=1e-6)
    assert soft[41, 51] < 0.01 and soft.max() <= 1.0 + 1e-6
    assert np.all(soft[:, :30] == 0) and np.all(soft[:25] == 0)  # the blur reaches 12 px outside the core only
