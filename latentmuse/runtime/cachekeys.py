"""The caches' keys: everything a cached face pass or latent depends on besides the video's content.

A key holds each weights file and the engines manifest as they are now (path, size, mtime), the
backends, device type and dtype, and every setting of the stage: change any of them and the key
misses (runtime/facecache.py, runtime/latentcache.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from ..artifacts.manifest import MANIFEST_NAME
from ..models.layouts import layout
from ..runners.select import engines_dir
from .facecache import CacheKey
from .generators.musetalk import CROP, EXTRA_MARGIN, MuseTalkGenerator
from .latentcache import LatentCache, LatentKey, LatentSession
from .options import ClipOptions
from .session import SMOKE_SEED, Session
from .tracking import TrackerSettings, parse_face_policy


def face_cache_key(clip: ClipOptions, session: Session, video_sha256: str, detection: dict | None = None) -> CacheKey:
    """Everything the face pass depends on besides the video's content (runtime/facecache.py);
    ``detection``: the front end's settings for this clip (its detection scale), when it has any."""
    front_end = session.front_end.name
    weights: object = "system dlib shape predictor"
    if front_end != "dlib":
        root = session.models.weights_root
        if root is None:
            weights = f"smoke seed {SMOKE_SEED}"
        else:
            weights = _weights_files(session, ("s3fd", "fan68"))
        weights = {"files": weights, "backends": _backends(session, ("s3fd", "fan68"))}
    settings = {"front_end": front_end, "weights": weights, "device": session.device.type,
                "dtype": session.precision,
                "face": str(parse_face_policy(clip.face)), "min_face_size": clip.min_face_size,
                "tracker": asdict(TrackerSettings())}
    if detection:
        settings["detection"] = detection
    return CacheKey(video_sha256, settings)


def latent_session(clip: ClipOptions, session: Session, face_key: CacheKey | None, n_frames: int,
                   warn: Callable[[str], None]) -> LatentSession | None:
    """The run's view of MuseTalk's latent cache (runtime/latentcache.py), keyed by the face track
    and what the VAE encoder depends on; None with the cache off."""
    if face_key is None:
        return None
    backends = _backends(session, ("vae_encoder",))
    encoder: dict = {"backends": backends}
    if session.models.weights_root is None:
        encoder["weights"] = f"smoke seed {SMOKE_SEED}"
    else:
        encoder["weights"] = _weights_files(session, ("vae",))
    if any(b != "torch" for b in backends.values()):  # an engine or ONNX graph: its manifest as it is now
        encoder["engines"] = _stat(engines_dir(session.load.engines) / MANIFEST_NAME)
    settings = {"generator": MuseTalkGenerator.name, "crop": CROP, "extra_margin": EXTRA_MARGIN, "encoder": encoder,
                "device": session.device.type, "dtype": session.precision}
    return LatentCache(clip.cache, warn).session(LatentKey(face_key.digest, settings), n_frames)


def _stat(path: Path | None) -> list | None:
    """A file as it is now (path, size, mtime): replaced in place, a cache key that holds it misses."""
    if path is None or not path.exists():
        return None
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _weights_files(session: Session, keys: Iterable[str]) -> list:
    return [_stat(layout(k, session.models.latentsync_version).locate(session.models.weights_root)) for k in keys]


def _backends(session: Session, roles: Iterable[str]) -> dict[str, str]:
    roles = set(roles)
    return {r: session.models.choices[g].backend for r, g in session.models.roles.items()
            if r in roles and g in session.models.choices}
