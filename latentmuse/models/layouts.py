"""The official weight files of every network: where they come from and where they live locally.

One table shared by ``weights download``, ``weights check``, ``weights convert`` and the loaders, so a
file name is written down exactly once. The local folder mirrors MuseTalk's ``models/`` tree (so an
existing MuseTalk install can be pointed at directly) plus a ``latentsync/`` folder.

A weights folder may also hold ``latentmuse.json``: the LatentSync version it was downloaded for and,
for folders of test-size weights, the configuration of each model (official files carry no config
for most of these networks, and a strict loader must be told which architecture to expect).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import LatentmuseError

SIDECAR = "latentmuse.json"
#: How ``weights random`` begins the sidecar's note (:attr:`Sidecar.random`).
RANDOM_NOTE = "random weights"
#: Where commands look for weights unless told otherwise.
WEIGHTS_ENV = "LATENTMUSE_WEIGHTS"
LATENTSYNC_REPOS = {"1.5": "ByteDance/LatentSync-1.5", "1.6": "ByteDance/LatentSync-1.6"}
LATENTSYNC_RESOLUTION = {"1.5": 256, "1.6": 512}


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository and its place under the local weights folder.

    ``alternatives`` are other names of the same weights in the repository, tried in order when the
    first is absent (safetensors first: it cannot carry code). ``sha256`` pins files whose publishers
    put the hash in the name (face-alignment's releases).
    """

    repo_id: str
    filename: str
    local: str
    alternatives: tuple[str, ...] = ()
    sha256: str | None = None


@dataclass(frozen=True)
class ModelLayout:
    key: str
    title: str
    module: str
    #: Local paths (relative to the weights folder) handed to the loader, in order of preference.
    #: A folder means the loader picks the file inside (diffusers / transformers layouts).
    targets: tuple[str, ...]
    files: tuple[HubFile, ...]
    needed_for: str
    optional: bool = False

    @property
    def weights_file(self) -> HubFile:
        """The file holding the weights (the others are configs)."""
        return next(f for f in self.files if not f.local.endswith(".json"))

    def load_module(self) -> ModuleType:
        return importlib.import_module(self.module)

    def locate(self, root: Path) -> Path | None:
        """The first target present under ``root`` (a folder counts only if it has a weights file)."""
        for rel in self.targets:
            path = root / rel
            if path.is_file() or (path.is_dir() and _has_weights(path)):
                return path
        return None


def _has_weights(folder: Path) -> bool:
    return any(p.suffix in (".safetensors", ".bin", ".pt", ".pth") for p in folder.iterdir())


def default_weights_dir() -> Path:
    """``$LATENTMUSE_WEIGHTS`` or ``./weights``."""
    return Path(os.environ.get(WEIGHTS_ENV, "weights"))


