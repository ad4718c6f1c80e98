"""MuseTalk's latent cache (runtime/latentcache.py): a second dub of a video runs no VAE encoder and
writes the same frames; prefixes, ping-pong, corrupt entries, concurrent writers, stopped runs.

The stand-in MuseTalk UNet returns each frame's reference latents, so a latent served for the wrong
input frame changes the output frame: comparing against a run without the cache catches it.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentmuse.runtime import media
from latentmuse.runtime.latentcache import FOLDER, SUFFIX, LatentCache, LatentKey
from latentmuse.runtime.lipsync import LipSync

from .standins import Notes, run_concurrently
from .helpers import write_wav

LOAD = dict(generator="musetalk", face_detector="dlib")


@pytest.fixture
def encoded(loads):
    """Counts the images the stand-in VAE encoder is given (2 per MuseTalk frame: masked + reference)."""
    runner = loads["models"].runners["vae_encoder"]
    seen = {"images": 0}
    original = runner.fn

    def counting(image):
        seen["images"] += image.shape[0]
        return original(image)

    runner.fn = counting
    yield seen
    runner.fn = original


def _frames(lipsync, clip, out, **options) -> tuple[object, np.ndarray]:
    sink = media.MemorySink()
    report = lipsync(clip.video, out, sink=sink, **options)
    return report, np.stack(sink.frames)


def _entries(cache) -> list:
    return sorted((cache / FOLDER).glob(f"*{SUFFIX}"))


def test_a_second_audio_runs_no_encoder_and_writes_the_same_frames(clip, loads, encoded, tmp_path):
    cache = tmp_path / "cache"
    audio_b = write_wav(tmp_path / "b.wav", 0.8, freq=330.0)
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        first, _ = _frames(lipsync, clip, tmp_path / "1.mp4", cache=cache)
        assert (first.latent_cache, encoded["images"]) == ("miss", 2 * 15)  # 15 frames with a face
        second, warm = _frames(lipsync, clip, tmp_path / "2.mp4", audio=audio_b, cache=cache)
        assert (second.latent_cache, encoded["images"]) == ("hit", 30)  # nothing encoded again
        assert "generate.musetalk.vae_encode" not in second.stages
        third, off = _frames(lipsync, clip, tmp_path / "3.mp4", audio=audio_b)
        assert (third.latent_cache, encoded["images"]) == ("off", 60)
    np.testing.assert_array_equal(warm, off)
    (entry,) = _entries(cache)
    data = np.load(entry, mmap_mode="r")
    assert data.shape[0] == 20 and data.dtype == np.float32
    faceless = [i for i in range(20) if i in clip.cutaway_frames]
    assert np.isnan(data[faceless, 0, 0, 0]).all() and not np.isnan(data[[0, 4, 10, 19]]).any()


def test_a_longer_ping_pong_audio_extends_a_short_entry(clip, loads, encoded, tmp_path):
    """0.4 s (frames 0-9, 5 with a face), then 1.2 s: 30 output frames over input 0-19 and back."""
    cache = tmp_path / "cache"
    short, long = write_wav(tmp_path / "s.wav", 0.4), write_wav(tmp_path / "l.wav", 1.2)
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        assert lipsync(clip.video, tmp_path / "1.mp4", audio=short, cache=cache).latent_cache == "miss"
        assert encoded["images"] == 2 * 5
        partial, extended = _frames(lipsync, clip, tmp_path / "2.mp4", audio=long, cache=cache)
        # input frames 10-19 are new; the way back (output 20-29 = input 18..9) reuses this run's
        assert partial.latent_cache == "partial" and encoded["images"] == 2 * 5 + 2 * 10
        again, cached = _frames(lipsync, clip, tmp_path / "3.mp4", audio=long, cache=cache)
        assert again.latent_cache == "hit" and encoded["images"] == 30
        fresh, off = _frames(lipsync, clip, tmp_path / "4.mp4", audio=long)
    np.testing.assert_array_equal(extended, off)
    np.testing.assert_array_equal(cached, off)
    assert fresh.frames_out == 30
    (entry,) = _entries(cache)  # the short entry was replaced
    assert np.load(entry, mmap_mode="r").shape[0] == 20


def test_a_corrupt_entry_is_encoded_again_with_a_warning(clip, loads, encoded, tmp_path):
    cache = tmp_path / "cache"
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        _, before = _frames(lipsync, clip, tmp_path / "1.mp4", cache=cache)
        (path,) = _entries(cache)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside frame 10's latents
        path.write_bytes(bytes(data))
        notes = Notes()
        report, after = _frames(lipsync, clip, tmp_path / "2.mp4", cache=cache, progress=notes)
    assert report.latent_cache == "miss" and encoded["images"] == 60
    assert any(m.startswith(f"latent cache entry {path.name} is corrupt (checksum mismatch)") for m in notes.messages)
    np.testing.assert_array_equal(before, after)
    assert [p.name for p in _entries(cache)] == [path.name]  # rewritten under its content name
    rows = LatentCache(cache).open(_key(path))
    assert rows is not None and len(rows) == 20
    rows.close()


def _key(path) -> LatentKey:
    """A key whose digest is the entry's (tests that bypass the pipeline)."""
    digest = path.name.split(".")[0]

    class Known(LatentKey):
        @property
        def digest(self) -> str:
            return digest

    return Known("", {})


def test_concurrent_writers_of_one_key_publish_one_whole_entry(tmp_path):
    cache = LatentCache(tmp_path)
    key = LatentKey("f" * 32, {"encoder": "test"})
    latents = np.random.default_rng(0).standard_normal((6, 8, 4, 4)).astype(np.float32)

    def write() -> None:
        for _ in range(10):
            session = cache.session(key, 6)
            session.record(range(6), latents)
            session.finish()

    assert not run_concurrently(write, [()] * 4)
    (entry,) = _entries(tmp_path)  # one name per content, and no temporary file left
    assert [p.name for p in (tmp_path / FOLDER).iterdir()] == [entry.name]
    np.testing.assert_array_equal(np.load(entry), latents)
    rows = cache.open(key)
    np.testing.assert_array_equal(np.stack([rows.get(i) for i in range(6)]), latents)
    rows.close()


def test_a_stopped_run_leaves_nothing_and_a_served_frame_is_exact(tmp_path):
    cache = LatentCache(tmp_path)
    key = LatentKey("a" * 32, {})
    latents = np.arange(3 * 8 * 2 * 2, dtype=np.float16).reshape(3, 8, 2, 2)
    with cache.session(key, 5) as stopped:  # a run that raised before finish()
        stopped.record([0, 2, 4], latents)
    assert list((tmp_path / FOLDER).iterdir()) == []
    session = cache.session(key, 5)
    session.record([4, 2, 0], latents)
    assert session.status == "miss" and session.finish() is not None
    reader = cache.session(key, 5)
    got = reader.lookup([0, 1, 2, 3, 4])
    assert got[1] is None and got[3] is None
    np.testing.assert_array_equal(np.stack([got[4], got[2], got[0]]), latents)
    assert got[0].dtype == np.float16 and reader.status == "hit" and reader.served == 3


def test_latentsync_runs_leave_the_latent_cache_unused(clip, loads, encoded, tmp_path):
    with LipSync.from_weights("smoke", generator="latentsync", face_detector="dlib") as lipsync:
        report = lipsync(clip.video, tmp_path / "1.mp4", cache=tmp_path / "cache")
    assert report.face_cache == "miss" and report.latent_cache == "unused" and report.frames_processed == 15
    assert _entries(tmp_path / "cache") == []
