"""The networks a run needs, as runners by role, each from the backend chosen for its graph.

A run declares the graphs it needs (:func:`run_graphs`: its generator's, the audio layout's, the face
front end's), and :class:`~latentmuse.runners.select.Selector` gives each an opened runner: TensorRT,
ONNX Runtime or PyTorch (docs/ARCHITECTURE.md). The model set maps *roles* (``unet3d``, ``vae_encoder``,
...) to runners, because a role's graph depends on the run (``unet3d_256`` with guidance, ``unet3d_256_b1``
without). Every network call goes through one of these runners, which owns its device and dtype
(the tests prove it by running every PyTorch runner in float64, where a tensor that met a module
directly fails on dtype exactly as it would fail on device on a GPU).

The MuseTalk generator behind LatentSync runs the *PyTorch* MuseTalk UNet (a window the UNet3D engine
fails on goes to the reference path), loaded only if a window actually falls back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LatentmuseError
from ..graphs.registry import ALL_GRAPHS
from ..models.layouts import LATENTSYNC_RESOLUTION, Sidecar, layout
from ..models.smoke import SMOKE, SMOKE_WARNING
from ..runners.base import Runner
from ..runners.select import Choice, EngineStore, Selector, TorchModels, engines_dir
from ..runners.torch_runner import torch_dtype

__all__ = ["SMOKE", "SMOKE_WARNING", "SYNC_ROLES", "ModelSet", "load_models", "load_torch_models", "resolve_device",
           "run_graphs", "syncnet_weights", "unet3d_weights"]

@dataclass
class ModelSet:
    """Runners by role, the choice behind each graph, and what a run needs to know about the weights.

    ``unet3d_unavailable`` says why the UNet3D runners are absent when they were asked for (missing
    file, failed load). The MuseTalk UNet that the PyTorch MuseTalk UNet the LatentSync run's
    fallback uses (:meth:`pytorch_runner`: a lazy runner, loading costs nothing until a window falls back).
    """

    runners: dict[str, Runner]
    weights_root: Path | None  # None for smoke weights
    latentsync_version: str = "1.5"
    unet3d_unavailable: str | None = None
    choices: dict[str, Choice] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # role -> graph
    torch_models: TorchModels | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def __getitem__(self, name: str) -> Runner:
        return self.runners[name]

    @property
    def has_unet3d(self) -> bool:
        return "unet3d" in self.runners or "unet3d_caching" in self.runners

    @property
    def native_resolution(self) -> int:
        """The crop size the folder's LatentSync version was trained at (1.5: 256, 1.6: 512)."""
        return LATENTSYNC_RESOLUTION[self.latentsync_version]

    def report(self) -> dict[str, dict]:
        """Per role: the graph, the backend it runs on, why, and what was skipped (the run report's ``runners``)."""
        out = {}
        for role, graph in self.roles.items():
            choice = self.choices.get(graph)
            if choice is not None:
                out[role] = {"graph": graph, **choice.as_dict()}
        if "musetalk_unet" not in self.roles and self.torch_models is not None:
            out["musetalk_unet (fallback)"] = {
                "graph": "musetalk_unet", "backend": "torch", "skipped": [],
                "reason": "LatentSync's fallback runs the PyTorch MuseTalk UNet "
                          + ("(loaded: a window fell back)" if "musetalk_unet" in self.torch_models.loaded
                             else "(not loaded: no window fell back)"),
            }
        return out

    def pytorch_runner(self, graph: str) -> Runner:
        """A PyTorch runner for ``graph`` on the run's device and dtype, loaded on its first call."""
        if self.torch_models is None:
            raise LatentmuseError(f"no PyTorch weights to run {graph} from.")
        return self.torch_models.runner(ALL_GRAPHS[graph], self.device, self.dtype)

    def close(self) -> None:
        for runner in self.runners.values():
            close = getattr(runner, "close", None)
            if close is not None:
                close()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatentmuseError(f"device {device} requested but torch sees no CUDA device.", "use --device cpu.")
    return torch.device(device)


def weights_version(weights: str | Path) -> str:
    """The folder's LatentSync version (smoke weights: 1.5)."""
    return "1.5" if str(weights) == SMOKE or not Path(weights).is_dir() else Sidecar.read(Path(weights)).latentsync_version


def unet3d_weights(weights: str | Path) -> Path | None:
    """The UNet3D checkpoint of a weights folder (None if absent); smoke weights always have one."""
    if str(weights) == SMOKE:
        return Path(SMOKE)
    root = Path(weights)
    if not root.is_dir():
        return None
    return layout("unet3d", Sidecar.read(root).latentsync_version).locate(root)


def syncnet_weights(weights: str | Path) -> Path | None:
    """SyncNet's checkpoint in a weights folder (None if absent); smoke weights have one."""
    if str(weights) == SMOKE:
        return Path(SMOKE)
    root = Path(weights)
    return layout("syncnet").locate(root) if root.is_dir() else None


#: The lip-sync score's two graphs (runtime/sync.py), by role.
SYNC_ROLES = {"syncnet_audio": "syncnet_audio", "syncnet_lip": "syncnet_lip"}


def face_graphs(face_detector: str) -> dict[str, str]:
    """Role -> graph of a face front end ("s3fd" or "dlib": dlib runs no graph)."""
    return {"s3fd": "s3fd_frames", "fan68": "fan68"} if face_detector == "s3fd" else {}


