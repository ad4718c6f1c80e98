"""The face-track cache: a video's face pass (tracked face, landmarks, statuses) computed once.

Teams dub one presenter video into many languages; the face pass (detection, tracking, 68 landmarks
per frame) depends on the video and the front end, never on the audio. An entry holds the pass for
the first ``n`` frames, keyed by the video's *content* (sha256, so a renamed or copied file still
hits and an edited one misses) and every setting the pass depends on: front end and its weights,
device type and dtype (S3FD's boxes differ in the last digits between fp16 and fp32), the ``--face``
policy, ``--min-face-size`` and the tracker's constants. Tracking is causal (frame ``t`` depends on
frames ``<= t`` only), so an entry for ``n`` frames serves every run that needs ``n`` or fewer: a
shorter audio track hits. A longer one extends the entry: the entry also holds the tracker's state
after its last frame (:meth:`FaceTracker.state`), so only the missing frames are detected, by the
resumed tracker (:meth:`FaceTrack.tracker`), with exactly the results one pass over all frames gives;
the longer track then replaces the entry.

What is *not* cached here, and why: LatentSync's alignment transforms are smoothed over the run's
frames (a prefix of a longer run's transforms is not the shorter run's), and they cost about a
millisecond per thousand frames to recompute from the cached landmarks. MuseTalk's VAE latents of the
crops are cached beside this entry, under its key (runtime/latentcache.py, docs/SCALE.md).

Entries are one ``.npz`` each (no pickle: ``allow_pickle=False``), written atomically through a
unique temporary name, so concurrent writers of one key each rename a whole file and the last wins.
Each carries a sha256 of its arrays; an entry that fails to load or to check is a miss with a
warning, and the recomputed pass replaces it.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .contracts import Face
from .tracking import STATUSES, DubbedFace, FaceTracker, Selection, count_statuses

#: Bumped whenever the entry layout or the face pass's results change (2: the tracker's state). An entry
#: of another version is a miss without a warning (the key's digest includes the version, so it is
#: normally not even looked at) and is replaced.
CACHE_VERSION = 2
SUFFIX = ".lmfaces.npz"
FOLDER = "faces"


@dataclass
class FaceTrack:
    """The face pass over a video's first ``len(faces)`` frames: per frame the dubbed face (or None),
    its tracker status and how many faces had been seen so far, which face was dubbed, and the
    tracker's state after the last frame (``tracker_state``, :meth:`FaceTracker.state`; ``None`` when
    the track cannot be extended: a prefix, or built without it).

    Built all at once (:meth:`from_tracker`) or frame by frame as a stream detects them
    (:meth:`confirm`, or :meth:`append`, then :meth:`checkpoint` before the track is stored)."""

    faces: list[Face | None] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)  # faces_seen after each frame's selection
    dubbed: DubbedFace | None = None
    tracker_state: dict | None = None

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def faces_seen(self) -> int:
        return self.seen[-1] if self.seen else 0

    @classmethod
    def from_tracker(cls, faces: list[Face | None], tracker: FaceTracker) -> FaceTrack:
        """The track of a tracker that confirmed exactly ``faces`` (its returned faces), state included."""
        track = cls(list(faces), list(tracker.statuses), list(tracker.seen_by_frame[: len(faces)]), tracker.dubbed)
        track.checkpoint(tracker)
        return track

    def prefix(self, n: int) -> FaceTrack:
        """The pass over the first ``n`` frames (what a run of ``n`` frames would have computed); the
        tracker's state only when that is the whole track (a tracker cannot be rewound)."""
        dubbed = self.dubbed if self.dubbed is not None and self.dubbed.first_frame < n else None
        state = self.tracker_state if n >= len(self) else None
        return FaceTrack(self.faces[:n], self.statuses[:n], self.seen[:n], dubbed, state)

    def tracker(self) -> FaceTracker:
        """A tracker resumed after this track's last frame: feeding it frames ``len(self)`` on gives
        exactly what one tracker over all frames gives. ``ValueError`` without a state."""
        if self.tracker_state is None:
            raise ValueError("this face track has no tracker state (a prefix, or stored without one)")
        return FaceTracker.resume(self.tracker_state, statuses=self.statuses, seen=self.seen)

    def append(self, face: Face | None, status: str, seen: int) -> None:
        """One more frame. The stored tracker state no longer describes the track's end, so it is
        dropped until the next :meth:`checkpoint`."""
        if status not in STATUSES:
            raise ValueError(f"unknown face status {status!r}")
        self.faces.append(face)
        self.statuses.append(status)
        self.seen.append(int(seen))
        self.tracker_state = None

    def confirm(self, tracker: FaceTracker, selection: Selection, face: Face | None) -> Face | None:
        """``tracker.confirm(selection, face)``, appended to the track with the tracker's status and
        count for that frame; returns the face to dub (or None). The tracker must be the one following
        this track (new on an empty track, or :meth:`tracker`), so frames stay in step."""
        if selection.index != len(self):
            raise ValueError(f"frame {selection.index} confirmed into a track of {len(self)} frames")
        out = tracker.confirm(selection, face)
        self.append(out, tracker.statuses[-1], tracker.seen_by_frame[selection.index])
        self.dubbed = tracker.dubbed
        return out

    def checkpoint(self, tracker: FaceTracker) -> None:
        """Record the tracker's state (and choice) at the track's end, so the stored track can be
        extended later; the tracker must have confirmed exactly this track's frames."""
        if tracker.statuses != self.statuses:
            raise ValueError(f"tracker at frame {len(tracker.statuses)} does not end this {len(self)}-frame track")
        self.dubbed = tracker.dubbed
        self.tracker_state = tracker.state()

    def counts(self, schedule) -> dict[str, int]:
        return count_statuses(self.statuses, schedule)


