"""LatentSync 1.5 / 1.6: the UNet3D denoising 16 aligned frames at a time (docs/GENERATORS.md).

Per window of 16 consecutive process frames:

1. each frame is warped onto LatentSync's face template (similarity transform of three landmark
   points, smoothed over time in input order) and resized to ``resolution`` with Lanczos;
2. the VAE encodes the masked crop (fixed jaw mask, masked pixels 0 after normalising) and the crop
   itself (the reference); the mask is downsampled to the latent grid (nearest);
3. DDIM runs ``steps`` steps from one seeded noise frame shared by every frame of the video, the
   UNet3D seeing ``cat(noisy 4, mask 1, masked 4, reference 4)`` and the frames' audio windows, with
   classifier-free guidance against all-zero audio as one batch of two (unconditional first);
4. the decoded crop keeps the reference outside the mask, is resized back to the warped crop size
   (bicubic, antialiased) and pasted into the frame by the inverse warp through a soft mask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import alignment
from ..contracts import Face
from ..datagen import ClipWindowPlanner
from ...graphs.registry import deepcache_graphs, unet3d_graph
from ...runners.base import Runner, run_chunked
from ..sampling import DDIM, DEFAULT_GUIDANCE, DEFAULT_STEPS, deepcache_full_steps, guide, uses_guidance
from .base import GenerationBatch, GeneratorFailure, StageClock, batch_memory, halve, paste_frames, require_finite

#: Frames per UNet3D window (the motion modules' training length; the engines are static at 16).
WINDOW = 16
RESOLUTIONS = (256, 512)
LATENT_CHANNELS = 4
VAE_FACTOR = 8


@lru_cache(maxsize=2)
def _mask_array(resolution: int) -> np.ndarray:
    data = json.loads(resources.files("latentmuse.runtime").joinpath("data/latentsync_mask.json").read_text())
    height, width = data["size"]
    mask = np.full((height, width), 255, dtype=np.uint8)
    for row, runs in data["rows"].items():
        for first, last in runs:
            mask[int(row), first : last + 1] = 0
    if resolution != height:  # 1.6 (512): the 256 mask resized with Lanczos, as the original does
        mask = cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return mask.astype(np.float32) / 255.0


def load_mask(resolution: int = 256) -> torch.Tensor:
    """(1, resolution, resolution) float32, 1 = keep, 0 = generate (the mouth and jaw)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution}")
    return torch.from_numpy(_mask_array(resolution).copy())[None]


def latent_mask(mask: torch.Tensor, latent_size: int) -> torch.Tensor:
    """The pixel mask at the latent grid by nearest downsampling (pixel 8 i of every 8): (1, h, w)."""
    return F.interpolate(mask[None], size=(latent_size, latent_size), mode="nearest")[0]


