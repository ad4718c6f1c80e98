"""Reading checkpoints safely and loading them strictly.

Two failure modes of the original projects shape this module:

* pickled checkpoints run code when loaded carelessly, so pickles are read with
  ``torch.load(weights_only=True)`` and a pickle that needs code is refused with a message;
* LatentSync's loader uses ``strict=False`` and silently keeps random weights for every key that does
  not match, so here a mismatch is always an error that lists the missing, unexpected and wrong-shape
  keys (the first few of each, with counts).

Models are built on the ``meta`` device and the checkpoint tensors are *assigned* into them, so a
5 GB UNet3D is never initialised randomly and never held twice in memory.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from ..errors import CheckpointError

ModuleT = TypeVar("ModuleT", bound=nn.Module)
StateDict = dict[str, torch.Tensor]

#: File suffixes read with safetensors; everything else goes through ``torch.load(weights_only=True)``.
SAFETENSORS_SUFFIXES = (".safetensors",)


def find_weights_file(folder: Path, filenames: Sequence[str], *, name: str, fix: str) -> Path:
    """The first of ``filenames`` present in a diffusers/transformers-style model folder."""
    for filename in filenames:
        if (folder / filename).is_file():
            return folder / filename
    raise CheckpointError(f"{name}: no weights in {folder} (looked for {' or '.join(filenames)}).", fix)


def read_checkpoint(path: str | Path) -> object:
    """Read a checkpoint file safely: safetensors, or a pickle through ``weights_only``.

    Returns the stored object (usually a dict); :func:`read_state_dict` narrows it to weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.", "check the path or run `latentmuse weights download`.")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    return _read_pickle(path)


def read_state_dict(path: str | Path, *, unwrap: Sequence[str] = ("state_dict",)) -> StateDict:
    """Read a flat ``name -> tensor`` mapping from a safetensors file or a (safe) pickle.

    ``unwrap`` names container keys to descend into when the file holds a dict around the weights
    (LatentSync saves ``{"state_dict": ..., "global_step": ...}``).
    """
    return as_state_dict(read_checkpoint(path), source=path, unwrap=unwrap)


def as_state_dict(obj: object, *, source: str | Path, unwrap: Sequence[str] = ("state_dict",)) -> StateDict:
    """Narrow a loaded checkpoint object to its ``name -> tensor`` weights, or say why it is not one."""
    for key in unwrap:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {source} holds a {type(obj).__name__}, not a state dict.",
            "save the model's state_dict() (a mapping of names to tensors).",
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} has {len(bad)} entries that are not tensors (first: {bad[0]!r}).",
            "save the model's state_dict() only.",
        )
    return dict(obj)


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}.", "download the file again.") from None


def _read_pickle(path: Path) -> object:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Legacy (non-zip) torch.save files cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused is None:  # not a code-carrying pickle: just not a valid checkpoint
            raise CheckpointError(f"cannot read checkpoint {path}: not a valid torch checkpoint.", "download the file again.") from None
        raise CheckpointError(
            f"refusing to load {path}: the pickle needs code to load ({refused.group(1)}), which could run "
            "arbitrary commands.",
            "use the official file, or convert it to safetensors in an environment you trust "
            "(`latentmuse weights convert`).",
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in the unpickler in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}.", "download the file again.") from None


@dataclass(frozen=True)
class StateDictDiff:
    """How a checkpoint's keys and shapes differ from what an architecture expects."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def summary(self, limit: int = 3) -> str:
        """One line: counts and the first ``limit`` keys of each kind of mismatch."""
        parts = []
        if self.missing:
            parts.append(f"{_count(self.missing, 'missing key')} ({_first(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{_count(self.unexpected, 'unexpected key')} ({_first(self.unexpected, limit)})")
        if self.wrong_shape:
            shown = [f"{k}: expected {list(e)}, got {list(g)}" for k, e, g in self.wrong_shape]
            parts.append(f"{_count(self.wrong_shape, 'wrong-shape key')} ({_first(shown, limit)})")
        return "; ".join(parts) if parts else "no differences"


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _first(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of a state dict (works on meta tensors)."""
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def diff_state_dict(
    expected: Mapping[str, Sequence[int]], actual: Mapping[str, Sequence[int] | torch.Tensor]
) -> StateDictDiff:
    """Compare two ``name -> shape`` mappings (tensors are accepted for ``actual``)."""

    def shape(v: Sequence[int] | torch.Tensor) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    missing = tuple(k for k in expected if k not in actual)
    unexpected = tuple(k for k in actual if k not in expected)
    wrong = tuple(
        (k, tuple(expected[k]), shape(actual[k]))
        for k in expected
        if k in actual and tuple(expected[k]) != shape(actual[k])
    )
    return StateDictDiff(missing, unexpected, wrong)


def build_on_meta(factory: Callable[[], ModuleT]) -> ModuleT:
    """Build a module without allocating or initialising its weights."""
    with torch.device("meta"):
        return factory()


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (buffers excluded), as the reference lists count them."""
    return sum(p.numel() for p in module.parameters())


def load_strict(
    module: ModuleT,
    state_dict: Mapping[str, torch.Tensor],
    *,
    name: str,
    source: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> ModuleT:
    """Load ``state_dict`` into ``module`` (usually built on meta) or raise one readable error.

    The tensors are assigned, not copied, so a module built on the meta device becomes a real one.
    The result is in eval mode with gradients off: every user of these models does inference.
    """
    diff = diff_state_dict(shapes_of(module.state_dict()), state_dict)
    if diff:
        raise CheckpointError(
            f"{name} checkpoint {source} does not match the architecture: {diff.summary()}.",
            "use the official file for this model and version (see `latentmuse weights check`).",
        )
    module.load_state_dict(state_dict, strict=True, assign=True)
    leftover = [n for n, t in _named_tensors(module) if t.is_meta]
    if leftover:  # a non-persistent buffer the checkpoint cannot carry: a bug in the definition
        raise RuntimeError(f"{name}: tensors left uninitialised after loading: {leftover[:3]}")
    if dtype is not None or device is not None:
        module.to(device=device, dtype=dtype)
    return module.eval().requires_grad_(False)


def _named_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors, atomically (a ``.partial`` file renamed into place).

    safetensors refuses tensors that share storage; only those are copied, so converting a 5 GB
    checkpoint does not need a second 5 GB in memory.
    """
    from safetensors.torch import save_file

    path = Path(path)
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().to("cpu").contiguous()
        storage = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
        tensors[key] = value.clone() if storage in seen else value
        seen.add(storage)
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
