"""Seeded random weights written in the official file formats.

Real weights cannot be fetched on every machine (CI, air-gapped build hosts). A folder of random
weights in the *official* layouts exercises exactly the code paths real files take: MuseTalk's json +
pickled ``unet.pth``, the VAE's pre-refactor attention key names, transformers' ``model.``-prefixed
whisper file, LatentSync's ``{"state_dict": ...}`` wrapper, and the face models' plain pickles. The
test-size configurations are recorded in the folder's ``latentmuse.json`` so loaders build the right
architecture. Outputs of such weights are meaningless pixels; only shapes and plumbing are real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .folder import Report, _quiet, folder_layouts
from .layouts import RANDOM_NOTE, ModelLayout, Sidecar, config_to_dict
from .smoke import randomise_zero_initialised

Size = Literal["tiny", "full"]


def write_random_weights(
    root: str | Path,
    *,
    size: Size = "tiny",
    seed: int = 0,
    models: Sequence[str] | None = None,
    report: Report = _quiet,
) -> list[Path]:
    """Write every model (or ``models``) of the table with seeded random weights; return the files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sidecar = Sidecar.read(root)
    sidecar.note = f"{RANDOM_NOTE} ({size}, seed {seed}): outputs are meaningless, for tests and demos only"
    written: list[Path] = []
    for index, entry in enumerate(folder_layouts(root, models)):
        module = entry.load_module()
        config = module.tiny_config() if size == "tiny" else module.full_config()
        torch.manual_seed(seed + index)
        model = module.build(config).eval()
        randomise_zero_initialised(model)
        files = _WRITERS.get(entry.key, _write_plain)(entry, root, model, config)
        if size == "tiny":
            sidecar.configs[entry.key] = config_to_dict(config)
        else:
            sidecar.configs.pop(entry.key, None)
        report(f"wrote {entry.title}: {', '.join(str(f.relative_to(root)) for f in files)}")
        written.extend(files)
    sidecar.write(root)
    return written


def _first_target(entry: ModelLayout, root: Path, suffix: str) -> Path:
    path = root / next(t for t in entry.targets if not t.endswith(".safetensors") and t.endswith(suffix))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_plain(entry: ModelLayout, root: Path, model: nn.Module, config: object) -> list[Path]:
    """A plain ``torch.save(state_dict)`` at the official file name (S3FD, BiSeNet, FAN's .pth.tar)."""
    path = _first_target(entry, root, "")
    if path.name.endswith(".zip"):  # FAN: write the state-dict release format next to it instead
        path = _first_target(entry, root, ".pth.tar")
    torch.save(model.state_dict(), path)
    return [path]


def _write_musetalk_unet(entry: ModelLayout, root: Path, model: nn.Module, config: object) -> list[Path]:
    path = _first_target(entry, root, ".pth")
    config_path = path.with_name("musetalk.json")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    torch.save(model.state_dict(), path)
    return [config_path, path]


def _write_vae(entry: ModelLayout, root: Path, model: nn.Module, config: object) -> list[Path]:
    """diffusers folder with the original file's pre-refactor attention names (query/key/value/proj_attn)."""
    folder = root / entry.targets[0]
    folder.mkdir(parents=True, exist_ok=True)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state_dict = {}
    for key, value in model.state_dict().items():
        for new, legacy in old.items():
            if ".mid_block.attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{legacy}.")
        state_dict[key] = value
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **config}, indent=2) + "\n")
    torch.save(state_dict, folder / "diffusion_pytorch_model.bin")
    return [folder / "config.json", folder / "diffusion_pytorch_model.bin"]


def _write_whisper(entry: ModelLayout, root: Path, model: nn.Module, config: object) -> list[Path]:
    """transformers folder: ``model.encoder.*`` keys (decoder weights omitted: we never load them)."""
    folder = root / entry.targets[0]
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {"model." + k: v for k, v in model.state_dict().items()}
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper", **config}, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(_WHISPER_PREPROCESSOR, indent=2) + "\n")
    torch.save(state_dict, folder / "pytorch_model.bin")
    return [folder / "config.json", folder / "pytorch_model.bin", folder / "preprocessor_config.json"]


def _write_unet3d(entry: ModelLayout, root: Path, model: nn.Module, config: object) -> list[Path]:
    path = _first_target(entry, root, ".pt")
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, path)
    return [path]


# whisper-tiny's preprocessor_config.json minus the 200 x 80 mel filter bank (recomputed on load).
_WHISPER_PREPROCESSOR = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 80,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "WhisperProcessor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}

_WRITERS: dict[str, Callable[[ModelLayout, Path, nn.Module, object], list[Path]]] = {
    "musetalk_unet": _write_musetalk_unet,
    "vae": _write_vae,
    "whisper": _write_whisper,
    "unet3d": _write_unet3d,
}