def initial_noise(seed: int, resolution: int) -> torch.Tensor:
    """LatentSync's initial latent: one (1, 4, 1, h, w) standard normal draw from a CPU generator
    seeded with ``seed``, shared by every frame of the video (the same on every device)."""
    size = resolution // VAE_FACTOR
    return torch.randn((1, LATENT_CHANNELS, 1, size, size), generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class LatentSyncSettings:
    resolution: int = 256
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    deepcache: bool = False
    vae_batch: int = 16  # frames per VAE call (halved for the rest of the run when one runs out of memory)

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")


class LatentSyncGenerator:
    """The UNet3D path over runners: ``vae_encoder``, ``vae_decoder``, ``unet3d`` (and, for DeepCache,
    ``unet3d_caching`` + ``unet3d_shallow``). All latent arithmetic runs in float32 on the UNet
    runner's device; every runner output is brought there explicitly."""

    name = "latentsync"
    audio_layout = "latentsync"

    @staticmethod
    def graphs(settings: LatentSyncSettings) -> dict[str, str]:
        """Role -> graph of the runners it needs: the UNet3D graph for the resolution and guidance (or
        DeepCache's pair), and the VAE pair (its own roles at 512 px, where MuseTalk's stay at 256)."""
        res = settings.resolution
        roles = {"vae_encoder": "vae_encoder", "vae_decoder": "vae_decoder"}
        if res != 256:
            roles.update(vae_encoder_latentsync=f"vae_encoder_{res}", vae_decoder_latentsync=f"vae_decoder_{res}")
        if settings.deepcache:
            roles["unet3d_caching"], roles["unet3d_shallow"] = deepcache_graphs(res)
        else:
            roles["unet3d"] = unet3d_graph(res, uses_guidance(settings.guidance))
        return roles

    def __init__(self, runners: dict[str, Runner], settings: LatentSyncSettings | None = None,
                 on_step: Callable[[], None] | None = None, *, defer_paste: bool = False) -> None:
        """``on_step`` is called after every DDIM step (a progress bar: a window can take minutes on a
        CPU); ``defer_paste``: return DeferredFrame objects whose paste the encoder's thread runs
        (runtime/overlap.py)."""
        self.settings = settings or LatentSyncSettings()
        self.on_step = on_step
        unet = ("unet3d_caching", "unet3d_shallow") if self.settings.deepcache else ("unet3d",)
        missing = [n for n in ("vae_encoder", "vae_decoder", *unet) if n not in runners]
        if missing:
            raise ValueError(f"LatentSync generator needs runners {missing}")
        self.runners = runners
        # At 512 px the VAE pair is its own graphs (``*_latentsync`` roles); the MuseTalk fallback keeps 256.
        self.vae_encoder = runners.get("vae_encoder_latentsync", runners["vae_encoder"])
        self.vae_decoder = runners.get("vae_decoder_latentsync", runners["vae_decoder"])
        self.device = runners[unet[0]].device
        self.scheduler = DDIM(self.settings.steps)
        res = self.settings.resolution
        self.template = alignment.face_template(res)
        self.crop_size = alignment.crop_size(res)  # (width, height) of the warped crop
        self.mask = load_mask(res).to(self.device)
        self.mask_latent = latent_mask(self.mask, res // VAE_FACTOR)
        self.noise = initial_noise(self.settings.seed, res).to(self.device)
        self.transforms: list[np.ndarray | None] = []  # by input frame, smoothed in input order
        self._smoother = alignment.TransformSmoother(self.template)
        self.vae_batch = self.settings.vae_batch  # images per VAE call; see smaller_batch
        self.clock = StageClock()
        self.defer_paste = defer_paste

    # ------------------------------------------------------------------------------------ planning

    def usable(self, face: Face, frame_shape: Sequence[int]) -> bool:
        """Any face: degenerate alignment points make that frame's window fall back."""
        return True

    def planner(self) -> ClipWindowPlanner:
        return ClipWindowPlanner(WINDOW)

    def observe(self, in_index: int, face: Face | None) -> None:
        """The input frame's alignment transform, smoothed with the frames before it (reused by ping-pong)."""
        if in_index != len(self.transforms):
            raise ValueError(f"faces must be observed in input order: got frame {in_index}, expected {len(self.transforms)}")
        points = None if face is None else alignment.alignment_points(face.landmarks)
        self.transforms.append(self._smoother.push(points))

    # ---------------------------------------------------------------------------------- generation

    def generate(self, batch: GenerationBatch) -> list[np.ndarray]:
        matrices = [self._transform(i) for i in batch.in_indices]
        res = self.settings.resolution
        tic = time.perf_counter()
        crops = []
        for frame, matrix in zip(batch.frames, matrices):
            warped = alignment.warp_face(frame, matrix, self.crop_size)
            crops.append(cv2.resize(warped, (res, res), interpolation=cv2.INTER_LANCZOS4)[..., ::-1])  # RGB
        pixels = torch.from_numpy(np.stack(crops).astype(np.float32)).permute(0, 3, 1, 2).to(self.device)
        pixels = pixels / 255.0 * 2.0 - 1.0  # (F, 3, R, R) in [-1, 1]
        masked = pixels * self.mask
        self.clock.add("align", time.perf_counter() - tic)

        tic = time.perf_counter()
        frames = len(crops)
        with batch_memory("LatentSync's VAE encoder", self.vae_batch):
            latents = run_chunked(self.vae_encoder, {"image": torch.cat([masked, pixels])}, "latent",
                                  self.vae_batch, self.device)
        masked_latent, reference_latent = latents[:frames], latents[frames:]
        size = res // VAE_FACTOR
        condition = torch.cat([
            self.mask_latent.expand(frames, 1, size, size), masked_latent, reference_latent,
        ], dim=1).transpose(0, 1)[None]  # (1, 9, F, h, w)
        self.clock.add("vae_encode", time.perf_counter() - tic)

        tic = time.perf_counter()
        audio = batch.audio.latentsync_windows(batch.out_indices)[None].to(self.device)  # (1, F, 50, 384)
        latent = self.sample(condition, audio)
        self.clock.add("sampling", time.perf_counter() - tic)

        tic = time.perf_counter()
        with batch_memory("LatentSync's VAE decoder", self.vae_batch):
            images = run_chunked(self.vae_decoder, {"latent": latent[0].transpose(0, 1)}, "image",
                                 self.vae_batch, self.device)
        decoded = require_finite(images, "the VAE decoder") * 2.0 - 1.0  # [0, 1] -> [-1, 1]
        self.clock.add("vae_decode", time.perf_counter() - tic)

        tic = time.perf_counter()
        combined = decoded * (1 - self.mask) + pixels * self.mask  # only the masked region is generated
        width, height = self.crop_size
        faces = F.interpolate(combined, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        faces = faces.permute(0, 2, 3, 1).flip(-1).cpu().numpy()  # (F, h, w, 3) BGR in [-1, 1]
        self.clock.add("resize", time.perf_counter() - tic)
        return paste_frames(self, alignment.paste_face, list(zip(batch.frames, faces, matrices)), "paste")

    def smaller_batch(self) -> tuple[int, int] | None:
        """Halve the VAE's images per call. The UNet3D has no smaller batch (a window is 16 frames, the
        motion modules' length; guidance's pair is one static-shape engine call), so running out of
        memory there is not a :class:`BatchOutOfMemory` and goes straight to the fallback."""
        sizes = halve(self.vae_batch)
        if sizes is not None:
            self.vae_batch = sizes[1]
        return sizes

    def sample(self, condition: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The DDIM loop for one window: ``condition`` (1, 9, F, h, w), ``audio`` (1, F, 50, 384) ->
        the clean latent (1, 4, F, h, w)."""
        guidance = self.settings.guidance
        cfg = uses_guidance(guidance)
        batch = 2 if cfg else 1
        frames = condition.shape[2]
        latent = self.noise.expand(-1, -1, frames, -1, -1).contiguous()
        audio_in = torch.cat([torch.zeros_like(audio), audio]) if cfg else audio
        condition = condition.expand(batch, -1, -1, -1, -1)
        full = deepcache_full_steps(len(self.scheduler.timesteps)) if self.settings.deepcache else None
        cache = None
        for j, t in enumerate(self.scheduler.timesteps.tolist()):
            sample = torch.cat([latent.expand(batch, -1, -1, -1, -1), condition], dim=1)
            inputs = {"sample": sample, "timestep": torch.full((batch,), t, dtype=torch.int64), "audio": audio_in}
            if full is None:
                eps = self.runners["unet3d"](inputs)["eps"]
            elif full[j]:
                out = self.runners["unet3d_caching"](inputs)
                eps, cache = out["eps"], out["cache"]
            else:
                eps = self.runners["unet3d_shallow"]({**inputs, "cache": cache})["eps"]
            eps = require_finite(eps.to(self.device, torch.float32), f"the UNet3D (step {j + 1}, t = {t})")
            if cfg:
                eps = guide(eps, guidance)
            latent = self.scheduler.step(eps, t, latent).prev_sample
            if self.on_step is not None:
                self.on_step()
        return latent

    def _transform(self, in_index: int) -> np.ndarray:
        matrix = self.transforms[in_index] if in_index < len(self.transforms) else None
        if matrix is None:
            raise GeneratorFailure(f"no alignment for input frame {in_index} (degenerate landmarks, or its face not observed)")
        return matrix
