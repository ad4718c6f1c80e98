"""Small helpers shared by the model modules for dict-style (diffusers) configurations."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import LatentmuseError


def merged_config(base: Mapping[str, Any], overrides: Mapping[str, Any] | None, *, name: str) -> dict[str, Any]:
    """``base`` updated with ``overrides``; a key ``base`` does not know is an error, not ignored.

    Silently ignored keys are how a config for another model version slips through unnoticed.
    Keys starting with ``_`` (diffusers' ``_class_name``, ``_diffusers_version``) are metadata and dropped.
    """
    config = dict(base)
    for key, value in (overrides or {}).items():
        if key.startswith("_"):
            continue
        if key not in base:
            raise LatentmuseError(
                f"{name} config has an unknown key {key!r}.",
                f"use only these keys: {', '.join(sorted(base))}.",
            )
        config[key] = list(value) if isinstance(value, tuple) else value
    return config


def read_json_config(path: str | Path, *, name: str) -> dict[str, Any]:
    """Read a JSON config file, turning unreadable or malformed files into one readable error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatentmuseError(f"{name} config {path} does not exist.", "check the weights folder.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise LatentmuseError(f"{name} config {path} is not valid JSON: {exc}.", "download it again.") from None
    if not isinstance(data, dict):
        raise LatentmuseError(f"{name} config {path} is not a JSON object.", "download it again.")
    return data
