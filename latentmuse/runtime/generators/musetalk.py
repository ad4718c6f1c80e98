"""MuseTalk 1.5: single-step latent inpainting of the lower face (docs/PIPELINE.md 6a).

Per process frame: an axis-aligned crop box from the 68 landmarks, a 256 x 256 Lanczos crop, the
VAE latents of the crop with its lower half masked (-1 after normalisation) and of the whole crop,
one UNet call at t = 0 with the frame's audio window, a VAE decode, and the jaw-mode blend that
pastes only the mouth region back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..blending import FaceParser, crop_geometry, parser_crop, paste_back
from ..contracts import Face
from ..datagen import FrameWindowPlanner
from ...runners.base import Runner
from ...runners.base import run_chunked
from ..latentcache import LatentSession
from .base import GenerationBatch, GeneratorFailure, StageClock, batch_memory, halve, paste_frames, require_finite

CROP = 256
EXTRA_MARGIN = 10  # MuseTalk 1.5's default: the box reaches 10 px below the chin


def crop_box(face: Face, frame_shape: Sequence[int], extra_margin: int = EXTRA_MARGIN) -> tuple[int, int, int, int] | None:
    """MuseTalk 1.5's box (x1, y1, x2, y2) from landmarks, or None when no usable box exists.

    Landmarks are truncated to integers (MuseTalk casts them to int32). With p = L[29] (nose bridge)
    and d = max(L.y) - p.y: y1 = max(0, p.y - d), x1 = min(L.x), x2 = max(L.x), y2 = max(L.y); if that
    box is empty or x1 < 0 the detector box is used instead. Then y2 += 10, clipped to the frame;
    x2 is clipped to the frame width (MuseTalk relies on slicing for that).
    """
    height, width = frame_shape[:2]
    lm = face.landmarks.astype(np.int32)
    p_y = int(lm[29, 1])
    y_max = int(lm[:, 1].max())
    x1, y1, x2, y2 = int(lm[:, 0].min()), max(0, p_y - (y_max - p_y)), int(lm[:, 0].max()), y_max
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        x1, y1, x2, y2 = (int(v) for v in face.box)
        x1, y1 = max(0, x1), max(0, y1)
    y2 = min(y2 + extra_margin, height)
    x2 = min(x2, width)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return x1, y1, x2, y2


def _to_tensor(crops_bgr: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, 3, 256, 256) RGB float in [0, 1]."""
    rgb = np.stack([c[..., ::-1] for c in crops_bgr]).astype(np.float32) / 255.0
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()


