"""What one load holds for all its clips (the runners, the face front end, the device), and the
generator chain each clip builds on it.

Loading is the expensive part of a run, so a :class:`Session` is made once per
:class:`~latentmuse.runtime.lipsync.LipSync` and shared by its clips; what differs per clip (steps,
seed, batch size, the latent cache) goes into that clip's :func:`build_chain`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LatentmuseError
from ..files import Digests
from ..models.layouts import LATENTSYNC_RESOLUTION, Sidecar, layout
from ..runners.torch_runner import torch_dtype
from .blending import FaceParser
from .checks import check_load_options
from .contracts import FaceFrontEnd
from .faces import front_end_kind, make_front_end
from .generators.chain import GeneratorChain
from .generators.latentsync import LatentSyncGenerator, LatentSyncSettings
from .generators.musetalk import MuseTalkGenerator
from .latentcache import LatentSession
from .options import ClipOptions, LoadOptions
from .runner_set import (SMOKE, SYNC_ROLES, ModelSet, load_models, resolve_device, run_graphs, syncnet_weights,
                         unet3d_weights, weights_version)
from .sampling import uses_guidance
from .sync import RunnerEmbedder

#: Smoke weights are always drawn with this seed (``--seed`` is the sampling seed), so graphs exported
#: from ``smoke`` hold the very weights a smoke run computes with.
SMOKE_SEED = 0
PRECISION_NAMES = {torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def choose_generator(load: LoadOptions) -> str:
    """``auto``: LatentSync whenever the weights have a UNet3D (smoke weights do), else MuseTalk."""
    if load.generator != "auto":
        return load.generator
    return "latentsync" if unet3d_weights(load.weights) is not None else "musetalk"


def resolution_for(load: LoadOptions, version: str) -> int:
    """The LatentSync crop size: the weights' native one for ``auto``."""
    return LATENTSYNC_RESOLUTION[version] if str(load.resolution) == "auto" else int(load.resolution)


def sync_wanted(load: LoadOptions) -> bool:
    """``--sync-score``: off; on (the weights must have SyncNet); auto: when the weights folder has it.

    ``auto`` never scores random weights (smoke, or a ``weights random`` folder): a random network's
    LSE-C is a meaningless number that looks like a measurement (``on`` scores them anyway, for tests
    of the plumbing)."""
    if load.sync_score == "off":
        return False
    present = syncnet_weights(load.weights) is not None
    if load.sync_score == "on" and not present:
        raise LatentmuseError(
            f"--sync-score on: SyncNet weights ({' or '.join(layout('syncnet').targets)}) not found in {load.weights}.",
            f"run `latentmuse weights download --dir {load.weights} --model syncnet`, or pass --sync-score auto "
            "to score only when they exist.")
    return present and (load.sync_score == "on" or not random_weights(load.weights))


def random_weights(weights: str | Path) -> bool:
    """Smoke weights, or a folder ``weights random`` wrote."""
    return str(weights) == SMOKE or (Path(weights).is_dir() and Sidecar.read(Path(weights)).random)


def sync_off_reason(load: LoadOptions) -> str:
    """Why a load does not score lip sync (for the one line that says so)."""
    if load.sync_score == "off":
        return "turned off"
    if random_weights(load.weights):
        return "random weights: a random network's score means nothing; --sync-score on scores them anyway"
    return f"no SyncNet weights in {load.weights}"


def load_run_models(load: LoadOptions, kind: str, face_kind: str, device, note: Callable[[str], None]) -> ModelSet:
    """The runners a load needs, each graph on the backend ``load.backend`` chooses for it."""
    roles = run_graphs(kind, resolution=resolution_for(load, weights_version(load.weights)),
                       guided=uses_guidance(load.guidance), deepcache=load.deepcache, face_detector=face_kind,
                       sync=sync_wanted(load))
    return load_models(load.weights, device, roles, seed=SMOKE_SEED, backend=load.backend,
                       engines=load.engines, precision=load.precision, note=note,
                       trust_torchscript=load.trust_torchscript)