def layouts(latentsync_version: str = "1.5") -> tuple[ModelLayout, ...]:
    """The table, with the LatentSync UNet3D taken from the repository of ``latentsync_version``."""
    if latentsync_version not in LATENTSYNC_REPOS:
        raise LatentmuseError(
            f"unknown LatentSync version {latentsync_version!r}.", f"use one of {', '.join(LATENTSYNC_REPOS)}."
        )
    return (
        ModelLayout(
            "musetalk_unet", "MuseTalk 1.5 UNet", "latentmuse.models.musetalk_unet",
            ("musetalkV15/unet.safetensors", "musetalkV15/unet.pth"),
            (
                HubFile("TMElyralab/MuseTalk", "musetalkV15/musetalk.json", "musetalkV15/musetalk.json"),
                HubFile("TMElyralab/MuseTalk", "musetalkV15/unet.pth", "musetalkV15/unet.pth"),
            ),
            "MuseTalk generator, fallback",
        ),
        ModelLayout(
            "vae", "VAE (sd-vae-ft-mse)", "latentmuse.models.vae",
            ("sd-vae",),
            (
                HubFile("stabilityai/sd-vae-ft-mse", "config.json", "sd-vae/config.json"),
                HubFile(
                    "stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors",
                    "sd-vae/diffusion_pytorch_model.safetensors", alternatives=("diffusion_pytorch_model.bin",),
                ),
            ),
            "both generators",
        ),
        ModelLayout(
            "whisper", "Whisper-tiny encoder", "latentmuse.models.whisper",
            ("whisper",),
            (
                HubFile("openai/whisper-tiny", "config.json", "whisper/config.json"),
                HubFile("openai/whisper-tiny", "model.safetensors", "whisper/model.safetensors",
                        alternatives=("pytorch_model.bin",)),
                HubFile("openai/whisper-tiny", "preprocessor_config.json", "whisper/preprocessor_config.json"),
            ),
            "audio features",
        ),
        ModelLayout(
            "unet3d", "LatentSync UNet3D", "latentmuse.models.unet3d",
            ("latentsync/latentsync_unet.safetensors", "latentsync/latentsync_unet.pt"),
            (HubFile(LATENTSYNC_REPOS[latentsync_version], "latentsync_unet.pt", "latentsync/latentsync_unet.pt"),),
            "LatentSync generator",
            optional=True,
        ),
        ModelLayout(
            "s3fd", "S3FD face detector", "latentmuse.models.s3fd",
            ("face-detection/s3fd-619a316812.safetensors", "face-detection/s3fd-619a316812.pth"),
            (
                HubFile(
                    "vinthony/SadTalker", "hub/checkpoints/s3fd-619a316812.pth", "face-detection/s3fd-619a316812.pth",
                    sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
                ),
            ),
            "s3fd face front end",
            optional=True,
        ),
        ModelLayout(
            "fan68", "FAN 68-point landmarks (2DFAN4)", "latentmuse.models.fan",
            ("face-detection/2DFAN4-cd938726ad.safetensors", "face-detection/2DFAN4-cd938726ad.zip",
             "face-detection/2DFAN4-11f355bf06.pth.tar"),
            (
                HubFile(
                    "vinthony/SadTalker", "hub/checkpoints/2DFAN4-cd938726ad.zip", "face-detection/2DFAN4-cd938726ad.zip",
                    sha256="cd938726adb1f15f361263cce2db9cb820c42585fa8796ec72ce19107f369a46",
                ),
            ),
            "s3fd face front end",
            optional=True,
        ),
        ModelLayout(
            "bisenet", "BiSeNet face parsing", "latentmuse.models.bisenet",
            ("face-parse-bisent/79999_iter.safetensors", "face-parse-bisent/79999_iter.pth"),
            (HubFile("vivym/face-parsing-bisenet", "79999_iter.pth", "face-parse-bisent/79999_iter.pth"),),
            "MuseTalk blending",
        ),
        # The 1.5 repository for both LatentSync versions: the scorer is the same network whichever
        # generator it judges.
        ModelLayout(
            "syncnet", "SyncNet v2 (lip-sync score)", "latentmuse.models.syncnet",
            ("auxiliary/syncnet_v2.safetensors", "auxiliary/syncnet_v2.model"),
            (HubFile(LATENTSYNC_REPOS["1.5"], "auxiliary/syncnet_v2.model", "auxiliary/syncnet_v2.model"),),
            "lip-sync score (LSE-C / LSE-D)",
            optional=True,
        ),
    )


def layout(key: str, latentsync_version: str = "1.5") -> ModelLayout:
    for entry in layouts(latentsync_version):
        if entry.key == key:
            return entry
    raise KeyError(key)


@dataclass
class Sidecar:
    """Contents of ``latentmuse.json`` in a weights folder."""

    latentsync_version: str = "1.5"
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""

    @classmethod
    def read(cls, root: Path) -> Sidecar:
        path = root / SIDECAR
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(
                latentsync_version=str(data.get("latentsync_version", "1.5")),
                configs=dict(data.get("configs", {})),
                note=str(data.get("note", "")),
            )
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise LatentmuseError(f"{path} is not valid: {exc}.", f"fix or delete {path}.") from None

    @property
    def random(self) -> bool:
        """Whether ``weights random`` wrote the folder (its note says so): its outputs mean nothing."""
        return self.note.startswith(RANDOM_NOTE)

    def write(self, root: Path) -> None:
        data = {"latentsync_version": self.latentsync_version, "configs": self.configs, "note": self.note}
        (root / SIDECAR).write_text(json.dumps(data, indent=2) + "\n")


def config_to_dict(config: object) -> dict[str, Any]:
    """A model config (dict or frozen dataclass) as plain JSON-able data."""
    if is_dataclass(config) and not isinstance(config, type):
        return json.loads(json.dumps(asdict(config)))
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config)))
    raise TypeError(f"unsupported config type {type(config).__name__}")


def config_from_dict(module: ModuleType, data: Mapping[str, Any]) -> object:
    """Rebuild a config of ``module``'s kind (dict or dataclass) from :func:`config_to_dict` data."""
    reference = module.full_config()
    if is_dataclass(reference):
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return type(reference)(**fields)
    return dict(data)
