"""A face pass extended instead of recomputed (runtime/tracking.py state/resume, runtime/facecache.py).

The reference is one tracker over all N frames. Against it: a tracker over the first k frames, its
state through JSON, resumed over the remaining N - k frames, for every k from 0 to N; and the face
cache holding a k-frame pass that a longer run extends. The clips are seeded random candidate
sequences (several faces moving, crossing, missed, too small; the dubbed face leaving and coming
back; landmarks now and then missing or jumping), and a check that they reach every status keeps
the comparison from being vacuous.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from latentmuse.runtime import facecache
from latentmuse.runtime.contracts import Face, FaceCandidate
from latentmuse.runtime.facecache import CacheKey, FaceCache, FaceTrack, _read
from latentmuse.runtime.tracking import DUBBED, LOST, STATUSES, FacePolicy, FaceTracker, TrackerSettings

FRAME = (360, 640, 3)
N = 60


def grid(box, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """68 points on a grid inside ``box``, shifted by (dx, dy): a stand-in landmark set."""
    x1, y1, x2, y2 = box
    xs, ys = np.meshgrid(np.linspace(x1 + 0.1 * (x2 - x1), x2 - 0.1 * (x2 - x1), 17),
                         np.linspace(y1 + 0.1 * (y2 - y1), y2 - 0.1 * (y2 - y1), 4))
    return (np.stack([xs.ravel(), ys.ravel()], 1) + [dx, dy]).astype(np.float32)


def scenario(seed: int) -> list[list[FaceCandidate]]:
    """N frames of candidates: a few faces with their own start, velocity, size (some growing across
    --min-face-size 64), dropouts, one long absence (leaving and coming back near where it left), and
    a face that crosses the others. Two empty frames first (no_face)."""
    rng = random.Random(seed)
    faces = []
    for k in range(rng.randint(2, 4)):
        size = rng.uniform(50, 130)
        faces.append({"x": rng.uniform(40, 480), "y": rng.uniform(40, 200), "vx": rng.uniform(-6, 6),
                      "vy": rng.uniform(-2, 2), "size": size, "grow": rng.uniform(-0.8, 0.8),
                      "present": rng.uniform(0.75, 1.0), "away": (rng.randint(10, 35), rng.randint(4, 12)),
                      "start": rng.randint(2, 8)})
    faces.append({"x": 600.0, "y": 120.0, "vx": -14.0, "vy": 0.0, "size": 95.0, "grow": 0.0, "present": 0.95,
                  "away": (0, 0), "start": 2})  # the crosser
    frames = []
    for t in range(N):
        found = []
        for f in faces:
            gone_from, gone_for = f["away"]
            if t < f["start"] or gone_from <= t < gone_from + gone_for or rng.random() > f["present"]:
                continue
            side = max(20.0, f["size"] + f["grow"] * t) * rng.uniform(0.97, 1.03)
            x, y = f["x"] + f["vx"] * t + rng.uniform(-2, 2), f["y"] + f["vy"] * t + rng.uniform(-2, 2)
            found.append(FaceCandidate((x, y, x + side, y + side * 1.1), round(rng.uniform(0.6, 1.0), 3)))
        if rng.random() < 0.05:  # a stray false positive
            x, y = rng.uniform(0, 560), rng.uniform(0, 280)
            found.append(FaceCandidate((x, y, x + 70.0, y + 70.0), 0.55))
        frames.append(sorted(found, key=lambda c: -c.score))
    return frames


def landmarks_for(seed: int, t: int, candidate: FaceCandidate) -> Face | None:
    """The landmarker's answer in frame ``t``: a function of the frame and the candidate only (never of
    how many frames a tracker saw), sometimes missing, sometimes jumping."""
    rng = np.random.default_rng([seed, t])
    roll = rng.random()
    if roll < 0.06:
        return None
    jump = 0.4 * candidate.height if roll < 0.2 else 0.0
    pts = grid(candidate.box, jump + rng.normal(0, 1.0), rng.normal(0, 1.0))
    return Face(pts, candidate.box, candidate.score)


def run(tracker: FaceTracker, seed: int, frames, start: int, batch: int = 4, track: FaceTrack | None = None):
    """Frames ``start`` on through ``tracker``, selected ``batch`` at a time then confirmed in order
    (as the pipeline does); the faces it returns. With ``track``, confirmed through the track."""
    out = []
    for b in range(start, len(frames), batch):
        sels = [tracker.select(frames[t], FRAME) for t in range(b, min(b + batch, len(frames)))]
        for sel in sels:
            face = landmarks_for(seed, sel.index, sel.candidate) if sel.candidate is not None else None
            out.append(track.confirm(tracker, sel, face) if track is not None else tracker.confirm(sel, face))
    return out


def same_faces(a: list[Face | None], b: list[Face | None]) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and x.box == y.box and x.score == y.score
                                      and np.array_equal(x.landmarks, y.landmarks)) for x, y in zip(a, b))


POLICIES = ["largest", "center", FacePolicy("point", (300, 150))]
SEEDS = range(8)


def reference(seed: int, policy) -> tuple[FaceTracker, list]:
    tracker = FaceTracker(policy, 64)
    return tracker, run(tracker, seed, scenario(seed), 0)


def test_the_scenarios_reach_every_status_and_lose_and_find_the_dubbed_face() -> None:
    """The comparisons below are only as good as the clips: together they reach every status, and
    in some the dubbed face is lost and then dubbed again."""
    seen: set[str] = set()
    lost_and_found = 0
    for seed in SEEDS:
        for policy in POLICIES:
            tracker, _ = reference(seed, policy)
            seen.update(tracker.statuses)
            s = "".join("D" if x == DUBBED else "L" if x == LOST else "." for x in tracker.statuses)
            lost_and_found += "DL" in s and "LD" in s[s.index("DL"):]
    assert seen == set(STATUSES)
    assert lost_and_found >= 3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_resumed_tracker_equals_one_tracker_for_every_split(seed: int, policy) -> None:
    frames = scenario(seed)
    whole, whole_faces = reference(seed, policy)
    for k in range(N + 1):
        first = FaceTracker(policy, 64)
        head = run(first, seed, frames[:k], 0, batch=3)
        state = json.loads(json.dumps(first.state()))
        assert state == first.state()  # plain JSON types only: what is stored is what was taken
        resumed = FaceTracker.resume(state, statuses=first.statuses, seen=first.seen_by_frame)
        tail = run(resumed, seed, frames, k, batch=5)
        assert same_faces(head + tail, whole_faces), k
        assert resumed.statuses == whole.statuses, k
        assert resumed.seen_by_frame == whole.seen_by_frame and resumed.faces_seen == whole.faces_seen, k
        assert resumed.dubbed == whole.dubbed, k
        assert resumed.state() == whole.state(), k


def test_state_is_taken_between_frames_only_and_resume_checks_what_it_is_given() -> None:
    frames = scenario(1)
    tracker = FaceTracker("largest", 64, TrackerSettings(coast_frames=3))
    run(tracker, 1, frames[:10], 0)
    state = tracker.state()
    assert state["frames"] == 10 and state["settings"]["coast_frames"] == 3
    again = FaceTracker.resume(state, statuses=tracker.statuses, seen=tracker.seen_by_frame)
    assert again.settings == tracker.settings and again.policy == tracker.policy and again.min_face_size == 64
    sel = tracker.select(frames[10], FRAME)
    with pytest.raises(ValueError, match="not yet confirmed"):
        tracker.state()
    tracker.confirm(sel, None)
    with pytest.raises(ValueError, match="history"):
        FaceTracker.resume(state, statuses=tracker.statuses, seen=tracker.seen_by_frame)  # 11 for a 10-frame state
    with pytest.raises(ValueError, match="version"):
        FaceTracker.resume({**state, "version": 0}, statuses=[], seen=[])


# ------------------------------------------------------------------------------------------ the cache


def key() -> CacheKey:
    return CacheKey("ab" * 32, {"front_end": "test", "face": "largest", "min_face_size": 64})


def test_a_short_entry_is_extended_to_exactly_the_one_pass_result(tmp_path) -> None:
    seed, frames = 5, scenario(5)
    whole, whole_faces = reference(seed, "largest")
    one_pass = FaceTrack.from_tracker(whole_faces, whole)
    notes: list[str] = []
    cache = FaceCache(tmp_path, notes.append)
    for k in (0, 1, 17, 33, N - 1):
        # a first run of k frames, built frame by frame as a stream does, then stored
        tracker = FaceTracker("largest", 64)
        track = FaceTrack()
        run(tracker, seed, frames[:k], 0, track=track)
        track.checkpoint(tracker)
        cache.put(key(), track, "v.mp4")
        assert cache.get(key(), k + 1) is None  # a full hit needs every frame
        partial = cache.lookup(key())
        assert partial is not None and len(partial) == k and partial.tracker_state == track.tracker_state
        # the longer run detects frames k.. only
        resumed = partial.tracker()
        run(resumed, seed, frames, k, track=partial)
        assert partial.tracker_state is None  # appended: the stored state no longer describes the end
        partial.checkpoint(resumed)
        cache.put(key(), partial, "v.mp4")
        stored = cache.get(key(), N)
        assert stored is not None and len(stored) == N
        assert same_faces(stored.faces, one_pass.faces), k
        assert (stored.statuses, stored.seen, stored.dubbed) == (one_pass.statuses, one_pass.seen, one_pass.dubbed), k
        assert stored.tracker_state == one_pass.tracker_state, k
        cache.clear()
    assert notes == []


def test_prefixes_hit_and_cannot_be_extended(tmp_path) -> None:
    whole, faces = reference(2, "center")
    cache = FaceCache(tmp_path)
    cache.put(key(), FaceTrack.from_tracker(faces, whole), "v.mp4")
    short = cache.get(key(), 20)
    assert short is not None and len(short) == 20 and short.statuses == whole.statuses[:20]
    assert short.tracker_state is None
    with pytest.raises(ValueError, match="no tracker state"):
        short.tracker()
    full = cache.get(key(), N)
    assert full is not None and full.tracker_state == whole.state()
    with pytest.raises(ValueError, match="does not end"):
        short.checkpoint(whole)


def test_an_old_format_entry_is_a_quiet_miss(tmp_path, monkeypatch) -> None:
    whole, faces = reference(3, "largest")
    track = FaceTrack.from_tracker(faces, whole)
    notes: list[str] = []
    cache = FaceCache(tmp_path, notes.append)
    with monkeypatch.context() as m:
        m.setattr(facecache, "CACHE_VERSION", 1)
        old_path = cache.put(key(), track, "v.mp4")
        assert cache.lookup(key()) is not None  # readable by the version that wrote it
    assert old_path is not None and old_path != cache.path(key())  # the version is part of the key
    assert cache.lookup(key()) is None and cache.get(key(), 1) is None
    cache.path(key()).write_bytes(old_path.read_bytes())  # even under the current key's name
    assert cache.lookup(key()) is None
    assert notes == []
    assert all(e.video.startswith("(old format: version 1") for e in cache.entries())
    cache.put(key(), track, "v.mp4")  # replaced by the recomputed pass
    assert cache.get(key(), N) is not None


def test_a_damaged_tracker_state_is_corrupt(tmp_path) -> None:
    whole, faces = reference(4, "largest")
    notes: list[str] = []
    cache = FaceCache(tmp_path, notes.append)
    path = cache.put(key(), FaceTrack.from_tracker(faces, whole), "v.mp4")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    assert meta["tracker_state"] == whole.state()
    meta["tracker_state"]["rejections"] += 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as out:
        np.savez(out, **arrays)
    assert cache.lookup(key()) is None
    assert len(notes) == 1 and "checksum mismatch" in notes[0]
    with pytest.raises(ValueError, match="checksum"):
        _read(path)


def test_append_checks_the_status_and_confirm_the_frame() -> None:
    track = FaceTrack()
    with pytest.raises(ValueError, match="unknown face status"):
        track.append(None, "gone", 0)
    tracker = FaceTracker()
    tracker.select([], FRAME)
    second = tracker.select([], FRAME)
    with pytest.raises(ValueError, match="confirmed into a track of 0"):
        track.confirm(tracker, second, None)
    assert len(track) == 0 and track.statuses == []  # nothing appended by the refused calls
