"""File helpers shared by the weights, export and engine code: content hashes and atomic writes."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


def sha256_files(*paths: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of the files' contents read one after another (a model and its side files hash as one)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


class Digests:
    """sha256 of files' contents, each computed once while the file is unchanged (same size and
    mtime): a batch hashes a video for its job key and its face-cache key with one read."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: str | Path) -> str:
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_files(path)
        return self._known[key]


def atomic_write(path: str | Path, payload: bytes) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file.

    The temporary name is unique (``mkstemp``), so two processes writing the same path never write
    into one temporary file: each rename is whole, and the last one wins. The file gets the mode a
    plain ``open`` would give it (``mkstemp``'s 0600 would hide reports and exports from a team).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file (0666 less the umask)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (``os.umask`` can only be
    read by setting it, which would briefly change it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def slug(text: str) -> str:
    """``text`` as a file-name part: letters, digits, dots and underscores, runs of anything else one dash."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-")
