"""The Python API (``LipSync``) and the face-track cache.

Stand-in runners (tests/standins.py) make a clip take about a second with exact results; the models
are loaded through the patched ``session.load_run_models``, which counts its calls.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentmuse.errors import LatentmuseError
from latentmuse.runtime import media
from latentmuse.runtime.facecache import SUFFIX, FaceCache
from latentmuse.runtime.lipsync import LipSync
from latentmuse.runtime.lipsync import run as lipsync_run
from latentmuse.runtime.options import ClipOptions, LoadOptions, RunOptions

from .conftest import run_cli
from .standins import Notes, run_concurrently
from .helpers import write_wav

LOAD = dict(generator="musetalk", face_detector="dlib")


@pytest.fixture
def detections(monkeypatch):
    """Counts the frames the dlib front end is asked to find faces in."""
    from latentmuse.runtime.faces import DlibFrontEnd

    seen = {"frames": 0}
    original = DlibFrontEnd.candidates

    def counting(self, frames):
        seen["frames"] += len(frames)
        return original(self, frames)

    monkeypatch.setattr(DlibFrontEnd, "candidates", counting)
    return seen


def frames_of(sink: media.MemorySink) -> np.ndarray:
    return np.stack(sink.frames)


def test_two_clips_one_load_and_the_same_frames_as_one_shot_runs(clip, loads, tmp_path):
    audio_b = write_wav(tmp_path / "b.wav", 0.6, freq=330.0)
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        assert loads["n"] == 1 and lipsync.loads == 1  # loaded at construction
        first, second = media.MemorySink(), media.MemorySink()
        a = lipsync(clip.video, tmp_path / "a.mp4", sink=first)
        b = lipsync(clip.video, tmp_path / "b.mp4", audio=audio_b, sink=second, face="center")
    assert loads["n"] == 1 and lipsync.loads == 1
    assert (a.frames_out, b.frames_out) == (20, 15) and a.status == b.status == "ok"
    assert b.stages["load_models"] < a.stages["load_models"] + 1.0 and b.face == "center"
    # the same clip as a one-shot run (which loads again) gives the very same frames
    alone = media.MemorySink()
    lipsync_run(RunOptions.flat(video=clip.video, output=tmp_path / "c.mp4", weights="smoke", **LOAD), sink=alone)
    assert loads["n"] == 2
    np.testing.assert_array_equal(frames_of(first), frames_of(alone))


def test_lazy_load_waits_for_a_good_clip_and_options_are_checked(clip, loads, tmp_path):
    lipsync = LipSync(LoadOptions(weights="smoke", **LOAD), lazy=True)
    with pytest.raises(LatentmuseError, match="does not exist"):
        lipsync(tmp_path / "missing.mp4", tmp_path / "out.mp4")
    assert loads["n"] == 0 and not lipsync.loaded  # a bad input costs no load
    with pytest.raises(TypeError, match="guidance is a load-time option"):
        lipsync(clip.video, tmp_path / "out.mp4", guidance=1.0)
    with pytest.raises(TypeError, match="unknown clip option"):
        lipsync(clip.video, tmp_path / "out.mp4", stepz=3)
    with pytest.raises(TypeError, match="unknown load option"):
        LipSync.from_weights("smoke", steps=3)
    with pytest.raises(LatentmuseError, match="--backend tpu is not known"):
        LipSync(LoadOptions(backend="tpu"))
    report = lipsync(clip.video, tmp_path / "out.mp4", options=ClipOptions(steps=1))
    assert report.frames_out == 20 and loads["n"] == 1
    lipsync.close()
    lipsync.close()  # idempotent
    with pytest.raises(LatentmuseError, match="closed"):
        lipsync(clip.video, tmp_path / "again.mp4")


def test_a_failing_clip_leaves_the_models_loaded_for_the_next(clip, loads, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        with pytest.raises(LatentmuseError):
            lipsync(bad, tmp_path / "x.mp4", report=tmp_path / "x.json")
        assert json.loads((tmp_path / "x.json").read_text())["status"] == "error"
        assert not (tmp_path / "x.mp4").exists()
        assert lipsync(clip.video, tmp_path / "y.mp4").status == "ok"
    assert loads["n"] == 1


def test_top_level_import_is_lazy():
    import latentmuse

    assert latentmuse.LipSync is LipSync and latentmuse.LoadOptions is LoadOptions


# ------------------------------------------------------------------------------------- face cache


def test_second_audio_on_a_video_skips_detection_and_matches(clip, loads, detections, tmp_path):
    cache = tmp_path / "cache"
    audio_b = write_wav(tmp_path / "b.wav", 0.8, freq=330.0)
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        cold, warm, off = media.MemorySink(), media.MemorySink(), media.MemorySink()
        first = lipsync(clip.video, tmp_path / "1.mp4", cache=cache, sink=cold)
        assert (first.face_cache, detections["frames"]) == ("miss", 20)
        second = lipsync(clip.video, tmp_path / "2.mp4", audio=audio_b, cache=cache, sink=warm)
        assert (second.face_cache, detections["frames"]) == ("hit", 20)  # no frame detected again
        third = lipsync(clip.video, tmp_path / "3.mp4", audio=audio_b, sink=off)
        assert (third.face_cache, detections["frames"]) == ("off", 40)
    np.testing.assert_array_equal(frames_of(warm), frames_of(off))  # the cached pass is the detected one
    for field in ("dubbed_face", "faces_seen", "frames_no_face", "face_passthrough", "frames_face_lost"):
        assert getattr(second, field) == getattr(third, field), field
    assert second.face_passthrough == {"lost": 5}
    (entry,) = FaceCache(cache).entries()
    assert entry.frames == 20 and entry.video == str(clip.video)


def test_a_shorter_audio_hits_a_longer_one_extends(clip, loads, detections, tmp_path):
    cache = tmp_path / "cache"
    short, long = write_wav(tmp_path / "s.wav", 0.4), write_wav(tmp_path / "l.wav", 0.8)
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        assert lipsync(clip.video, tmp_path / "1.mp4", audio=short, cache=cache).face_cache == "miss"
        assert detections["frames"] == 10
        extended, whole = media.MemorySink(), media.MemorySink()
        longer = lipsync(clip.video, tmp_path / "2.mp4", audio=long, cache=cache, sink=extended)
        assert longer.face_cache == "partial" and detections["frames"] == 20  # only the 10 missing frames
        (entry,) = FaceCache(cache).entries()
        assert entry.frames == 20  # the longer track replaced the entry
        again = lipsync(clip.video, tmp_path / "3.mp4", audio=short, cache=cache)
        assert again.face_cache == "hit" and detections["frames"] == 20
        off = lipsync(clip.video, tmp_path / "4.mp4", audio=long, sink=whole)
        assert off.face_cache == "off" and detections["frames"] == 40
    assert again.face_passthrough == {"lost": 5} and again.frames_out == 10
    # the resumed tracker gives exactly what one pass over all the frames gives
    np.testing.assert_array_equal(frames_of(extended), frames_of(whole))
    for field in ("dubbed_face", "faces_seen", "frames_no_face", "face_passthrough", "frames_face_lost"):
        assert getattr(longer, field) == getattr(off, field), field


def test_other_front_end_settings_miss(clip, loads, detections, tmp_path):
    cache = tmp_path / "cache"
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        lipsync(clip.video, tmp_path / "1.mp4", cache=cache)
        assert lipsync(clip.video, tmp_path / "2.mp4", cache=cache, min_face_size=40).face_cache == "miss"
        assert lipsync(clip.video, tmp_path / "3.mp4", cache=cache, face="center").face_cache == "miss"
        assert lipsync(clip.video, tmp_path / "4.mp4", cache=cache, steps=3).face_cache == "hit"
    assert len(FaceCache(cache).entries()) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_entry_is_recomputed_with_a_warning(clip, loads, detections, tmp_path, damage):
    cache = tmp_path / "cache"
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        lipsync(clip.video, tmp_path / "1.mp4", cache=cache)
        (path,) = (cache / "faces").glob(f"*{SUFFIX}")
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        elif damage == "flip":  # inside the landmarks array: zip's CRC or our checksum must catch it
            data[len(data) // 2] ^= 0xFF
        else:
            data = bytearray(b"\0" * 100)
        path.write_bytes(bytes(data))
        notes = Notes()
        report = lipsync(clip.video, tmp_path / "2.mp4", cache=cache, progress=notes)
    assert report.face_cache == "miss" and detections["frames"] == 40
    assert any(m.startswith(f"face cache entry {path.name} is corrupt") for m in notes.messages), notes.messages
    assert any("face cache entry" in w for w in report.warnings)
    (entry,) = FaceCache(cache).entries()
    assert entry.frames == 20  # rewritten whole


def test_concurrent_writers_of_one_entry_leave_a_whole_one(clip, loads, tmp_path):
    cache = tmp_path / "cache"
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        lipsync(clip.video, tmp_path / "1.mp4", cache=cache)
    store = FaceCache(cache)
    (path,) = (cache / "faces").glob(f"*{SUFFIX}")
    from latentmuse.runtime.facecache import _read

    meta, track = _read(path)
    key = _key_of(meta)
    errors = run_concurrently(lambda: [store.put(key, track, "v.mp4") for _ in range(20)], [()] * 4)
    assert not errors
    assert [p.name for p in (cache / "faces").iterdir()] == [path.name]  # no temporary files left
    _, again = _read(path)
    assert again.statuses == track.statuses
    np.testing.assert_array_equal(np.stack([f.landmarks for f in again.faces if f is not None]),
                                  np.stack([f.landmarks for f in track.faces if f is not None]))


def _key_of(meta):
    from latentmuse.runtime.facecache import CacheKey

    return CacheKey(meta["video_sha256"], meta["settings"])


def test_cache_ls_and_clear_touch_only_entries(clip, loads, tmp_path, capsys):
    cache = tmp_path / "cache"
    with LipSync.from_weights("smoke", **LOAD) as lipsync:
        lipsync(clip.video, tmp_path / "1.mp4", cache=cache)
    foreign = cache / "faces" / "notes.txt"
    foreign.write_text("mine")
    code, out, _ = run_cli(capsys, "cache", "ls", "--cache", str(cache))
    assert code == 0 and "20" in out and "sample.mp4" in out and "1 entr" in out
    code, out, _ = run_cli(capsys, "cache", "clear", "--cache", str(cache))
    assert code == 0 and "deleted 1 file" in out
    assert foreign.read_text() == "mine" and not list((cache / "faces").glob(f"*{SUFFIX}"))
    code, out, _ = run_cli(capsys, "cache", "ls", "--cache", str(cache))
    assert code == 0 and "no entries" in out
