"""The latent cache: MuseTalk's VAE latents of a video's face crops, encoded once per video.

MuseTalk feeds its UNet two latents per frame: the crop with its lower half masked and the whole
crop (the reference). Both depend on the video frame and its landmarks only, never on the audio, so a
second dub of the same video needs no VAE encoder at all. That pays: on full-size weights the encoder
is about 44 % of MuseTalk's time per frame on a CPU (docs/BENCHMARKS.md, "Scale").

An entry holds, for input frames ``0 .. n-1``, the 8 x 32 x 32 latents (masked 4 + reference 4) in the
encoder's own output dtype, so a hit feeds the UNet exactly the values a miss would. Frames that were
never encoded (no face, a cutaway) are NaN. It is keyed by the face-track key (the video's content and
every face-pass setting, runtime/facecache.py) plus what the encoder depends on: the VAE's weights file
(path, size, mtime) or engines manifest, backend, device type, dtype, and MuseTalk's crop constants.

LatentSync's latents are not cached: its crops come from alignment transforms smoothed over the run's
frames (a prefix of a longer run's crops is not the shorter run's), and its VAE encode is one call
per 16-frame window against ``steps`` (x 2 with guidance) UNet3D calls, a few per cent of the window.

Format, written for many-GB videos and several workers:

- One ``.npy`` per entry (a plain array, no pickle), named ``KEY.SHA.lmlatents.npy`` where SHA is the
  first 32 hex digits of the file's sha256. A reader hashes it once to check it (a file whose content
  does not match its name is corrupt: a warning, and the frames are encoded again), then reads one
  frame's row at a time at its offset (``os.pread``), so a 10-minute clip's entry (about 480 MB in
  float32) never sits in the process's memory: peak RSS stays independent of the clip's length.
- A run writes into a unique temporary ``.npy`` in the same folder (NaN-filled, rows written at their
  offsets), then renames it to its content name and deletes the key's older names: two workers writing
  one key each publish a whole file; a reader that loses a race to a deletion sees a miss, never half
  a file. A run that stops deletes its temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import file_mode, sha256_files
from .facecache import _reason  # one wording of an entry's fault for both caches

#: Bumped whenever the entry layout or the encoder's inputs change.
LATENT_VERSION = 1
SUFFIX = ".lmlatents.npy"
FOLDER = "latents"


@dataclass(frozen=True)
class LatentKey:
    """The face-track key's digest plus the encoder's settings; ``digest`` names the entry."""

    face_digest: str
    settings: dict = field(hash=False)

    @property
    def digest(self) -> str:
        text = json.dumps({"version": LATENT_VERSION, "face": self.face_digest, **self.settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _file_sha(path: Path) -> str:
    return sha256_files(path)[:32]


class LatentCache:
    """Entries under ``root/latents/``; ``warn`` hears about corrupt entries and unwritable folders."""

    def __init__(self, root: str | Path, warn=lambda message: None) -> None:
        self.folder = Path(root) / FOLDER
        self.warn = warn

    def names(self, key: LatentKey) -> list[Path]:
        """The key's published files, newest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.glob(f"{key.digest}.*{SUFFIX}") if not p.name.startswith(".")]
        return sorted(found, key=lambda p: _mtime(p), reverse=True)

    def open(self, key: LatentKey) -> Rows | None:
        """The key's entry (checked against its name), or None."""
        for path in self.names(key)[:1]:
            try:
                sha = path.name[len(key.digest) + 1:-len(SUFFIX)]
                if _file_sha(path) != sha:
                    raise ValueError("checksum mismatch")
                return Rows.open(path)
            except FileNotFoundError:  # replaced by another writer meanwhile: a miss
                return None
            except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
                self.warn(f"latent cache entry {path.name} is corrupt ({_reason(exc)}): latents encoded again.")
                return None
        return None

    def session(self, key: LatentKey, frames: int) -> LatentSession:
        """The latents of one run over input frames ``0 .. frames-1``."""
        return LatentSession(self, key, frames, self.open(key))

    def entries(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []

    def clear(self) -> tuple[int, int]:
        """Delete this cache's entries and stopped writers' temporary files; (files, bytes)."""
        count = freed = 0
        if not self.folder.is_dir():
            return 0, 0
        for path in self.folder.iterdir():
            ours = path.name.endswith(SUFFIX) or (path.name.startswith(".") and path.name.endswith(".partial.npy"))
            if ours and path.is_file():
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
                count += 1
        return count, freed


class Rows:
    """A ``.npy`` array of frames read and written one row (frame) at a time at its offset, so the
    array never needs to be in memory; ``shape[0]`` frames of ``shape[1:]``."""

    def __init__(self, path: Path, fd: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.fd, self.offset, self.shape, self.dtype = path, fd, offset, shape, dtype
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize

    @classmethod
    def open(cls, path: Path) -> Rows:
        fd = os.open(path, os.O_RDONLY)
        try:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = reader(handle)
                offset = handle.tell()
            if fortran or dtype.hasobject or len(shape) != 4 or not np.issubdtype(dtype, np.floating):
                raise ValueError(f"unexpected array {dtype} {shape}")
            rows = cls(path, fd, offset, shape, dtype)
            if os.fstat(fd).st_size != offset + shape[0] * rows.row_bytes:
                raise ValueError("file size does not match its header")
            return rows
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> Rows:
        """A new file of NaN rows (written in chunks, never held in memory)."""
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        offset = header.offset
        del header
        rows = cls(path, os.open(path, os.O_RDWR), offset, shape, np.dtype(dtype))
        chunk = 256
        nan = np.full((min(chunk, shape[0]), *shape[1:]), np.nan, dtype=dtype).tobytes()
        for start in range(0, shape[0], chunk):
            count = min(chunk, shape[0] - start)
            os.pwrite(rows.fd, nan[: count * rows.row_bytes], offset + start * rows.row_bytes)
        return rows

    def __len__(self) -> int:
        return self.shape[0]

    def get(self, index: int) -> np.ndarray | None:
        """Frame ``index``'s row, or None when it was never written (NaN)."""
        data = os.pread(self.fd, self.row_bytes, self.offset + index * self.row_bytes)
        if len(data) != self.row_bytes:
            raise ValueError(f"{self.path.name} ends inside frame {index}")
        row = np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])
        return None if np.isnan(row.flat[0]) else row.copy()

    def put(self, index: int, row: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(row, dtype=self.dtype).tobytes(), self.offset + index * self.row_bytes)

    def copy_from(self, other: Rows, chunk: int = 256) -> None:
        """Every row of ``other`` (a shorter or equal array of the same rows) into this one."""
        for start in range(0, len(other), chunk):
            count = min(chunk, len(other) - start)
            data = os.pread(other.fd, count * other.row_bytes, other.offset + start * other.row_bytes)
            os.pwrite(self.fd, data, self.offset + start * self.row_bytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LatentSession:
    """One run's view: :meth:`lookup` serves cached frames, :meth:`record` collects newly encoded
    ones, :meth:`finish` publishes an entry when anything new was encoded, :meth:`close` drops the
    temporary file of a run that did not finish. Used from the generation thread only."""

    def __init__(self, cache: LatentCache, key: LatentKey, frames: int, cached: Rows | None) -> None:
        self.cache, self.key, self.frames, self.cached = cache, key, frames, cached
        self.served = self.encoded = 0  # frames served from the entry, frames encoded by this run
        self._new: Rows | None = None
        self._failed = False

    def lookup(self, in_indices) -> list[np.ndarray | None]:
        """Per input frame, its cached latents (8, 32, 32) or None."""
        out: list[np.ndarray | None] = []
        for i in in_indices:
            value = self.cached.get(i) if self.cached is not None and i < len(self.cached) else None
            if value is not None:
                self.served += 1
            elif self._new is not None:
                value = self._new.get(i)  # encoded earlier in this run (a ping-pong repeat)
            out.append(value)
        return out

    def record(self, in_indices, latents: np.ndarray) -> None:
        """Keep the newly encoded ``latents`` (k, 8, 32, 32) of input frames ``in_indices``."""
        if self._new is None and (self._failed or not self._start(latents)):
            return
        for i, value in zip(in_indices, latents):
            self._new.put(i, value)
        self.encoded += len(latents)

    def _start(self, latents: np.ndarray) -> bool:
        shape = (self.frames, *latents.shape[1:])
        if self.cached is not None:
            if self.cached.shape[1:] != latents.shape[1:] or self.cached.dtype != latents.dtype:
                self._drop_cached()  # an entry of another layout cannot be merged; this run replaces it
            else:
                shape = (max(self.frames, len(self.cached)), *shape[1:])
        tmp = self.cache.folder / f".{self.key.digest}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial.npy"
        try:
            self.cache.folder.mkdir(parents=True, exist_ok=True)
            self._new = Rows.create(tmp, shape, latents.dtype)
            if self.cached is not None:
                self._new.copy_from(self.cached)
        except OSError as exc:
            self.cache.warn(f"latent cache not written to {self.cache.folder} ({exc.strerror or exc}); the run goes on.")
            self.close()
            tmp.unlink(missing_ok=True)
            self._failed = True
            return False
        return True

    @property
    def status(self) -> str:
        """``hit`` (every frame's latents from the entry), ``partial`` (some), ``miss`` (none), or
        ``unused`` (no MuseTalk frame in this run)."""
        if self.served and not self.encoded:
            return "hit"
        if self.served:
            return "partial"
        return "miss" if self.encoded else "unused"

    def finish(self) -> Path | None:
        """Publish the entry when this run encoded anything; the key's older files go."""
        if self._new is None or not self.encoded:
            self.close()
            return None
        tmp = self._new.path
        try:
            os.fsync(self._new.fd)
            self._new.close()
            sha = _file_sha(tmp)
            path = self.cache.folder / f"{self.key.digest}.{sha}{SUFFIX}"
            old = [p for p in self.cache.names(self.key) if p != path]
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
            self._new = None
            for stale in old:
                stale.unlink(missing_ok=True)
            return path
        except OSError as exc:
            self.cache.warn(f"latent cache not written to {self.cache.folder} ({exc.strerror or exc}); the run goes on.")
            return None
        finally:
            self.close()

    def _drop_cached(self) -> None:
        if self.cached is not None:
            self.cached.close()
            self.cached = None

    def close(self) -> None:
        """Release the files; a temporary file not yet published is deleted."""
        self._drop_cached()
        if self._new is not None:
            self._new.close()
            self._new.path.unlink(missing_ok=True)
            self._new = None

    def __enter__(self) -> LatentSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
