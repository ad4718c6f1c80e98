"""Where latentmuse keeps its caches: ``$LATENTMUSE_CACHE``, else ``$XDG_CACHE_HOME/latentmuse``, else
``~/.cache/latentmuse`` (the XDG base-directory rule). Standard library only: the CLI shows the
default in ``--help`` without importing the runtime."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    explicit = os.environ.get("LATENTMUSE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "latentmuse"