@dataclass(frozen=True)
class CacheKey:
    """What a face pass depends on; ``digest`` names the entry."""

    video_sha256: str
    settings: dict = field(hash=False)

    @property
    def digest(self) -> str:
        text = json.dumps({"version": CACHE_VERSION, "video": self.video_sha256, **self.settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CacheEntry:
    """One entry as ``latentmuse cache ls`` shows it."""

    path: Path
    video: str
    frames: int
    settings: dict
    bytes: int
    modified: float


class FaceCache:
    """Entries under ``root/faces/``; ``warn`` hears about corrupt entries."""

    def __init__(self, root: str | Path, warn=lambda message: None) -> None:
        self.root = Path(root)
        self.folder = self.root / FOLDER
        self.warn = warn

    def path(self, key: CacheKey) -> Path:
        return self.folder / f"{key.digest}{SUFFIX}"

    # ----------------------------------------------------------------------------- read

    def get(self, key: CacheKey, frames: int) -> FaceTrack | None:
        """The pass over ``frames`` frames, or None (no entry, a shorter one, or a corrupt one)."""
        track = self.lookup(key)
        if track is None or len(track) < frames:
            return None
        return track.prefix(frames)

    def lookup(self, key: CacheKey) -> FaceTrack | None:
        """The entry's whole pass, whatever its length (None: no entry, an old-format or a corrupt one).

        A pass shorter than a run needs is a partial hit: ``track.tracker()`` resumes its tracker after
        its last frame, so only the missing frames are detected; ``put`` then stores the longer pass."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            meta, track = _read(path)
        except _OldVersion:
            return None  # an entry of an earlier layout: recomputed and replaced, nothing to warn about
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
            self.warn(f"face cache entry {path.name} is corrupt ({_reason(exc)}): faces detected again.")
            return None
        if meta.get("key") != key.digest:
            self.warn(f"face cache entry {path.name} belongs to another key: faces detected again.")
            return None
        return track

    # ----------------------------------------------------------------------------- write

    def put(self, key: CacheKey, track: FaceTrack, video: str | Path) -> Path | None:
        """Store ``track``, replacing the entry (atomically, so a reader sees the old or the new one
        whole); an entry that cannot be written is a warning, not an error."""
        path = self.path(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, _encode(key, track, str(video)))
        except OSError as exc:
            self.warn(f"face cache not written to {self.folder} ({exc.strerror or exc}); the run goes on.")
            return None
        return path

    # ----------------------------------------------------------------------------- manage

    def entries(self) -> list[CacheEntry]:
        """Every entry (readable or not), newest first."""
        out = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []:
            stat = path.stat()
            try:
                meta, _ = _read(path)
                video, frames, settings = meta["video"], int(meta["frames"]), meta["settings"]
            except _OldVersion as exc:
                video, frames, settings = f"(old format: {_reason(exc)})", 0, {}
            except Exception as exc:  # noqa: BLE001
                video, frames, settings = f"(corrupt: {_reason(exc)})", 0, {}
            out.append(CacheEntry(path, video, frames, settings, stat.st_size, stat.st_mtime))
        return sorted(out, key=lambda e: e.modified, reverse=True)

    def clear(self) -> tuple[int, int]:
        """Delete this cache's entries and its writers' leftover temporary files (nothing else in
        the folder); (files deleted, bytes freed)."""
        count = freed = 0
        if not self.folder.is_dir():
            return 0, 0
        for path in self.folder.iterdir():
            ours = path.name.endswith(SUFFIX) or (path.name.startswith(".") and SUFFIX + "." in path.name
                                                  and path.name.endswith(".tmp"))
            if ours and path.is_file():
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
                count += 1
        return count, freed


# --------------------------------------------------------------------------------- the entry format

_ARRAYS = ("present", "landmarks", "boxes", "scores", "statuses", "seen")


def _arrays(track: FaceTrack) -> dict[str, np.ndarray]:
    n = len(track)
    present = np.array([f is not None for f in track.faces], dtype=bool)
    landmarks = np.zeros((n, 68, 2), np.float32)
    boxes = np.zeros((n, 4), np.float64)
    scores = np.zeros(n, np.float64)
    for i, face in enumerate(track.faces):
        if face is not None:
            landmarks[i] = face.landmarks
            boxes[i] = face.box
            scores[i] = face.score
    statuses = np.array([STATUSES.index(s) for s in track.statuses], dtype=np.int8)
    return {"present": present, "landmarks": landmarks, "boxes": boxes, "scores": scores, "statuses": statuses,
            "seen": np.asarray(track.seen, dtype=np.int64)}


def _checksum(arrays: dict[str, np.ndarray], tracker_state: dict | None) -> str:
    """sha256 of the arrays and the tracker state (a damaged state would resume a different tracker)."""
    digest = hashlib.sha256()
    for name in _ARRAYS:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    digest.update(json.dumps(tracker_state, sort_keys=True).encode())
    return digest.hexdigest()


class _OldVersion(ValueError):
    """An entry written by another CACHE_VERSION: a quiet miss."""


def _encode(key: CacheKey, track: FaceTrack, video: str) -> bytes:
    arrays = _arrays(track)
    meta = {"version": CACHE_VERSION, "key": key.digest, "video": video, "video_sha256": key.video_sha256,
            "settings": key.settings, "frames": len(track), "written": time.time(),
            "dubbed": None if track.dubbed is None else asdict(track.dubbed), "tracker_state": track.tracker_state,
            "sha256": _checksum(arrays, track.tracker_state)}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def _read(path: Path) -> tuple[dict, FaceTrack]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        arrays = {name: data[name] for name in _ARRAYS}
    if meta.get("version") != CACHE_VERSION:
        raise _OldVersion(f"version {meta.get('version')}, expected {CACHE_VERSION}")
    if _checksum(arrays, meta.get("tracker_state")) != meta.get("sha256"):
        raise ValueError("checksum mismatch")
    n = int(meta["frames"])
    if any(len(arrays[name]) != n for name in _ARRAYS):
        raise ValueError("array lengths disagree")
    faces = [Face(arrays["landmarks"][i].copy(), tuple(float(v) for v in arrays["boxes"][i]), float(arrays["scores"][i]))
             if arrays["present"][i] else None for i in range(n)]
    statuses = [STATUSES[int(s)] for s in arrays["statuses"]]
    dubbed = meta.get("dubbed")
    if dubbed is not None:
        dubbed = DubbedFace(**{**dubbed, "box": tuple(dubbed["box"])})
    state = meta.get("tracker_state")
    if state is not None and int(state.get("frames", -1)) != n:
        raise ValueError(f"tracker state after {state.get('frames')} frames in a {n}-frame entry")
    return meta, FaceTrack(faces, statuses, [int(v) for v in arrays["seen"]], dubbed, state)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

