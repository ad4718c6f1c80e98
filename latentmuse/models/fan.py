"""FAN (2DFAN-4), face-alignment's stacked-hourglass 68-point landmark network.

The definition follows ``face_alignment/models/fan.py`` (``FAN(num_modules=4)``): a stride-4 stem,
four stacked hourglasses of depth 4 built from the multi-scale ``ConvBlock``, and a 68-channel heatmap
head per stack. For a 256x256 crop every head gives (B, 68, 64, 64) heatmaps; the last is the one used.

The weights were released in two formats, and ``load`` reads both:

* ``2DFAN4-11f355bf06.pth.tar`` (face-alignment <= 1.2, and again 1.5.0 of April 2026, which
  dropped TorchScript for ``torch.compile``): a pickled state dict, read with
  ``torch.load(weights_only=True)`` (also accepted wrapped in ``{"state_dict": ...}`` and/or with a
  ``module.`` prefix);
* ``2DFAN4-cd938726ad.zip`` (face-alignment 1.3.0-1.4.1, 2020-2023; torch 1.5/1.6 got per-version zips
  of the same kind): a TorchScript archive. It is opened with ``torch.jit.load`` only to take its
  ``state_dict()``; its forward is never called.

A TorchScript archive is code, not data, so it is loaded only when it is the released file: its
sha256 must be :data:`TORCHSCRIPT_SHA256` (the full digest of ``2DFAN4-cd938726ad.zip``, 96,316,515
bytes, whose first ten hex digits are the ``cd938726ad`` in its name, torch.hub's convention; the
same digest is published beside the download scripts of the projects that fetch it and by the hub
mirror ``weights download`` uses, which checks it too). Any other archive is refused unless the user
names that very file with ``--trust-torchscript FILE`` (:func:`read_torchscript_state_dict`), or
converts it once to safetensors (``latentmuse weights convert``; docs/SECURITY.md). The pin is the
guarantee; the rest is defence in depth: TorchScript code is a restricted compiled language with no
access to Python modules such as ``os``, and the archive's pickles are read by the C++ unpickler,
which only rebuilds tensors and TorchScript types and refuses any other global (a crafted
``os.system`` reference fails with "Unknown type name"; see the tests).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..files import sha256_files
from .checkpoint import StateDict, build_on_meta, load_strict, read_state_dict
from .layouts import layout

#: Names of the released weights files (pickled state dict, TorchScript archive).
OFFICIAL_FILENAMES = ("2DFAN4-11f355bf06.pth.tar", "2DFAN4-cd938726ad.zip")

#: sha256 of the released TorchScript archive, the one :func:`read_torchscript_state_dict` opens
#: without being told to trust it: the digest the weights table records for ``2DFAN4-cd938726ad.zip``
#: (``weights download`` checks downloads against the same value).
TORCHSCRIPT_SHA256: str = next(f.sha256 for f in layout("fan68").files if f.local.endswith(OFFICIAL_FILENAMES[1]))


@dataclass(frozen=True)
class FANConfig:
    """Sizes of the network; the building blocks and their wiring are fixed.

    ``stem_width`` is the 7x7 stem convolution, ``mid_width`` the first two stem ConvBlocks,
    ``features`` the hourglass width (both widths must be multiples of 4: a ConvBlock splits its
    output into halves and quarters). ``num_stacks`` hourglasses of ``hourglass_depth`` levels each
    predict ``num_landmarks`` heatmaps.
    """

    num_stacks: int = 4
    hourglass_depth: int = 4
    num_landmarks: int = 68
    stem_width: int = 64
    mid_width: int = 128
    features: int = 256

    def __post_init__(self) -> None:
        if self.mid_width % 4 or self.features % 4:
            raise ValueError("FANConfig: mid_width and features must be multiples of 4.")

    @classmethod
    def full(cls) -> FANConfig:
        """2DFAN-4 as released (23,820,176 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> FANConfig:
        """Same depth and heads, widths divided by 8 and two stacks (still exercises the inter-stack links)."""
        return cls(num_stacks=2, stem_width=8, mid_width=16, features=32)


def full_config() -> FANConfig:
    return FANConfig.full()


def tiny_config() -> FANConfig:
    return FANConfig.tiny()


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation multi-scale residual block (Bulat & Tzimiropoulos, 2017).

    Three chained 3x3 convolutions produce out/2, out/4 and out/4 channels; their concatenation
    (receptive fields 3, 5 and 7) is the residual. The shortcut is a BN-ReLU-1x1 projection when the
    width changes.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half, quarter = cout // 2, cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        self.downsample: nn.Sequential | None = None
        if cin != cout:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel_size=1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), dim=1) + shortcut


