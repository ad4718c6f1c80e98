"""The incremental window planners equal the whole-clip plans they replace (issue 20).

``reference_frame_windows`` and ``reference_clip_windows`` are the whole-clip implementations as
they were before the stream (they saw every tag first); the planners see one tag at a time.
"""

from __future__ import annotations

import random

import pytest

from latentmuse.runtime.datagen import ClipWindowPlanner, FrameWindowPlanner, Window, mirror_indices, process_runs


def reference_frame_windows(tags, size, max_span=None):
    span = 2 * size if max_span is None else max_span
    windows, current = [], []
    for i, tag in enumerate(tags):
        if not tag:
            continue
        if current and (len(current) == size or i - current[0] >= span):
            windows.append(Window(tuple(current), tuple(current)))
            current = []
        current.append(i)
    if current:
        windows.append(Window(tuple(current), tuple(current)))
    return windows


def reference_clip_windows(tags, size=16):
    windows = []
    for run in process_runs(tags):
        if len(run) < size:
            windows.append(Window(mirror_indices(run, size), tuple(run)))
            continue
        full = len(run) // size * size
        for start in range(run.start, run.start + full, size):
            frames = tuple(range(start, start + size))
            windows.append(Window(frames, frames))
        if full < len(run):
            windows.append(Window(tuple(range(run.stop - size, run.stop)), tuple(range(run.start + full, run.stop))))
    return windows


def stream(planner, tags):
    """Push the tags one by one: every window with the index at which it was returned, and the
    planner's ``pending_from`` after each push."""
    out, pending = [], []
    for i, tag in enumerate(tags):
        out += [(i, w) for w in planner.push(tag)]
        pending.append(planner.pending_from)
    out += [(len(tags), w) for w in planner.finish()]
    return out, pending


def random_tags(rng: random.Random, n: int) -> list[bool]:
    """Runs and gaps of random lengths: short runs (< 16), exact multiples of 16, long ones."""
    tags: list[bool] = []
    while len(tags) < n:
        tags += [True] * rng.choice([1, 2, 5, 15, 16, 17, 31, 32, 33, rng.randint(1, 70)])
        tags += [False] * rng.choice([0, 1, 1, 2, rng.randint(1, 20)])
    return tags[:n]


def check_stream(planner, tags, reference):
    emitted, pending = stream(planner, tags)
    assert [w for _, w in emitted] == reference
    for at, window in emitted:
        assert window.last <= at  # returned once its last frame was pushed (or at the end of the clip)
    for j in range(len(tags)):
        # after frame j: a window returned later holds no frame before pending_from (or, with nothing
        # pending, only frames not yet pushed), so the stream may drop written frames before it
        bound = pending[j] if pending[j] is not None else j + 1
        assert all(w.first >= bound for at, w in emitted if at > j), (j, bound)
        assert pending[j] is None or pending[j] <= j


@pytest.mark.parametrize("seed", range(200))
def test_incremental_plans_equal_the_whole_clip_plans_on_random_patterns(seed):
    rng = random.Random(seed)
    tags = random_tags(rng, rng.randint(0, 300))
    check_stream(ClipWindowPlanner(16), tags, reference_clip_windows(tags, 16))
    size = rng.choice([1, 2, 4, 8, 16])
    span = rng.choice([None, size, size + 3, 3 * size])
    check_stream(FrameWindowPlanner(size, span), tags, reference_frame_windows(tags, size, span))


@pytest.mark.parametrize("length", range(1, 16))
def test_runs_shorter_than_a_window_are_mirror_padded_when_they_end(length):
    tags = [False] * 3 + [True] * length + [False] * 2
    emitted, pending = stream(ClipWindowPlanner(16), tags)
    assert [w for _, w in emitted] == [Window(mirror_indices(range(3, 3 + length), 16), tuple(range(3, 3 + length)))]
    assert emitted[0][0] == 3 + length  # returned at the passthrough frame that ends the run
    assert pending[3:3 + length] == [3] * length and pending[3 + length] is None
    at_end, _ = stream(ClipWindowPlanner(16), [True] * length)  # a run cut by the end of the clip
    assert [w for _, w in at_end] == reference_clip_windows([True] * length)


def test_a_long_run_returns_each_full_window_at_its_last_frame_and_the_tail_at_the_end():
    emitted, pending = stream(ClipWindowPlanner(16), [True] * 40)
    assert [(at, w.frames[0], w.keep[0], len(w.keep)) for at, w in emitted] == [(15, 0, 0, 16), (31, 16, 16, 16), (40, 24, 32, 8)]
    # while the tail is open, the earliest frame it may use is 32 + 1 - 16 = 17 (it will be 24..39)
    assert pending[31] == 17 and pending[39] == 17 and pending[15] == 1


def test_frame_windows_close_when_their_span_is_reached():
    planner = FrameWindowPlanner(4, max_span=6)
    assert planner.push(True) == [] and planner.push(False) == []
    assert [planner.push(False) for _ in range(4)] == [[], [], [], []]
    assert planner.push(False) == [Window((0,), (0,))]  # frame 6: 6 - 0 >= 6, nothing can join any more
    assert planner.pending_from is None and planner.finish() == []
