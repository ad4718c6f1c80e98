"""MuseTalk 1.5 paste-back: kernels, the jaw mask, crop geometry, compositing and the batched parser.

Expected values come from hand computation or from an independent transcription of the original's
Pillow-based flow (``get_image`` with ``mode="jaw"``) written here, not from the module under test.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from latentmuse.models import bisenet
from latentmuse.runtime.blending import (
    FaceParser,
    blend_mask,
    cheek_band_mask,
    cheek_kernel,
    composite,
    cone_kernel,
    crop_geometry,
    gaussian_kernel_size,
    jaw_mask,
    parser_crop,
    paste_back,
)

# ---------------------------------------------------------------------------------------------- helpers


def _face_labels() -> np.ndarray:
    """A hand-made 512 label map: a skin oval-ish rectangle, a nose square, lips and a mouth."""
    labels = np.zeros((512, 512), dtype=np.uint8)
    labels[100:400, 120:392] = 1  # skin, reaching into both cheek bands (x <= 166, x >= 346)
    labels[200:260, 236:276] = 10  # nose
    labels[300:310, 216:296] = 12  # upper lip
    labels[310:316, 226:286] = 11  # mouth
    labels[316:328, 216:296] = 13  # lower lip
    labels[400:470, 180:332] = 14  # neck below the chin
    labels[40:100, 120:392] = 17  # hair above
    labels[330:336, 30:60] = 12  # a stray lip blob outside the skin: still added
    return labels


def _smooth_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([40 + 0.5 * xx, 60 + 0.6 * yy, 120 + 0.2 * (xx + yy)], axis=-1)
    return np.clip(base + rng.normal(0, 1.0, base.shape), 0, 255).astype(np.uint8)


def _reference_get_image(frame_bgr, face_bgr, face_box, parse_mask_512, ratio=0.5, expand=1.5):
    """The original ``get_image`` flow, re-written with Pillow calls; ``parse_mask_512`` stands in for ``fp``."""
    body = Image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1]))
    face = Image.fromarray(np.ascontiguousarray(face_bgr[:, :, ::-1]))
    x, y, x1, y1 = face_box
    half = int(max(x1 - x, y1 - y) // 2 * expand)
    xc, yc = (x + x1) // 2, (y + y1) // 2
    crop_box = (xc - half, yc - half, xc + half, yc + half)
    xs, ys = crop_box[:2]
    face_large = body.crop(crop_box)
    size = face_large.size
    mask = Image.fromarray(parse_mask_512).resize(size)  # the original's default resample
    small = mask.crop((x - xs, y - ys, x1 - xs, y1 - ys))
    mask = Image.new("L", size, 0)
    mask.paste(small, (x - xs, y - ys, x1 - xs, y1 - ys))
    top = int(size[1] * ratio)
    kept = Image.new("L", size, 0)
    kept.paste(mask.crop((0, top, size[0], size[1])), (0, top))
    k = int(0.05 * size[0] // 2 * 2) + 1
    blurred = Image.fromarray(cv2.GaussianBlur(np.array(kept), (k, k), 0))
    face_large.paste(face, (x - xs, y - ys, x1 - xs, y1 - ys))
    body.paste(face_large, crop_box[:2], blurred)
    return np.array(body)[:, :, ::-1]


# ---------------------------------------------------------------------------------------------- kernels


def test_cone_kernel_default_rows_and_total() -> None:
    k = cone_kernel()
    assert k.shape == (33, 33) and k.dtype == np.uint8
    widths = k.sum(axis=1)
    assert widths[:10].tolist() == [0] * 10
    assert widths[10:21].tolist() == list(range(1, 22, 2))  # cone: 1, 3, ..., 21
    assert widths[21:].tolist() == [21] * 12  # tail repeats the base
    assert k.sum() == sum(2 * i + 1 for i in range(11)) + 12 * 21 == 373
    assert np.array_equal(k, k[:, ::-1])  # left-right symmetric about column 16
    for row in range(10, 33):  # every row is one run centred on column 16
        cols = np.flatnonzero(k[row])
        assert cols.tolist() == list(range(16 - len(cols) // 2, 16 + len(cols) // 2 + 1))


def test_cone_kernel_small_by_hand() -> None:
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
        ],
        dtype=np.uint8,
    )
    assert np.array_equal(cone_kernel(5, 2), expected)


def test_cone_dilation_is_a_max_filter_growing_skin_upward() -> None:
    """cv2.dilate does not reflect the kernel: one pixel becomes the kernel flipped, 16 rows up, 6 down."""
    point = np.zeros((80, 80), dtype=np.uint8)
    point[40, 40] = 255
    grown = cv2.dilate(point, cone_kernel())
    assert np.array_equal(grown[24:57, 24:57] // 255, cone_kernel()[::-1, ::-1])
    rows = np.flatnonzero(grown.any(axis=1))
    assert (rows.min(), rows.max()) == (40 - 16, 40 + 6)


def test_cheek_kernel_is_a_flat_cross() -> None:
    k = cheek_kernel()
    assert k.shape == (3, 35)
    assert k[1].tolist() == [1] * 35
    assert np.flatnonzero(k[0]).tolist() == [17] and np.flatnonzero(k[2]).tolist() == [17]
    assert k.sum() == 37
    assert np.array_equal(k, k[::-1]) and np.array_equal(k, k[:, ::-1])


def test_cheek_bands_include_their_boundary_columns() -> None:
    bands = cheek_band_mask(90, 90)
    cols = bands[0]
    assert np.all(bands == cols[None, :])  # full-height bands
    assert cols[:167].min() == 255 and cols[346:].min() == 255  # x <= 166 and x >= 346
    assert cols[167:346].max() == 0
    asym = cheek_band_mask(80, 100)[0]
    assert asym[176] == 255 and asym[177] == 0 and asym[355] == 0 and asym[356] == 255


# ---------------------------------------------------------------------------------------------- jaw mask


def test_jaw_mask_matches_independent_cv2_computation() -> None:
    labels = _face_labels()
    skin = ((labels == 1) * 255).astype(np.uint8)
    cone = np.zeros((33, 33), np.uint8)
    for r in range(10, 33):
        half = min(r - 10, 10)
        cone[r, 16 - half : 17 + half] = 1
    dilated = cv2.dilate(skin, cone)
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))
    eroded = cv2.erode(cv2.erode(dilated, ellipse), ellipse)
    xs = np.arange(512)[None, :].repeat(512, axis=0)
    outer = (xs <= 166) | (xs >= 346)
    region = np.where(outer, eroded, dilated) == 255
    expected = ((region & (labels != 10)) | np.isin(labels, [11, 12, 13])).astype(np.uint8) * 255

    got = jaw_mask(labels)
    assert got.dtype == np.uint8 and got.shape == (512, 512)
    assert set(np.unique(got).tolist()) <= {0, 255}
    assert np.array_equal(got, expected)


def test_jaw_mask_properties() -> None:
    labels = _face_labels()
    mask = jaw_mask(labels)
    assert mask[labels == 10].max() == 0  # nose removed
    assert mask[np.isin(labels, [11, 12, 13])].min() == 255  # mouth and lips kept, even the stray blob
    # centre band grows: 6 rows below the chin (row 399) in the centre column, skin grows into the neck
    assert mask[400:406, 256].min() == 255 and mask[406, 256] == 0
    # and 16 rows upward into the hair
    assert mask[84:100, 256].min() == 255 and mask[83, 256] == 0
    # outer cheek bands shrink: the cone widens the skin's left edge from 120 to 110, then two
    # 35-wide erosions (17 columns each) pull it in to 144, 24 columns inside the skin
    row = mask[250]
    assert row[:144].max() == 0 and row[144] == 255
    assert row[:167].sum() < ((labels[250, :167] == 1) * 255).sum()
    # centre band: every skin pixel (other than the nose) is in the mask
    centre = np.zeros_like(labels, dtype=bool)
    centre[:, 167:346] = True
    assert mask[centre & (labels == 1)].min() == 255


def test_jaw_mask_all_skin_is_all_kept() -> None:
    """Erosion does not eat from the image border (OpenCV's border value), so all skin stays 255."""
    assert jaw_mask(np.ones((512, 512), np.uint8)).min() == 255


def test_jaw_mask_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        jaw_mask(np.zeros((256, 256), np.uint8))


# ---------------------------------------------------------------------------------------------- geometry


def test_crop_geometry_by_hand() -> None:
    g = crop_geometry((100, 60, 200, 180), (240, 320, 3))
    # w = 100, h = 120: half = int(120 // 2 * 1.5) = 90, centre (150, 120)
    assert g.half_side == 90 and g.side == 180
    assert g.crop_box == (60, 30, 240, 210)
    assert g.clipped_box == (60, 30, 240, 210)
    assert g.face_box_in_crop == (40, 30, 140, 150)
    border = crop_geometry((0, 150, 90, 240), (240, 320))
    # half = int(90 // 2 * 1.5) = int(67.5) = 67, centre (45, 195)
    assert border.crop_box == (-22, 128, 112, 262) and border.clipped_box == (0, 128, 112, 240)
    assert gaussian_kernel_size(180) == 9 and gaussian_kernel_size(600) == 31 and gaussian_kernel_size(10) == 1
    with pytest.raises(ValueError):
        crop_geometry((10, 10, 10, 40), (100, 100))


def test_parser_crop_is_rgb_and_black_outside_the_frame() -> None:
    frame = _smooth_frame(240, 320)
    g = crop_geometry((0, 150, 90, 240), frame.shape)
    crop = parser_crop(frame, g)
    assert crop.shape == (134, 134, 3) and crop.dtype == np.uint8
    # crop (-22, 128) .. (112, 262): columns 0..21 and rows 112.. lie outside the frame
    assert crop[:, :22].max() == 0 and crop[112:].max() == 0
    assert np.array_equal(crop[:112, 22:], frame[128:240, 0:112, ::-1])
    pil = np.array(Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1])).crop(g.crop_box))
    assert np.array_equal(crop, pil)