class HourGlass(nn.Module):
    """Recursive hourglass: at each level, a full-resolution branch plus a pooled branch that recurses.

    Submodules are named ``b1_<level>``, ``b2_<level>``, ``b3_<level>`` and ``b2_plus_1`` (the
    bottleneck) and registered in the original's depth-first order, so the state dict matches.
    """

    def __init__(self, depth: int, features: int) -> None:
        super().__init__()
        self.depth = depth
        self._register(depth, features)

    def _register(self, level: int, features: int) -> None:
        self.add_module(f"b1_{level}", ConvBlock(features, features))
        self.add_module(f"b2_{level}", ConvBlock(features, features))
        if level > 1:
            self._register(level - 1, features)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(features, features))
        self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up = self.get_submodule(f"b1_{level}")(x)
        low = self.get_submodule(f"b2_{level}")(F.avg_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self.get_submodule(f"b2_plus_{level}")(low)
        low = self.get_submodule(f"b3_{level}")(low)
        return up + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class FAN(nn.Module):
    """Stacked-hourglass landmark network. ``forward`` returns one heatmap tensor per stack.

    The list (not only the last tensor) is what the original ``FAN`` returns; ``heatmaps`` returns
    the last stack's (B, landmarks, H/4, W/4) maps, the only ones used at inference. Stack ``i``
    (all but the last) feeds ``bl<i>(features) + al<i>(heatmaps)`` back into the next stack's input.
    """

    def __init__(self, config: FANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FANConfig.full()
        f, n = config.features, config.num_landmarks
        self.conv1 = nn.Conv2d(3, config.stem_width, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.conv2 = ConvBlock(config.stem_width, config.mid_width)
        self.conv3 = ConvBlock(config.mid_width, config.mid_width)
        self.conv4 = ConvBlock(config.mid_width, f)
        for i in range(config.num_stacks):
            self.add_module(f"m{i}", HourGlass(config.hourglass_depth, f))
            self.add_module(f"top_m_{i}", ConvBlock(f, f))
            self.add_module(f"conv_last{i}", nn.Conv2d(f, f, kernel_size=1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(f))
            self.add_module(f"l{i}", nn.Conv2d(f, n, kernel_size=1))
            if i < config.num_stacks - 1:
                self.add_module(f"bl{i}", nn.Conv2d(f, f, kernel_size=1))
                self.add_module(f"al{i}", nn.Conv2d(n, f, kernel_size=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: (B, 3, 256, 256) RGB in [0, 1], the face crop; returns ``num_stacks`` heatmap tensors."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        previous = self.conv4(self.conv3(x))

        outputs = []
        for i in range(self.config.num_stacks):
            ll = self.get_submodule(f"top_m_{i}")(self.get_submodule(f"m{i}")(previous))
            ll = F.relu(self.get_submodule(f"bn_end{i}")(self.get_submodule(f"conv_last{i}")(ll)))
            heatmaps = self.get_submodule(f"l{i}")(ll)
            outputs.append(heatmaps)
            if i < self.config.num_stacks - 1:
                previous = previous + self.get_submodule(f"bl{i}")(ll) + self.get_submodule(f"al{i}")(heatmaps)
        return outputs

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stack's heatmaps, (B, landmarks, H/4, W/4): what landmark decoding uses."""
        return self.forward(x)[-1]


def build(config: FANConfig | None = None) -> FAN:
    """The network with PyTorch's default random initialisation (weights come from ``load``)."""
    return FAN(config or full_config())


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive rather than a ``torch.save`` file.

    Both are zip files with a ``data.pkl``; only TorchScript archives carry ``constants.pkl`` and a
    ``code/`` folder, so the decision does not depend on the file name.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def check_torchscript_trust(path: str | Path, trust_torchscript: str | Path | None = None) -> None:
    """Refuse a TorchScript archive that is neither the pinned release nor the file the user trusted.

    ``trust_torchscript`` is a path the user named (``--trust-torchscript FILE``): that one file, and no
    other, may then be opened whatever its digest.
    """
    path = Path(path)
    try:
        digest = sha256_files(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read TorchScript archive {path}: {exc.strerror or exc}.",
                              "download the file again.") from None
    if digest == TORCHSCRIPT_SHA256:
        return
    if trust_torchscript is not None and _same_file(path, Path(trust_torchscript)):
        return
    trusted = (f" (--trust-torchscript names {trust_torchscript}, a different file)"
               if trust_torchscript is not None else "")
    converted = next(t for t in layout("fan68").targets if t.endswith(".safetensors"))
    raise CheckpointError(
        f"refusing to load {path}: it is a TorchScript archive (code, not only weights) and its sha256 "
        f"{digest[:16]}... is not the released {OFFICIAL_FILENAMES[1]}'s {TORCHSCRIPT_SHA256[:16]}...{trusted}.",
        f"use the official file; or, if you trust this one, pass `--trust-torchscript {path}` (run, export) or "
        f"convert it once to safetensors with `latentmuse weights convert DIR -m fan68 --trust-torchscript {path}` "
        f"(it writes {converted} in the weights folder, which loads as plain data; docs/SECURITY.md).",
    )


def read_torchscript_state_dict(path: str | Path, trust_torchscript: str | Path | None = None) -> StateDict:
    """The ``state_dict()`` of a TorchScript archive, loaded on CPU; its forward is never called.

    Only the pinned release, or the file ``trust_torchscript`` names, is opened (see the module doc and
    :func:`check_torchscript_trust`).
    """
    check_torchscript_trust(path, trust_torchscript)
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 flags torch.jit as deprecated; reading old archives is still supported.
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0].rstrip(":. ") if str(exc).strip() else type(exc).__name__
        if "Unknown type name" in first:
            # The C++ unpickler met a Python global (e.g. ``posix.system``) it does not resolve: the
            # archive was crafted or is not a TorchScript model, and it was not executed.
            raise CheckpointError(
                f"refusing to load {path}: the TorchScript archive needs code to load ({first}).",
                "use the official file, or convert it to safetensors in an environment you trust.",
            ) from None
        raise CheckpointError(f"cannot read TorchScript archive {path}: {first}.", "download the file again.") from None
    return {k: v.detach() for k, v in scripted.state_dict().items()}


def read_fan_state_dict(path: str | Path, trust_torchscript: str | Path | None = None) -> StateDict:
    """Read any released FAN format (safetensors, pickled state dict, TorchScript archive) as a state dict;
    a TorchScript archive only if it is the pinned release or ``trust_torchscript`` names it."""
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors" and is_torchscript_archive(path):
        return read_torchscript_state_dict(path, trust_torchscript)
    return read_state_dict(path, unwrap=("state_dict",))


def _align_keys(state_dict: Mapping[str, torch.Tensor], expected: Sequence[str]) -> StateDict:
    """Remove a wrapper prefix from every key, but only when that makes the names match exactly.

    A state dict saved from ``DataParallel`` has ``module.`` in front of every key, and a model traced
    through a small wrapper (to return only the last heatmaps) would have the wrapper's attribute name
    there. Either is removed only if the result has exactly the expected names (BatchNorm counters
    aside, see ``_add_batch_counters``); otherwise the names are left as they are, so the strict
    loader reports the file's real keys.
    """
    wanted = {k for k in expected if not k.endswith(".num_batches_tracked")}
    candidates: list[StateDict] = [dict(state_dict)]
    heads = {k.split(".", 1)[0] for k in state_dict}
    if len(heads) == 1 and all("." in k for k in state_dict):
        prefix = f"{heads.pop()}."
        candidates.append({k[len(prefix) :]: v for k, v in state_dict.items()})
    for candidate in candidates:
        if {k for k in candidate if not k.endswith(".num_batches_tracked")} == wanted:
            return candidate
    return candidates[0]


def _add_batch_counters(model: nn.Module, state_dict: StateDict) -> StateDict:
    """Supply BatchNorm ``num_batches_tracked`` when the file has none at all.

    Checkpoints written before PyTorch 0.4.1 have no such buffer (the 2018 ``.pth.tar`` may be one).
    It only counts training steps and is unused in eval mode (momentum is set), so zero is exact;
    PyTorch's own ``load_state_dict`` fills it the same way for old files. A file that has some
    counters but not all is still reported as missing keys.
    """
    if any(k.endswith(".num_batches_tracked") for k in state_dict):
        return state_dict
    expected = [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]
    if not expected:
        return state_dict
    return {**state_dict, **{k: torch.zeros((), dtype=torch.long) for k in expected}}


def load(
    path: str | Path,
    config: FANConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_torchscript: str | Path | None = None,
) -> FAN:
    """Load 2DFAN-4 from any released format (see the module docstring) strictly, in eval mode.

    ``trust_torchscript``: a TorchScript archive the user vouches for (``--trust-torchscript``); without
    it only the pinned release's archive is opened."""
    config = config or full_config()
    model = build_on_meta(lambda: FAN(config))
    state_dict = _align_keys(read_fan_state_dict(path, trust_torchscript), list(model.state_dict()))
    state_dict = _add_batch_counters(model, state_dict)
    return load_strict(model, state_dict, name="FAN", source=path, dtype=dtype, device=device)