def run_graphs(kind: str, *, resolution: int = 256, guided: bool = True, deepcache: bool = False,
               face_detector: str = "dlib", sync: bool = False) -> dict[str, str]:
    """Role -> graph for a run of generator ``kind`` ("musetalk" or "latentsync"): what its generators
    declare (``graphs()``), Whisper's graphs, the S3FD front end's, and SyncNet's with ``sync``.

    A LatentSync run also declares its MuseTalk fallback's face parser and Whisper LayerNorm; the PyTorch
    MuseTalk UNet behind it is outside the selection (:meth:`ModelSet.pytorch_runner`).
    """
    from .generators.latentsync import LatentSyncGenerator, LatentSyncSettings
    from .generators.musetalk import MuseTalkGenerator

    roles = {"whisper_encoder": "whisper_encoder", "whisper_post_ln": "whisper_post_ln", **MuseTalkGenerator.graphs()}
    if kind == "latentsync":
        roles.pop("musetalk_unet")
        settings = LatentSyncSettings(resolution=resolution, guidance=2.0 if guided else 1.0, deepcache=deepcache)
        roles.update(LatentSyncGenerator.graphs(settings))
    roles.update(face_graphs(face_detector))
    if sync:
        roles.update(SYNC_ROLES)
    return roles


def load_models(
    weights: str | Path,
    device: torch.device,
    roles: Mapping[str, str],
    *,
    seed: int = 0,
    backend: str = "torch",
    engines: str | Path | None = None,
    precision: str = "auto",
    dtype: torch.dtype | None = None,
    note: Callable[[str], None] = lambda message: None,
    selector: Selector | None = None,
    trust_torchscript: str | Path | None = None,
) -> ModelSet:
    """Runners for ``roles`` (see :func:`run_graphs`) from the chosen backend per graph.

    ``weights`` is a folder or ``"smoke"`` (PyTorch weights are read only by a PyTorch runner's first
    call). A UNet3D that cannot be had (no file; its PyTorch load failing) is recorded in
    ``unet3d_unavailable``, not raised: the MuseTalk generator serves those windows instead. ``dtype``
    overrides ``precision`` for PyTorch runners (float64 in tests). ``trust_torchscript`` is the FAN
    TorchScript archive the user vouches for (``--trust-torchscript``; otherwise only the pinned release).
    """
    root = None
    if str(weights) != SMOKE:
        root = Path(weights)
        if not root.is_dir():
            raise LatentmuseError(
                f"weights folder {root} does not exist.",
                "run `latentmuse weights download --dir DIR`, or pass --weights smoke for a plumbing test.",
            )
    if selector is None:
        store = None if backend == "torch" else EngineStore(engines_dir(engines), weights, seed)
        selector = Selector(backend, device, dtype or torch_dtype(precision, device), store,
                            TorchModels(weights, seed, trust_torchscript), note)
    models = ModelSet({}, root, weights_version(weights), choices=selector.choices, torch_models=selector.torch_models,
                      device=selector.device, dtype=selector.dtype)
    models.roles = dict(roles)
    for role, graph in roles.items():
        if ALL_GRAPHS[graph].model_key == "unet3d":
            continue
        models.runners[role] = selector.select(graph)
        if models.runners[role].backend == "torch":
            selector.torch_models.require(ALL_GRAPHS[graph].model_key)  # missing file: an error before any work
    unet_roles = {r: g for r, g in roles.items() if ALL_GRAPHS[g].model_key == "unet3d"}
    if unet_roles:
        models.unet3d_unavailable = _unet3d_runners(models, unet_roles, selector, weights)
    return models


def _unet3d_runners(models: ModelSet, roles: Mapping[str, str], selector: Selector, weights) -> str | None:
    """Select the UNet3D roles; the reason they are unavailable (None when they are there)."""
    path = unet3d_weights(weights)
    runners = {role: selector.select(graph) for role, graph in roles.items()}
    torch_ones = [r for r in runners.values() if r.backend == "torch"]
    if torch_ones:
        if path is None:
            entry = layout("unet3d", weights_version(weights))
            for graph in roles.values():
                selector.choices.pop(graph, None)
            return f"UNet3D weights not found ({' or '.join(entry.targets)} in {weights})"
        try:
            torch_ones[0].open()  # the PyTorch UNet3D loads now: a failure is a fallback reason, not an abort
        except Exception as exc:  # noqa: BLE001 - any load failure (bad pickle, zip, keys)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            for graph in roles.values():
                selector.choices.pop(graph, None)
            return f"UNet3D failed to load from {path}: {first}"
    models.runners.update(runners)
    return None


def load_torch_models(
    weights: str | Path,
    device: torch.device,
    seed: int = 0,
    *,
    unet3d: bool = True,
    dtype: torch.dtype = torch.float32,
    resolution: int | None = None,
    guided: bool = True,
    deepcache: bool = False,
) -> ModelSet:
    """Every runner on PyTorch (tests): the MuseTalk roles, plus LatentSync's with ``unet3d`` (at
    ``resolution``, default the weights' native one)."""
    roles = run_graphs("musetalk")
    if unet3d:
        res = resolution or LATENTSYNC_RESOLUTION[weights_version(weights)]
        roles.update({k: v for k, v in run_graphs("latentsync", resolution=res, guided=guided,
                                                   deepcache=deepcache).items() if k not in roles})
    return load_models(weights, device, roles, seed=seed, backend="torch", dtype=dtype)