# ---------------------------------------------------------------------------------------------- paste back


@pytest.mark.parametrize(
    "box",
    [(100, 60, 200, 180), (0, 150, 90, 240), (250, 0, 320, 70), (5, 5, 301, 231)],
    ids=["inside", "bottom-left", "top-right", "large"],
)
def test_paste_back_matches_the_original_pillow_flow(box) -> None:
    frame = _smooth_frame(240, 320, seed=1)
    rng = np.random.default_rng(2)
    patch = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    labels = _face_labels()
    before = frame.copy()

    out = paste_back(frame, patch, box, labels)

    x1, y1, x2, y2 = box
    box_patch = cv2.resize(patch, (x2 - x1, y2 - y1))
    expected = _reference_get_image(frame, box_patch, box, jaw_mask(labels))
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    assert np.array_equal(frame, before)  # input untouched
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], frame[outside])  # everything outside the face box, bit for bit


def test_paste_back_only_changes_the_lower_half_of_the_box() -> None:
    frame = _smooth_frame(240, 320)
    box = (100, 60, 200, 180)
    patch = np.full((256, 256, 3), (10, 200, 30), np.uint8)
    out = paste_back(frame, patch, box, np.ones((512, 512), np.uint8))  # all skin -> mask 255
    g = crop_geometry(box, frame.shape)
    k = gaussian_kernel_size(g.side)  # 9
    centre_row = (60 + 180) // 2  # crop row side // 2 == the box's centre row
    assert np.array_equal(out[: centre_row - k // 2], frame[: centre_row - k // 2])
    assert not np.array_equal(out[centre_row : centre_row + 5], frame[centre_row : centre_row + 5])
    # well inside the lower half the mask is 255 after the blur: the patch colour exactly
    inner = out[centre_row + k // 2 : 180 - k // 2, 100 + k // 2 : 200 - k // 2]
    assert np.all(inner == np.array([10, 200, 30], np.uint8))


def test_paste_back_with_the_frames_own_content_is_near_identity() -> None:
    frame = _smooth_frame(240, 320)
    box = (100, 60, 200, 180)
    own = cv2.resize(frame[60:180, 100:200], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    out = paste_back(frame, own, box, np.ones((512, 512), np.uint8))
    diff = np.abs(out.astype(int) - frame.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 6


def test_paste_back_at_the_frame_border_keeps_the_frame_size() -> None:
    frame = _smooth_frame(120, 160)
    patch = np.full((256, 256, 3), 255, np.uint8)
    for box in [(0, 0, 60, 80), (100, 40, 160, 120), (0, 0, 160, 120)]:
        out = paste_back(frame, patch, box, np.ones((512, 512), np.uint8))
        assert out.shape == frame.shape
        assert out[box[1] : box[3], box[0] : box[2]].mean() > frame[box[1] : box[3], box[0] : box[2]].mean()


def test_blend_mask_and_composite_split_equals_paste_back() -> None:
    frame = _smooth_frame(240, 320)
    box = (100, 60, 200, 180)
    labels = _face_labels()
    patch = cv2.resize(np.full((256, 256, 3), 77, np.uint8), (100, 120))
    g = crop_geometry(box, frame.shape)
    mask = blend_mask(jaw_mask(labels), g)
    assert mask.shape == (180, 180) and mask.dtype == np.uint8
    assert mask[: 90 - 4].max() == 0  # upper half of the crop only (blur radius 4)
    assert mask[:, : 40 - 4].max() == 0 and mask[:, 140 + 4 :].max() == 0  # inside the box only
    assert np.array_equal(composite(frame, patch, g, mask), paste_back(frame, patch, box, labels))


# ---------------------------------------------------------------------------------------------- parser


@pytest.fixture(scope="module")
def tiny_parser() -> FaceParser:
    torch.manual_seed(0)
    net = bisenet.build(bisenet.tiny_config()).eval()
    parser = FaceParser(net, device="cpu")
    parser.module = net  # the bare network, for the independent computation below
    return parser


def test_face_parser_labels_for_a_batch_of_different_sizes(tiny_parser: FaceParser) -> None:
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (180, 180, 3), dtype=np.uint8), rng.integers(0, 256, (97, 130, 3), dtype=np.uint8)]
    labels = tiny_parser.labels(crops)
    assert len(labels) == 2
    for lab in labels:
        assert lab.shape == (512, 512) and lab.dtype == np.uint8
        assert lab.max() < 19
    # independent preprocessing: Pillow bilinear, /255, ImageNet mean/std, first head, argmax
    x = np.asarray(Image.fromarray(crops[1]).resize((512, 512), Image.BILINEAR), np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        expected = tiny_parser.module(torch.from_numpy(x).permute(2, 0, 1)[None])[0][0].argmax(0).numpy()
    assert (labels[1] == expected).mean() > 0.999
    # chunked batches give the same labels
    chunked = FaceParser(tiny_parser.runner, batch_size=1).labels(crops)
    assert all((a == b).mean() > 0.999 for a, b in zip(labels, chunked))
    assert tiny_parser.labels([]) == []