class MuseTalkGenerator:
    """MuseTalk 1.5 over runners for the VAE encoder/decoder and the UNet, plus the face parser.

    Frames are independent, so any ``batch_size`` process frames make a window (:class:`FrameWindowPlanner`).
    ``call_batch`` frames go through the networks together: ``batch_size`` until a call runs out of
    memory, then halved (:meth:`smaller_batch`) for the rest of the run; the windows stay as planned.
    """

    name = "musetalk"
    audio_layout = "musetalk"

    @staticmethod
    def graphs() -> dict[str, str]:
        """Role -> graph of the runners it needs (the model set is built from these)."""
        return {"vae_encoder": "vae_encoder", "vae_decoder": "vae_decoder", "musetalk_unet": "musetalk_unet",
                "bisenet": "bisenet"}

    def __init__(self, vae_encoder: Runner, vae_decoder: Runner, unet: Runner, parser: FaceParser,
                 batch_size: int = 8, *, latents: LatentSession | None = None, defer_paste: bool = False) -> None:
        """``latents``: the run's latent cache (runtime/latentcache.py), encoded latents by input
        frame; ``defer_paste``: return DeferredFrame objects whose paste the encoder's thread runs
        (runtime/overlap.py)."""
        self.vae_encoder, self.vae_decoder, self.unet, self.parser = vae_encoder, vae_decoder, unet, parser
        self.batch_size = batch_size
        self.call_batch = batch_size
        self.device = unet.device
        self.clock = StageClock()
        self.defer_paste = defer_paste
        self.latents = latents

    def usable(self, face: Face, frame_shape: Sequence[int]) -> bool:
        """Landmarks that make no crop box cannot be dubbed."""
        return crop_box(face, frame_shape) is not None

    def planner(self) -> FrameWindowPlanner:
        return FrameWindowPlanner(self.batch_size)

    def observe(self, in_index: int, face: Face | None) -> None:
        """Nothing to keep per video: the crop box comes from each frame's own landmarks."""

    def generate(self, batch: GenerationBatch) -> list[np.ndarray]:
        """Any number of frames; network calls are chunked to ``call_batch`` frames."""
        out: list[np.ndarray] = []
        step = self.call_batch
        for start in range(0, len(batch.frames), step):
            with batch_memory("MuseTalk's VAE, UNet and face parser", step):  # every call grows with the chunk
                out.extend(self._generate(batch.subset(range(start, min(start + step, len(batch.frames))))))
        return out

    def smaller_batch(self) -> tuple[int, int] | None:
        sizes = halve(self.call_batch)
        if sizes is not None:
            self.call_batch = sizes[1]
        return sizes

    def _latents(self, batch: GenerationBatch, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
        """The UNet's (n, 8, 32, 32) input: masked 4 + reference 4 latents per frame, from the latent
        cache where it has the input frame, else encoded (and given to the cache)."""
        cached = self.latents.lookup(batch.in_indices) if self.latents is not None else [None] * len(boxes)
        first: dict[int, int] = {}  # input frame -> its first entry: a repeated input frame is encoded once
        todo = [first.setdefault(i, k) for k, (i, value) in enumerate(zip(batch.in_indices, cached))
                if value is None and i not in first]
        rows: list[torch.Tensor | None] = [None if v is None else torch.from_numpy(v) for v in cached]
        if todo:
            tic = time.perf_counter()
            crops = [cv2.resize(batch.frames[k][y1:y2, x1:x2], (CROP, CROP), interpolation=cv2.INTER_LANCZOS4)
                     for k, (x1, y1, x2, y2) in ((k, boxes[k]) for k in todo)]
            image = _to_tensor(crops)
            masked = image.clone()
            masked[:, :, CROP // 2 :, :] = 0.0  # lower half masked in [0, 1] space -> -1 after normalising
            stacked = torch.cat([masked, image]) * 2.0 - 1.0
            self.clock.add("crop", time.perf_counter() - tic)
            tic = time.perf_counter()
            m = len(todo)
            latents = run_chunked(self.vae_encoder, {"image": stacked}, "latent", 2 * m, self.device)
            encoded = torch.cat([latents[:m], latents[m:]], dim=1)  # masked 4 + reference 4
            if self.latents is not None:
                self.latents.record([batch.in_indices[k] for k in todo], encoded.cpu().numpy())
            for k, row in zip(todo, encoded):
                rows[k] = row
            for k, i in enumerate(batch.in_indices):
                if rows[k] is None:
                    rows[k] = rows[first[i]]
            self.clock.add("vae_encode", time.perf_counter() - tic)
        return torch.stack([row.to(self.device) for row in rows])

    def _generate(self, batch: GenerationBatch) -> list[np.ndarray]:
        boxes = [crop_box(face, frame.shape) for face, frame in zip(batch.faces, batch.frames)]
        if any(box is None for box in boxes):  # the pipeline filters these; be safe
            raise GeneratorFailure("a face has no usable crop box")
        n = len(boxes)
        unet_in = self._latents(batch, boxes)

        tic = time.perf_counter()
        audio = batch.audio.musetalk_windows(batch.out_indices)
        pred = run_chunked(self.unet, {"latents": unet_in, "audio": audio}, "latent", n, self.device)
        self.clock.add("unet", time.perf_counter() - tic)

        tic = time.perf_counter()
        decoded = require_finite(run_chunked(self.vae_decoder, {"latent": pred}, "image", n, self.device),
                                 "MuseTalk's VAE decoder")
        patches = (decoded.float().cpu().permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)[..., ::-1]
        self.clock.add("vae_decode", time.perf_counter() - tic)

        tic = time.perf_counter()
        crops = [parser_crop(frame, crop_geometry(box, frame.shape)) for frame, box in zip(batch.frames, boxes)]
        labels = self.parser.labels(crops)  # one BiSeNet call for the batch
        self.clock.add("parse", time.perf_counter() - tic)
        return paste_frames(self, paste_back, [(frame, np.ascontiguousarray(patch), box, label) for frame, patch, box, label
                                               in zip(batch.frames, patches, boxes, labels)], "blend")
