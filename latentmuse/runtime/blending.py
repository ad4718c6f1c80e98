"""MuseTalk 1.5 paste-back: face parsing, the "jaw" blend mask, and alpha compositing into the frame.

The generated 256 x 256 mouth patch covers the whole face box, but only the lower face should change:
the eyes, brows and forehead of the generated patch are a lossy copy of the reference and would flicker.
MuseTalk therefore parses a square crop around the box with BiSeNet, builds a soft mask of the lower
face (skin grown over the jaw line, nose removed, mouth and lips added), and alpha-composites the patch
into the frame with that mask. This module reproduces ``musetalk/utils/blending.py:get_image`` with
``mode="jaw"`` and ``musetalk/utils/face_parsing.FaceParsing`` with the defaults of
``scripts/inference.py`` (cheek widths 90, expand 1.5, upper boundary 0.5, blur 0.05 of the crop side).

The work is split so the pipeline can batch the parser:

1. ``geometry = crop_geometry(face_box, frame.shape)`` for each frame;
2. ``crops = [parser_crop(frame, geometry) ...]`` (RGB, the image the parser must see);
3. ``labels = FaceParser(bisenet).labels(crops)`` once for the whole batch;
4. ``paste_back(frame, patch, face_box, labels[i])`` per frame (or ``blend_mask`` + ``composite``).

Resizes that decide the mask use Pillow, as the original does (Pillow is a hard dependency of diffusers
and scikit-image): Pillow's bilinear and bicubic filters antialias when downsampling and OpenCV's do not,
so using OpenCV there would change labels and mask edges. Compositing uses Pillow's rounding formula,
so the output is bit-identical to the original for the same labels and patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from ..graphs.wrappers import BiSeNetGraph
from ..runners.base import Runner
from ..runners.torch_runner import TorchRunner

#: CelebAMask-HQ labels used by the jaw mask.
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP = 1, 10, 11, 12, 13

#: Side of the square the parser works at.
PARSE_SIZE = 512

#: ImageNet normalisation, as torchvision's ``Normalize`` in the original preprocessing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: MuseTalk 1.5 defaults (``scripts/inference.py`` / ``get_image``).
DEFAULT_CHEEK_WIDTH = 90
DEFAULT_EXPAND = 1.5
DEFAULT_UPPER_BOUNDARY_RATIO = 0.5
DEFAULT_BLUR_FRACTION = 0.05


# --------------------------------------------------------------------------------------------------
# Kernels and the jaw mask (pure functions on the 512 x 512 label map)
# --------------------------------------------------------------------------------------------------


def cone_kernel(cone_height: int = 21, tail_height: int = 12) -> np.ndarray:
    """The "cone with tail" structuring element MuseTalk dilates the skin with, (n, n) uint8 0/1.

    ``n = cone_height + tail_height`` and the centre column is ``n // 2``. Rows above
    ``cone_height // 2`` are empty; row ``r`` of the cone holds ``2 (r - cone_height // 2) + 1`` ones
    centred on the centre column; the tail rows repeat the cone's last row. With the defaults (21, 12):
    a 33 x 33 kernel, rows 10..20 of widths 1, 3, ..., 21, then 12 rows of width 21 (373 ones).

    The intent is to grow the skin over the jaw line so the generated chin is blended in. Note that
    ``cv2.dilate`` is a max filter (it does not reflect the kernel), and the anchor is the kernel
    centre, so the skin actually grows 16 rows *upward* (full width) and only 6 rows downward (as a
    narrowing cone). We keep OpenCV's semantics because that is what MuseTalk ships.
    """
    if cone_height < 1 or tail_height < 0:
        raise ValueError(f"cone_height must be >= 1 and tail_height >= 0, got {cone_height}, {tail_height}")
    size = cone_height + tail_height
    centre = size // 2
    kernel = np.zeros((size, size), dtype=np.uint8)
    for row in range(cone_height // 2, cone_height):
        half = row - cone_height // 2
        kernel[row, max(0, centre - half) : centre + half + 1] = 1
    base_half = int(kernel[cone_height - 1].sum()) // 2
    kernel[cone_height:, max(0, centre - base_half) : min(size, centre + base_half + 1)] = 1
    return kernel


def cheek_kernel() -> np.ndarray:
    """The flat ellipse (35 wide, 3 tall) used to erode the mask on the outer cheeks, uint8 0/1.

    A wide, short element eats mostly sideways: on the cheeks the grown skin reaches the face outline
    and the background behind it, where a moving generated edge is most visible, so the mask is pulled
    in horizontally there.
    """
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))


def cheek_band_mask(left_width: int = DEFAULT_CHEEK_WIDTH, right_width: int = DEFAULT_CHEEK_WIDTH) -> np.ndarray:
    """(512, 512) uint8, 255 on the outer cheek bands and 0 in the centre band.

    As in the original (a filled ``cv2.rectangle``, whose corners are inclusive) the bands are
    ``x <= 256 - left_width`` and ``x >= 256 + right_width``, i.e. the boundary columns belong to the
    cheek bands.
    """
    mask = np.zeros((PARSE_SIZE, PARSE_SIZE), dtype=np.uint8)
    centre = PARSE_SIZE // 2
    left_end = centre - left_width  # inclusive
    right_start = centre + right_width  # inclusive
    if left_end >= 0:
        mask[:, : left_end + 1] = 255
    if right_start < PARSE_SIZE:
        mask[:, max(0, right_start) :] = 255
    return mask


def jaw_mask(
    labels: np.ndarray,
    cheek_width: int = DEFAULT_CHEEK_WIDTH,
    right_cheek_width: int | None = None,
) -> np.ndarray:
    """MuseTalk 1.5's "jaw" parsing mask from a (512, 512) label map, uint8 0/255.

    Order of operations (``FaceParsing.__call__`` with ``mode="jaw"``):

    1. skin (label 1) dilated with :func:`cone_kernel`, which grows it past the jaw line;
    2. that *dilated* mask eroded twice with :func:`cheek_kernel` (the original erodes the dilated
       mask, not the raw skin);
    3. the eroded mask on the outer cheek bands (:func:`cheek_band_mask`), the dilated one in the
       centre: the centre band keeps the chin growth, the cheeks are pulled in away from the outline;
    4. nose pixels (label 10) removed: the nose does not move when speaking and its generated copy is
       blurrier than the original;
    5. mouth and both lips (11, 12, 13) added, whether or not they were under the skin mask.

    ``right_cheek_width`` defaults to ``cheek_width`` (the inference defaults are 90 and 90).
    """
    labels = np.asarray(labels)
    if labels.shape != (PARSE_SIZE, PARSE_SIZE):
        raise ValueError(f"labels must be ({PARSE_SIZE}, {PARSE_SIZE}), got {labels.shape}")
    right = cheek_width if right_cheek_width is None else right_cheek_width
    skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
    dilated = cv2.dilate(skin, cone_kernel(), iterations=1)
    eroded = cv2.erode(dilated, cheek_kernel(), iterations=2)
    bands = cheek_band_mask(cheek_width, right)
    region = cv2.bitwise_or(cv2.bitwise_and(eroded, bands), cv2.bitwise_and(dilated, cv2.bitwise_not(bands)))
    keep = ((region == 255) & (labels != NOSE)) | np.isin(labels, (MOUTH, UPPER_LIP, LOWER_LIP))
    return np.where(keep, 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


class FaceParser:
    """Batched BiSeNet face parsing: RGB uint8 crops of any size -> (512, 512) uint8 label maps.

    Preprocessing as MuseTalk's ``FaceParsing``: Pillow bilinear resize to 512 x 512, scale to [0, 1],
    ImageNet mean/std, first head of the network, argmax over the 19 classes. Crops of different sizes
    are resized on the CPU and then parsed in one network call per ``batch_size`` images.

    ``parser`` is the ``bisenet`` graph's runner (it owns device and dtype); a bare BiSeNet module is
    wrapped in a PyTorch runner on ``device``.
    """

    def __init__(self, parser: Runner | nn.Module, device: str | torch.device = "cpu", batch_size: int | None = None):
        if isinstance(parser, nn.Module):
            param = next(parser.parameters(), None)
            dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
            parser = TorchRunner("bisenet", BiSeNetGraph(parser), device, dtype)
        self.runner = parser
        self.batch_size = batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def resize_for_parser(image_rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (512, 512, 3) uint8 with Pillow's (antialiasing) bilinear filter."""
        image_rgb = np.asarray(image_rgb)
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f"expected an (h, w, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
        if image_rgb.shape[:2] == (PARSE_SIZE, PARSE_SIZE):
            return np.ascontiguousarray(image_rgb)
        pil = Image.fromarray(np.ascontiguousarray(image_rgb))
        return np.asarray(pil.resize((PARSE_SIZE, PARSE_SIZE), Image.Resampling.BILINEAR))

    def labels(self, images_rgb_uint8: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (512, 512) uint8 label map (values 0..18) per RGB uint8 image."""
        images = [self.resize_for_parser(image) for image in images_rgb_uint8]
        if not images:
            return []
        step = self.batch_size or len(images)
        out: list[np.ndarray] = []
        for start in range(0, len(images), step):
            batch = torch.from_numpy(np.stack(images[start : start + step]))
            x = (batch.permute(0, 3, 1, 2).float().div_(255.0) - self._mean) / self._std
            logits = self.runner({"image": x})["logits"]
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            out.extend(labels[i] for i in range(labels.shape[0]))
        return out


# --------------------------------------------------------------------------------------------------
# Crop geometry and compositing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropGeometry:
    """Where the parser crop and the face box sit in one frame (all integer pixels, end-exclusive).

    ``crop_box`` is the unclipped square (side ``2 * half_side``) centred on the face box, as MuseTalk's
    ``get_crop_box``; ``clipped_box`` is its intersection with the frame (what is really read from and
    written to the frame); parts of the square outside the frame are black in the parser crop.
    """

    face_box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    half_side: int
    frame_size: tuple[int, int]  # (height, width)

    @property
    def side(self) -> int:
        return 2 * self.half_side

    @property
    def clipped_box(self) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.crop_box
        h, w = self.frame_size
        return max(0, x0), max(0, y0), min(w, x1), min(h, y1)

    @property
    def face_box_in_crop(self) -> tuple[int, int, int, int]:
        x0, y0, _, _ = self.crop_box
        fx0, fy0, fx1, fy1 = self.face_box
        return fx0 - x0, fy0 - y0, fx1 - x0, fy1 - y0


def crop_geometry(
    face_box: Sequence[float], frame_shape: Sequence[int], expand: float = DEFAULT_EXPAND
) -> CropGeometry:
    """The parser crop for a face box ``(x1, y1, x2, y2)`` in a frame of shape ``(H, W[, C])``.

    Centre ``((x1 + x2) // 2, (y1 + y2) // 2)``, half-side ``int(max(w, h) // 2 * expand)``. Box
    coordinates are truncated to integers (MuseTalk's boxes are integers already). Raises
    ``ValueError`` for a box too small to have a crop (``max(w, h) < 2``) or one with no area.
    """
    x1, y1, x2, y2 = (int(v) for v in face_box)
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        raise ValueError(f"face box {tuple(face_box)} has no area")
    half = int(max(w, h) // 2 * expand)
    if half <= 0:
        raise ValueError(f"face box {tuple(face_box)} is too small for a parser crop")
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    frame_h, frame_w = int(frame_shape[0]), int(frame_shape[1])
    return CropGeometry(
        face_box=(x1, y1, x2, y2),
        crop_box=(cx - half, cy - half, cx + half, cy + half),
        half_side=half,
        frame_size=(frame_h, frame_w),
    )


def parser_crop(frame_bgr: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """The (side, side, 3) RGB uint8 image the parser must see: the crop, black outside the frame."""
    side = geometry.side
    crop = np.zeros((side, side, 3), dtype=np.uint8)
    cx0, cy0, cx1, cy1 = geometry.clipped_box
    if cx1 > cx0 and cy1 > cy0:
        x0, y0 = geometry.crop_box[:2]
        crop[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = frame_bgr[cy0:cy1, cx0:cx1, ::-1]
    return crop


def gaussian_kernel_size(side: int, blur_fraction: float = DEFAULT_BLUR_FRACTION) -> int:
    """Odd Gaussian kernel size, ``int(blur_fraction * side // 2 * 2) + 1`` as the original writes it."""
    return int(blur_fraction * side // 2 * 2) + 1


def blend_mask(
    parse_mask: np.ndarray,
    geometry: CropGeometry,
    upper_boundary_ratio: float = DEFAULT_UPPER_BOUNDARY_RATIO,
    blur_fraction: float = DEFAULT_BLUR_FRACTION,
) -> np.ndarray:
    """The soft compositing mask over the crop, (side, side) uint8 0..255.

    ``parse_mask`` is the (512, 512) 0/255 parsing mask (:func:`jaw_mask`). It is resized to the crop
    with Pillow's bicubic filter (the original's default), then kept only

    * inside the face box: the patch only exists there, and the parser also finds skin on the neck and
      on other faces, which must not be touched;
    * in rows ``>= int(side * upper_boundary_ratio)`` of the *crop* (MuseTalk uses the crop's height,
      not the box's; because the crop is centred on the box this is the box's centre row
      ``(y1 + y2) // 2``): only the lower face moves when speaking, and the generated eyes and brows
      would otherwise flicker;

    and finally blurred with a Gaussian of kernel :func:`gaussian_kernel_size` (sigma from the kernel)
    so the seam fades over about 5 % of the crop. The blur lets the mask reach a few rows above the
    centre line and outside the box, where compositing leaves the frame unchanged anyway (the source
    there is the frame itself).
    """
    parse_mask = np.asarray(parse_mask, dtype=np.uint8)
    side = geometry.side
    if parse_mask.shape != (side, side):
        resized = Image.fromarray(np.ascontiguousarray(parse_mask)).resize((side, side), Image.Resampling.BICUBIC)
        parse_mask = np.asarray(resized)
    mask = np.zeros((side, side), dtype=np.uint8)
    fx0, fy0, fx1, fy1 = geometry.face_box_in_crop
    top = max(fy0, int(side * upper_boundary_ratio), 0)
    fx0, fx1, fy1 = max(0, fx0), min(side, fx1), min(side, fy1)
    if fx1 > fx0 and fy1 > top:
        mask[top:fy1, fx0:fx1] = parse_mask[top:fy1, fx0:fx1]
    k = gaussian_kernel_size(side, blur_fraction)
    return cv2.GaussianBlur(mask, (k, k), 0)


def _div255(a: np.ndarray) -> np.ndarray:
    """Pillow's exact rounding ``a / 255`` for ``0 <= a <= 255 * 255`` (``DIV255`` in libImaging)."""
    t = a + 128
    return ((t >> 8) + t) >> 8


def composite(
    frame_bgr: np.ndarray, patch_bgr: np.ndarray, geometry: CropGeometry, mask: np.ndarray
) -> np.ndarray:
    """Alpha-composite a box-sized patch into a copy of the frame with a crop-sized mask.

    ``patch_bgr`` is (box h, box w, 3) uint8 (the generated patch already resized to the face box);
    ``mask`` is (side, side) uint8 from :func:`blend_mask`. ``out = round((patch m + frame (255 - m)) /
    255)`` with Pillow's rounding, evaluated only where the face box, the crop and the frame overlap:
    everywhere else the composited source equals the frame, so the result is the frame, bit for bit.
    The input frame is not modified.
    """
    out = frame_bgr.copy()
    fx0, fy0, fx1, fy1 = geometry.face_box
    if patch_bgr.shape[:2] != (fy1 - fy0, fx1 - fx0):
        raise ValueError(f"patch {patch_bgr.shape[:2]} does not match the face box size {(fy1 - fy0, fx1 - fx0)}")
    if mask.shape != (geometry.side, geometry.side):
        raise ValueError(f"mask {mask.shape} does not match the crop side {geometry.side}")
    cx0, cy0, cx1, cy1 = geometry.clipped_box
    x0, y0 = max(fx0, cx0), max(fy0, cy0)
    x1, y1 = min(fx1, cx1), min(fy1, cy1)
    if x1 <= x0 or y1 <= y0:
        return out
    sx, sy = geometry.crop_box[:2]
    m = mask[y0 - sy : y1 - sy, x0 - sx : x1 - sx].astype(np.int32)[:, :, None]
    src = patch_bgr[y0 - fy0 : y1 - fy0, x0 - fx0 : x1 - fx0].astype(np.int32)
    dst = frame_bgr[y0:y1, x0:x1].astype(np.int32)
    out[y0:y1, x0:x1] = _div255(src * m + dst * (255 - m)).astype(np.uint8)
    return out


def resize_patch(patch_bgr: np.ndarray, face_box: Sequence[int]) -> np.ndarray:
    """The generated patch resized to the face box (bilinear, as ``cv2.resize``'s default in MuseTalk)."""
    patch_bgr = np.asarray(patch_bgr)
    if patch_bgr.dtype != np.uint8 or patch_bgr.ndim != 3 or patch_bgr.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) uint8 BGR patch, got {patch_bgr.shape} {patch_bgr.dtype}")
    x1, y1, x2, y2 = (int(v) for v in face_box)
    if patch_bgr.shape[:2] == (y2 - y1, x2 - x1):
        return patch_bgr
    return cv2.resize(patch_bgr, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)


def paste_back(
    frame_bgr: np.ndarray,
    generated_patch_bgr: np.ndarray,
    face_box: Sequence[float],
    parsing_labels: np.ndarray,
    *,
    cheek_width: int = DEFAULT_CHEEK_WIDTH,
    right_cheek_width: int | None = None,
    expand: float = DEFAULT_EXPAND,
    upper_boundary_ratio: float = DEFAULT_UPPER_BOUNDARY_RATIO,
    blur_fraction: float = DEFAULT_BLUR_FRACTION,
) -> np.ndarray:
    """MuseTalk 1.5 ``get_image(..., mode="jaw")``: a new frame with the generated mouth blended in.

    ``generated_patch_bgr`` is the decoded 256 x 256 (or already box-sized) uint8 BGR patch;
    ``parsing_labels`` the (512, 512) label map :class:`FaceParser` produced for
    ``parser_crop(frame_bgr, crop_geometry(face_box, frame_bgr.shape, expand))``. Pixels outside the
    face box (and so outside the crop) are bit-identical to ``frame_bgr``, which is not modified.
    """
    geometry = crop_geometry(face_box, frame_bgr.shape, expand)
    patch = resize_patch(generated_patch_bgr, geometry.face_box)
    mask = blend_mask(
        jaw_mask(parsing_labels, cheek_width, right_cheek_width), geometry, upper_boundary_ratio, blur_fraction
    )
    return composite(frame_bgr, patch, geometry, mask)
