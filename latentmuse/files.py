"""File helpers shared by the weights, export, engine, bench and media code: content hashes, atomic
writes (:class:`AtomicFile`) and the check of an output path made before any work."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import LatentmuseError


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


class AtomicFile:
    """A unique temporary file beside ``path`` that becomes ``path`` whole, or never.

    Every writer of a finished artefact (reports, plans, caches, plots, the output video) writes into
    ``temp`` and then either :meth:`commit` (flush to disk, rename onto ``path``, flush the
    folder: a crash at any moment leaves the old file or the new one, never half of one) or
    :meth:`discard` (delete ``temp``). The temporary name is ``prefix + 8 hex digits + suffix``,
    created with ``O_EXCL`` (as :func:`tempfile.mkstemp`, so two processes writing the same path
    never share a temporary file: each rename is whole, and the last one wins), but with the mode a
    plain ``open`` gives (``mkstemp``'s 0600 would hide reports and videos from a team).

    As a context manager it yields ``temp``, commits on a clean exit and discards on any exception
    (an interrupt included). Writers that stream across calls (the video writer) hold it open and
    call :meth:`commit` / :meth:`discard` themselves.
    """

    def __init__(self, path: str | Path, *, prefix: str | None = None, suffix: str = ".tmp") -> None:
        self.path = Path(path)
        prefix = f".{self.path.name}." if prefix is None else prefix
        while True:
            candidate = self.path.with_name(f"{prefix}{secrets.token_hex(4)}{suffix}")
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            break
        self.temp = candidate
        self.done = False

    def commit(self) -> None:
        """Flush ``temp`` to the disk and rename it onto ``path`` (then flush the folder, best effort:
        the file is whole either way). On an error ``temp`` is left for :meth:`discard`."""
        if self.done:
            raise ValueError(f"{self.path} was already committed or discarded")
        fsync_path(self.temp)
        os.replace(self.temp, self.path)
        self.done = True
        try:
            fsync_path(self.path.parent)
        except OSError:
            pass

    def discard(self) -> None:
        """Delete ``temp`` (nothing is written at ``path``; an older file there is kept)."""
        if not self.done:
            self.temp.unlink(missing_ok=True)
            self.done = True

    def __enter__(self) -> Path:
        return self.temp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise


def atomic_path(path: str | Path, *, prefix: str | None = None, suffix: str = ".tmp") -> AtomicFile:
    """``with atomic_path(out) as tmp: write(tmp)``: ``out`` appears whole on success, never otherwise
    (see :class:`AtomicFile`)."""
    return AtomicFile(path, prefix=prefix, suffix=suffix)


def atomic_write(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through :func:`atomic_path`: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def fsync_path(path: Path) -> None:
    """Flush a file (or folder) to the disk, so a crash right after a rename leaves a whole file."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return  # folders cannot be opened on some systems (Windows): nothing to flush there
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # a filesystem without fsync (some FUSE)
            raise
    finally:
        os.close(fd)


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
    flag: str | None = None,
) -> Path:
    """Validate where a file will be written, before any work; returns the absolute output path.

    Raises when the folder is missing or not writable (a file is really created there: permission
    bits do not bind root, read-only mounts do), the path is a folder, the output is one of the
    inputs (after resolving symlinks, or the same file under another name), or, when ``extensions``
    is given (e.g. ``OUTPUT_FORMATS`` for a video), its extension is not one of them. ``flag`` (e.g.
    ``"--json"``) is the option the path came from: the messages then name it, so a command with
    several output options says which one is wrong.
    """
    output = Path(output).expanduser()
    resolved = output.resolve()
    folder = resolved.parent
    named = f"{flag} {output}" if flag else None
    allowed = sorted({e.lower() for e in extensions}) if extensions is not None else []
    if allowed:
        if output.suffix.lower() not in allowed:
            if named:
                raise LatentmuseError(f"{named}: the file must end in {' or '.join(allowed)}.",
                                      f"use e.g. {flag} {output.with_suffix(allowed[0]).name}.")
            raise LatentmuseError(
                f"cannot write {output}: unsupported extension {output.suffix or '(none)'!r}.",
                f"name the output with one of {', '.join(allowed)}.",
            )
    if not folder.is_dir():
        raise LatentmuseError(f"{named}: the folder {folder} does not exist." if named
                              else f"the output folder {folder} does not exist.",
                              f"create it first: mkdir -p {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or not _can_create_in(folder):
        raise LatentmuseError(f"{named} is not writable." if named else f"the output folder {folder} is not writable.",
                              f"choose another {flag} path." if named else "choose another output path.")
    if resolved.is_dir():
        raise LatentmuseError(f"{named} is a folder." if named else f"the output {output} is a folder.",
                              f"give a file name, e.g. {flag} {output / ('out' + (allowed[0] if allowed else '.json'))}." if named
                              else "give a file name, e.g. out.mp4.")
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
