"""The UNet3D configuration: LatentSync's ``model:`` section of ``configs/unet/stage2.yaml``, validated.

A config is a plain dict with exactly the keys of that yaml section (so a user can paste it from the
original project). :func:`resolve_config` checks every key and value once, up front, and turns the dict
into a frozen :class:`UNet3DConfig`; a key we do not know or a value we do not implement is a
:class:`~latentmuse.errors.LatentmuseError` naming the key, never a silently different network.

Keys left out of a user dict take the released value (LatentSync 1.5 and 1.6 share one config), so a
small override such as ``{"in_channels": 13}`` is enough; ``motion_module_kwargs`` is merged the same
way. ``sample_size`` is accepted and ignored: it only documents the training resolution.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import LatentmuseError

#: GroupNorm groups of every motion module. The original hard-codes 32 there (its
#: ``TemporalTransformer3DModel`` never receives ``norm_num_groups``), whatever the UNet's own value.
MOTION_NORM_GROUPS = 32

_FULL_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "add_audio_layer": True,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 13,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "resnet_time_scale_shift": "default",
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1,
        "zero_initialize": True,
    },
}

_DOWN_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
_UP_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
_NUM_LEVELS = 4  # the original derives decoder resolutions as 2 ** (3 - i): four levels only


def full_config() -> dict[str, Any]:
    """The released LatentSync 1.5 / 1.6 UNet3D config (``model:`` of ``configs/unet/stage2.yaml``)."""
    return copy.deepcopy(_FULL_CONFIG)


def tiny_config() -> dict[str, Any]:
    """Same structure as :func:`full_config` with small widths, for fast CPU tests.

    Channels stay multiples of 32 because the motion modules' GroupNorm always has 32 groups.
    """
    cfg = full_config()
    cfg.update(
        block_out_channels=[32, 64, 64, 64],
        norm_num_groups=8,
        attention_head_dim=4,
        sample_size=8,
    )
    cfg["motion_module_kwargs"].update(num_attention_heads=4)
    return cfg


@dataclass(frozen=True)
class MotionConfig:
    """The validated ``motion_module_kwargs`` (Vanilla temporal transformer)."""

    num_attention_heads: int
    num_transformer_block: int
    attention_block_types: tuple[str, ...]
    temporal_position_encoding: bool
    temporal_position_encoding_max_len: int
    temporal_attention_dim_div: int
    zero_initialize: bool


@dataclass(frozen=True)
class UNet3DConfig:
    """The validated UNet3D architecture (all keys of the yaml section but ``sample_size``)."""

    act_fn: str
    add_audio_layer: bool
    attention_head_dim: tuple[int, ...]  # number of heads per level (diffusers' historical misnomer)
    block_out_channels: tuple[int, ...]
    center_input_sample: bool
    cross_attention_dim: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    downsample_padding: int
    flip_sin_to_cos: bool
    freq_shift: float
    in_channels: int
    layers_per_block: int
    mid_block_scale_factor: float
    norm_eps: float
    norm_num_groups: int
    out_channels: int
    resnet_time_scale_shift: str
    use_motion_module: bool
    motion_module_resolutions: tuple[int, ...]
    motion_module_mid_block: bool
    motion_module_decoder_only: bool
    motion: MotionConfig

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def motion_in_down_block(self, level: int) -> bool:
        return self.use_motion_module and not self.motion_module_decoder_only and 2**level in self.motion_module_resolutions

    def motion_in_up_block(self, level: int) -> bool:
        """``level`` counts decoder blocks from the lowest resolution (up block 0 is the deepest)."""
        return self.use_motion_module and 2 ** (_NUM_LEVELS - 1 - level) in self.motion_module_resolutions

    @property
    def motion_in_mid_block(self) -> bool:
        return self.use_motion_module and self.motion_module_mid_block


def _bad(key: str, value: object, expected: str) -> LatentmuseError:
    return LatentmuseError(
        f"UNet3D config key {key!r} has unsupported value {value!r} (expected {expected}).",
        "use the values of LatentSync's configs/unet/stage2.yaml `model:` section.",
    )


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def _int(key: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"an integer >= {minimum}")
    return value


def _float(key: str, value: object, *, positive: bool = False) -> float:
    # PyYAML reads `1e-5` (no dot) as a string, so numeric strings are accepted.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _bad(key, value, "a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(key, value, "a number")
    if positive and value <= 0:
        raise _bad(key, value, "a positive number")
    return float(value)


def _choice(key: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _bad(key, value, " or ".join(repr(c) for c in choices))
    return str(value)


def _int_list(key: str, value: object, length: int | None = None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise _bad(key, value, "a non-empty list of integers")
    out = tuple(_int(key, v) for v in value)
    if length is not None and len(out) != length:
        raise _bad(key, value, f"{length} entries")
    return out


def _str_list(key: str, value: object, choices: Sequence[str], length: int) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise _bad(key, value, f"a list of {length} block types")
    return tuple(_choice(key, v, choices) for v in value)


def _merge(user: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = full_config()
    if user is None:
        return merged
    if not isinstance(user, Mapping):
        raise LatentmuseError(f"UNet3D config must be a mapping, not {type(user).__name__}.")
    for key, value in user.items():
        if key not in merged:
            raise LatentmuseError(
                f"unknown UNet3D config key {key!r}.",
                f"use only the keys of LatentSync's stage2.yaml `model:` section ({', '.join(sorted(merged))}).",
            )
        if key == "motion_module_kwargs":
            if not isinstance(value, Mapping):
                raise _bad(key, value, "a mapping")
            for sub, sub_value in value.items():
                if sub not in merged[key]:
                    raise LatentmuseError(
                        f"unknown UNet3D config key 'motion_module_kwargs.{sub}'.",
                        f"use only {', '.join(sorted(merged[key]))}.",
                    )
                merged[key][sub] = copy.deepcopy(sub_value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_config(config: Mapping[str, Any] | UNet3DConfig | None = None) -> UNet3DConfig:
    """Validate a stage2-style config dict (``None``: the released one) into a :class:`UNet3DConfig`."""
    if isinstance(config, UNet3DConfig):
        return config
    raw = _merge(config)
    channels = _int_list("block_out_channels", raw["block_out_channels"], _NUM_LEVELS)
    groups = _int("norm_num_groups", raw["norm_num_groups"])
    if any(c % groups for c in channels):
        raise _bad("norm_num_groups", groups, f"a divisor of every block_out_channels entry {list(channels)}")

    heads_value = raw["attention_head_dim"]
    heads = (_int("attention_head_dim", heads_value),) * _NUM_LEVELS if isinstance(heads_value, int) else (
        _int_list("attention_head_dim", heads_value, _NUM_LEVELS)
    )
    for c, h in zip(channels, heads):
        if c % h:
            raise _bad("attention_head_dim", heads_value, f"head counts dividing the block channels {list(channels)}")

    _choice("mid_block_type", raw["mid_block_type"], ("UNetMidBlock3DCrossAttn",))
    if raw["sample_size"] is not None:
        _int("sample_size", raw["sample_size"])

    mk = raw["motion_module_kwargs"]
    block_types = mk["attention_block_types"]
    if isinstance(block_types, (str, bytes)) or not isinstance(block_types, Sequence) or not block_types:
        raise _bad("motion_module_kwargs.attention_block_types", block_types, "a list of 'Temporal_Self'")
    motion = MotionConfig(
        num_attention_heads=_int("motion_module_kwargs.num_attention_heads", mk["num_attention_heads"]),
        num_transformer_block=_int("motion_module_kwargs.num_transformer_block", mk["num_transformer_block"]),
        attention_block_types=tuple(
            _choice("motion_module_kwargs.attention_block_types", t, ("Temporal_Self",)) for t in block_types
        ),
        temporal_position_encoding=_bool(
            "motion_module_kwargs.temporal_position_encoding", mk["temporal_position_encoding"]
        ),
        temporal_position_encoding_max_len=_int(
            "motion_module_kwargs.temporal_position_encoding_max_len", mk["temporal_position_encoding_max_len"]
        ),
        temporal_attention_dim_div=_int(
            "motion_module_kwargs.temporal_attention_dim_div", mk["temporal_attention_dim_div"]
        ),
        zero_initialize=_bool("motion_module_kwargs.zero_initialize", mk["zero_initialize"]),
    )

    cfg = UNet3DConfig(
        act_fn=_choice("act_fn", raw["act_fn"], ("silu", "swish")),
        add_audio_layer=_bool("add_audio_layer", raw["add_audio_layer"]),
        attention_head_dim=heads,
        block_out_channels=channels,
        center_input_sample=_bool("center_input_sample", raw["center_input_sample"]),
        cross_attention_dim=_int("cross_attention_dim", raw["cross_attention_dim"]),
        down_block_types=_str_list("down_block_types", raw["down_block_types"], _DOWN_TYPES, _NUM_LEVELS),
        up_block_types=_str_list("up_block_types", raw["up_block_types"], _UP_TYPES, _NUM_LEVELS),
        downsample_padding=_int("downsample_padding", raw["downsample_padding"]),
        flip_sin_to_cos=_bool("flip_sin_to_cos", raw["flip_sin_to_cos"]),
        freq_shift=_float("freq_shift", raw["freq_shift"]),
        in_channels=_int("in_channels", raw["in_channels"]),
        layers_per_block=_int("layers_per_block", raw["layers_per_block"]),
        mid_block_scale_factor=_float("mid_block_scale_factor", raw["mid_block_scale_factor"], positive=True),
        norm_eps=_float("norm_eps", raw["norm_eps"], positive=True),
        norm_num_groups=groups,
        out_channels=_int("out_channels", raw["out_channels"]),
        # "scale_shift" adds a `double_len_linear` layer in the original; no released model uses it.
        resnet_time_scale_shift=_choice("resnet_time_scale_shift", raw["resnet_time_scale_shift"], ("default",)),
        use_motion_module=_bool("use_motion_module", raw["use_motion_module"]),
        motion_module_resolutions=tuple(
            _int("motion_module_resolutions", r) for r in _as_list("motion_module_resolutions", raw["motion_module_resolutions"])
        ),
        motion_module_mid_block=_bool("motion_module_mid_block", raw["motion_module_mid_block"]),
        motion_module_decoder_only=_bool("motion_module_decoder_only", raw["motion_module_decoder_only"]),
        motion=motion,
    )
    _choice("motion_module_type", raw["motion_module_type"], ("Vanilla",))
    if cfg.use_motion_module:
        for c in channels:
            inner = motion.num_attention_heads * (c // motion.num_attention_heads // motion.temporal_attention_dim_div)
            if c % MOTION_NORM_GROUPS or inner == 0 or inner % 2:
                raise _bad(
                    "block_out_channels",
                    list(channels),
                    f"multiples of {MOTION_NORM_GROUPS} (motion-module GroupNorm) giving an even, non-zero "
                    "temporal attention width",
                )
    return cfg


def _as_list(key: str, value: object) -> Sequence[object]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _bad(key, value, "a list")
    return value
