"""Checking where a file will be written, before any work is done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from ...errors import LatentmuseError


def _can_create_in(folder: Path) -> bool:
    """Really create (and remove) a file: permission bits do not stop root, read-only mounts do."""
    try:
        fd, probe_path = tempfile.mkstemp(dir=folder, prefix=".latentmuse-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe_path)
    return True


def check_output_path(
    output: Path | str,
    inputs: Iterable[Path | str | None] = (),
    *,
    extensions: Iterable[str] | None = None,
) -> Path:
    """Validate where a file will be written; returns the absolute output path.

    Raises when the folder is missing or not writable, the path is a folder, the output is one of the
    inputs (after resolving symlinks, or the same file under another name), or, when ``extensions``
    is given (e.g. ``OUTPUT_FORMATS`` for a video), its extension is not one of them.
    """
    output = Path(output).expanduser()
    resolved = output.resolve()
    folder = resolved.parent
    if extensions is not None:
        allowed = sorted({e.lower() for e in extensions})
        if output.suffix.lower() not in allowed:
            raise LatentmuseError(
                f"cannot write {output}: unsupported extension {output.suffix or '(none)'!r}.",
                f"name the output with one of {', '.join(allowed)}.",
            )
    if not folder.is_dir():
        raise LatentmuseError(f"the output folder {folder} does not exist.", f"create it first: mkdir -p {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or not _can_create_in(folder):
        raise LatentmuseError(f"the output folder {folder} is not writable.", "choose another output path.")
    if resolved.is_dir():
        raise LatentmuseError(f"the output {output} is a folder.", "give a file name, e.g. out.mp4.")
    for item in inputs:
        if item is None:
            continue
        item = Path(item).expanduser()
        same = item.resolve() == resolved
        if not same and item.exists() and resolved.exists():
            try:
                same = os.path.samefile(item, resolved)
            except OSError:
                same = False
        if same:
            raise LatentmuseError(
                f"the output {output} is also an input; writing it would destroy the input.",
                "choose a different output file name.",
            )
    return resolved