@dataclass
class Session:
    """Everything loaded once and shared by the clips of a load.

    ``owned``: the session loaded its models and closes them; models handed in (tests, the bench)
    belong to the caller. ``digests``: content hashes of the clips' files, each file hashed once.
    """

    load: LoadOptions
    models: ModelSet
    kind: str  # the generator: "musetalk" or "latentsync"
    device: torch.device
    front_end: FaceFrontEnd
    seconds: float = 0.0
    owned: bool = True
    digests: Digests = field(default_factory=Digests)

    @classmethod
    def open(cls, load: LoadOptions, note: Callable[[str], None], models: ModelSet | None = None,
             digests: Digests | None = None) -> Session:
        """Load what every clip of ``load`` needs (``models`` instead of loading them: not owned)."""
        tic = time.perf_counter()
        check_load_options(load)
        device = resolve_device(load.device)
        torch_dtype(load.precision, device)  # a precision this device cannot run fails before any loading
        kind = choose_generator(load)
        weights_root = None if str(load.weights) == SMOKE else Path(load.weights)
        face_kind = front_end_kind(load.face_detector, weights_root if weights_root and weights_root.is_dir() else None)
        owned = models is None
        if models is None:
            models = load_run_models(load, kind, face_kind, device, note)
        front_end = make_front_end(face_kind, models.weights_root, device, models.runners)
        return cls(load, models, kind, device, front_end, time.perf_counter() - tic, owned, digests or Digests())

    @property
    def scores_sync(self) -> bool:
        """Whether this load has SyncNet's runners (``--sync-score``): each clip is scored as it is written."""
        return all(role in self.models.runners for role in SYNC_ROLES)

    def sync_embedder(self) -> RunnerEmbedder:
        """SyncNet's two streams as this load's runners (runtime/sync.py)."""
        return RunnerEmbedder(self.models["syncnet_audio"], self.models["syncnet_lip"])

    @property
    def precision(self) -> str:
        return PRECISION_NAMES.get(self.models.dtype, str(self.models.dtype))

    @property
    def backend(self) -> str:
        """One backend name when every selected graph got it, else ``mixed`` (the report's ``runners`` say which)."""
        used = {c.backend for c in self.models.choices.values()}
        return used.pop() if len(used) == 1 else "mixed" if used else "torch"

    def latentsync_settings(self, clip: ClipOptions) -> LatentSyncSettings:
        return LatentSyncSettings(resolution=resolution_for(self.load, self.models.latentsync_version), steps=clip.steps,
                                  guidance=self.load.guidance, seed=clip.seed, deepcache=self.load.deepcache,
                                  vae_batch=max(2 * clip.batch_size, 16))

    def build_chain(self, clip: ClipOptions, latents: LatentSession | None, note: Callable[[str], None],
                    on_step: Callable[[], None] | None = None) -> GeneratorChain:
        """The clip's generator: MuseTalk alone, or LatentSync with MuseTalk as its window-level
        fallback (on the PyTorch MuseTalk UNet, loaded only if a window falls back). Pasting is
        deferred to the encoder's thread (runtime/overlap.py)."""
        models = self.models
        parser = FaceParser(models["bisenet"])
        unet = models.runners.get("musetalk_unet") or models.pytorch_runner("musetalk_unet")
        musetalk = MuseTalkGenerator(models["vae_encoder"], models["vae_decoder"], unet, parser,
                                     batch_size=clip.batch_size, latents=latents, defer_paste=True)
        if self.kind == "musetalk" or clip.musetalk_only:
            return GeneratorChain(musetalk, None, allow_fallback=clip.fallback, note=note)
        if not models.has_unet3d and not clip.fallback:
            raise LatentmuseError(
                f"the LatentSync generator is unavailable: {models.unet3d_unavailable or 'no UNet3D runner was loaded'}.",
                "put latentsync_unet.pt into the weights folder (`latentmuse weights download`), "
                "or run without --no-fallback to use MuseTalk instead.",
            )
        primary = None
        if models.has_unet3d:
            primary = LatentSyncGenerator(models.runners, self.latentsync_settings(clip), on_step=on_step, defer_paste=True)
        unavailable = None if primary is not None else models.unet3d_unavailable or "no UNet3D runner was loaded"
        return GeneratorChain(primary, musetalk, unavailable=unavailable, primary_name="latentsync",
                              allow_fallback=clip.fallback, note=note)

    def close(self) -> None:
        if self.owned:
            self.models.close()
