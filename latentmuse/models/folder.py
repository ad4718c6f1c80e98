"""A local weights folder: download it, check it, convert its pickles, or fill it with random weights.

Everything here reads the one table in :mod:`latentmuse.models.layouts`. Downloads go through
``huggingface_hub`` (resumable: an interrupted file continues where it stopped) and only when the
user asks; loading never touches the network.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import LatentmuseError
from ..files import sha256_files
from .checkpoint import build_on_meta, count_parameters, save_safetensors
from .layouts import HubFile, ModelLayout, Sidecar, config_from_dict, layout, layouts

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def folder_layouts(root: Path, models: Sequence[str] | None = None) -> tuple[ModelLayout, ...]:
    """The table for this folder (its LatentSync version), optionally restricted to ``models``."""
    table = layouts(Sidecar.read(root).latentsync_version)
    if models is None:
        return table
    known = {entry.key for entry in table}
    unknown = [m for m in models if m not in known]
    if unknown:
        raise LatentmuseError(f"unknown model {unknown[0]!r}.", f"use one of {', '.join(sorted(known))}.")
    return tuple(entry for entry in table if entry.key in models)


def require_file(root: str | Path, key: str) -> Path:
    """The weights file of model ``key`` in ``root``; a LatentmuseError naming the expected path if absent.

    Cheap (no loading): a run checks every PyTorch runner's file before it starts, since the modules
    themselves load lazily on first use."""
    root = Path(root)
    (entry,) = folder_layouts(root, [key])
    path = entry.locate(root)
    if path is None:
        raise LatentmuseError(
            f"{entry.title}: {' or '.join(entry.targets)} not found in {root}.",
            f"run `latentmuse weights download --dir {root}` or copy the file there.",
        )
    return path


def load_model(
    root: str | Path, key: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
    trust_torchscript: str | Path | None = None,
) -> nn.Module:
    """Load one model from a weights folder, strictly, with the folder's recorded config if any.

    ``trust_torchscript`` is the one TorchScript archive the user vouches for (``--trust-torchscript``);
    it reaches the FAN loader, the only model released as TorchScript (see :mod:`.fan`)."""
    root = Path(root)
    (entry,) = folder_layouts(root, [key])
    path = require_file(root, key)
    module = entry.load_module()
    data = Sidecar.read(root).configs.get(key)
    config = config_from_dict(module, data) if data is not None else None
    extra = {"trust_torchscript": trust_torchscript} if key == "fan68" and trust_torchscript is not None else {}
    return module.load(path, config, dtype=dtype, device=device, **extra)


@lru_cache(maxsize=None)
def released_parameters(key: str) -> int:
    """Parameter count of the released architecture (built on meta; cached)."""
    module = layout(key).load_module()
    return count_parameters(build_on_meta(module.build))


# --------------------------------------------------------------------------------------------- check


@dataclass(frozen=True)
class CheckRow:
    key: str
    title: str
    path: Path | None
    loads: bool
    parameters: int | None
    released: bool | None
    message: str
    optional: bool


def check_folder(root: str | Path, models: Sequence[str] | None = None, report: Report = _quiet) -> list[CheckRow]:
    """Find and strictly load every model of the folder; one row per model, errors captured."""
    root = Path(root)
    if not root.is_dir():
        raise LatentmuseError(f"weights folder {root} does not exist.", "pass the folder `weights download` wrote.")
    rows = []
    for entry in folder_layouts(root, models):
        path = entry.locate(root)
        if path is None:
            rows.append(CheckRow(entry.key, entry.title, None, False, None, None,
                                 f"{entry.weights_file.local} ({entry.needed_for})", entry.optional))
            continue
        report(f"loading {entry.title} from {path}")
        try:
            model = load_model(root, entry.key)
        except LatentmuseError as exc:
            rows.append(CheckRow(entry.key, entry.title, path, False, None, None, str(exc), entry.optional))
            continue
        n = count_parameters(model)
        released = n == released_parameters(entry.key)
        note = "released architecture" if released else f"test size (released: {released_parameters(entry.key):,})"
        rows.append(CheckRow(entry.key, entry.title, path, True, n, released, note, entry.optional))
        del model
    return rows


# ------------------------------------------------------------------------------------------ download


@dataclass(frozen=True)
class Fetched:
    local: Path
    source: str
    action: str  # "downloaded" | "present"
    bytes: int


class HubClient:
    """Fetches one file of a hub repository into a staging folder (``huggingface_hub``, resumable)."""

    def __init__(self, endpoint: str | None = None, token: str | bool | None = None) -> None:
        self.endpoint = endpoint
        self.token = token

    def fetch(self, repo_id: str, filename: str, staging: Path) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(repo_id, filename, local_dir=staging, endpoint=self.endpoint, token=self.token)
        )


def download(
    root: str | Path,
    *,
    latentsync_version: str = "1.5",
    models: Sequence[str] | None = None,
    client: HubClient | None = None,
    verify: bool = True,
    report: Report = _quiet,
) -> list[Fetched]:
    """Fetch the official files into ``root`` (skipping those present), then check each loads.

    Partial downloads live under ``root/.downloads`` and resume on the next run.
    """
    from huggingface_hub import errors as hub_errors

    # The hub answered "no such file" (try the next name); LocalEntryNotFoundError instead means the hub
    # could not be reached at all, which is a network error below.
    not_found = getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sidecar = Sidecar.read(root)
    sidecar.latentsync_version = latentsync_version
    sidecar.write(root)
    client = client or HubClient()
    staging = root / ".downloads"
    fetched: list[Fetched] = []
    entries = folder_layouts(root, models)
    for entry in entries:
        for hub_file in entry.files:
            existing = _present(root, hub_file)
            if existing is not None:
                _verify_sha(existing, hub_file)
                fetched.append(Fetched(existing, _source(hub_file, existing.name), "present", existing.stat().st_size))
                report(f"present     {existing}")
                continue
            last_error: Exception | None = None
            for name in (hub_file.filename, *hub_file.alternatives):
                report(f"fetching    {hub_file.repo_id}/{name}")
                try:
                    staged = client.fetch(hub_file.repo_id, name, staging / hub_file.repo_id)
                except not_found as exc:
                    if isinstance(exc, hub_errors.LocalEntryNotFoundError):
                        raise _unreachable(hub_file, name, exc) from None
                    last_error = exc
                    continue
                except Exception as exc:  # noqa: BLE001 - network failures come in many types
                    raise _unreachable(hub_file, name, exc) from None
                target = root / _local_name(hub_file, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(staged), target)
                _verify_sha(target, hub_file)
                fetched.append(Fetched(target, _source(hub_file, name), "downloaded", target.stat().st_size))
                report(f"downloaded  {target} ({target.stat().st_size / 1e6:.1f} MB)")
                break
            else:
                detail = str(last_error).strip().splitlines()[0] if last_error else "not found"
                raise LatentmuseError(
                    f"{hub_file.repo_id} has none of {', '.join((hub_file.filename, *hub_file.alternatives))} ({detail}).",
                    "the repository layout changed; copy the file into the weights folder by hand.",
                )
    shutil.rmtree(staging, ignore_errors=True)
    if verify:
        for row in check_folder(root, [e.key for e in entries], report):
            if not row.loads:
                raise LatentmuseError(f"downloaded {row.title} does not load: {row.message}", "delete the file and download again.")
    return fetched


def _unreachable(hub_file: HubFile, name: str, exc: Exception) -> LatentmuseError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LatentmuseError(
        f"could not fetch {hub_file.repo_id}/{name}: {first}.",
        "check the network (or HF_ENDPOINT / HF_TOKEN) and run the command again: "
        "finished files are kept and partial ones resume.",
    )


def _local_name(hub_file: HubFile, name: str) -> str:
    return str(Path(hub_file.local).with_name(Path(name).name))


def _present(root: Path, hub_file: HubFile) -> Path | None:
    for name in (hub_file.filename, *hub_file.alternatives):
        path = root / _local_name(hub_file, name)
        if path.is_file():
            return path
    return None


def _source(hub_file: HubFile, name: str) -> str:
    return f"{hub_file.repo_id}/{name}"


def _verify_sha(path: Path, hub_file: HubFile) -> None:
    if hub_file.sha256 is None:
        return
    digest = sha256_files(path)
    if digest != hub_file.sha256:
        raise LatentmuseError(
            f"{path} has sha256 {digest[:12]}..., expected {hub_file.sha256[:12]}....",
            f"delete {path} and download again.",
        )


# ------------------------------------------------------------------------------------------- convert


def convert(root: str | Path, models: Sequence[str] | None = None, report: Report = _quiet,
            trust_torchscript: str | Path | None = None) -> list[Path]:
    """Write a safetensors copy of every pickled checkpoint in the folder; loaders prefer it afterwards.

    Each model is first loaded strictly through its own loader (pickles with ``weights_only``, FAN's
    TorchScript archive through ``torch.jit`` when it is the pinned release or ``trust_torchscript``
    names it), so only weights that are known to be right are written, under the names the loaders look
    for first. After that the TorchScript archive is never opened again.
    """
    root = Path(root)
    written = []
    for entry in folder_layouts(root, models):
        path = entry.locate(root)
        if path is None:
            continue
        target = _safetensors_target(entry, root, path)
        if target is None:
            report(f"skip  {entry.title}: already safetensors ({path})")
            continue
        model = load_model(root, entry.key, trust_torchscript=trust_torchscript)
        save_safetensors(model.state_dict(), target, metadata={"converted_from": str(path.relative_to(root))})
        report(f"wrote {target}")
        written.append(target)
    return written


_FOLDER_SAFETENSORS = {"vae": "diffusion_pytorch_model.safetensors", "whisper": "model.safetensors"}


def _safetensors_target(entry: ModelLayout, root: Path, located: Path) -> Path | None:
    """Where the safetensors copy goes, or None when ``located`` already is safetensors."""
    if located.is_dir():
        if any(p.suffix == ".safetensors" for p in located.iterdir()):
            return None
        return located / _FOLDER_SAFETENSORS[entry.key]
    if located.suffix == ".safetensors":
        return None
    return root / next(t for t in entry.targets if t.endswith(".safetensors"))
