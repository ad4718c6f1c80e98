"""Generator-owned windows: hand-worked plans and properties over random process/passthrough patterns."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from latentmuse.runtime.datagen import Window, clip_windows, frame_windows, mirror_indices, process_runs


def tags_of(pattern: str) -> list[bool]:
    """'PP..P' -> process, process, passthrough, passthrough, process."""
    return [c == "P" for c in pattern]


def test_process_runs():
    assert process_runs(tags_of("PP..P.PPP")) == [range(0, 2), range(4, 5), range(6, 9)]
    assert process_runs(tags_of("...")) == []


def test_mirror_indices_reflect_without_repeating_the_edge():
    assert mirror_indices(range(10, 13), 8) == (10, 11, 12, 11, 10, 11, 12, 11)
    assert mirror_indices(range(4, 5), 3) == (4, 4, 4)
    assert mirror_indices(range(0, 2), 5) == (0, 1, 0, 1, 0)


def test_clip_windows_hand_worked():
    # runs: 0-39 (40 frames), 42-46 (5), 50-65 (16)
    tags = tags_of("P" * 40 + ".." + "P" * 5 + "..." + "P" * 16 + ".")
    windows = clip_windows(tags, 16)
    r = lambda a, b: tuple(range(a, b))  # noqa: E731
    assert windows == [
        Window(r(0, 16), r(0, 16)),
        Window(r(16, 32), r(16, 32)),
        Window(r(24, 40), r(32, 40)),  # overlapping tail: the run's last 16 frames, writing 32-39 only
        Window((42, 43, 44, 45, 46, 45, 44, 43, 42, 43, 44, 45, 46, 45, 44, 43), r(42, 47)),  # short run: mirrored
        Window(r(50, 66), r(50, 66)),
    ]


def test_frame_windows_hand_worked():
    tags = tags_of("PPP..PP" + "." * 10 + "PP")
    assert frame_windows(tags, 4) == [Window((0, 1, 2, 5), (0, 1, 2, 5)), Window((6,), (6,)), Window((17, 18), (17, 18))]


def check_plan(tags: list[bool], windows: list[Window], *, clip: int | None, batch: int | None) -> None:
    kept = Counter(i for w in windows for i in w.keep)
    process = [i for i, t in enumerate(tags) if t]
    assert sorted(kept) == process and set(kept.values()) <= {1}, "every process frame generated exactly once"
    runs = process_runs(tags)
    run_of = {i: k for k, run in enumerate(runs) for i in run}
    for w in windows:
        assert all(tags[i] for i in w.frames), "a passthrough frame reached a model"
        assert set(w.keep) <= set(w.frames)
        if clip is not None:
            assert len(w.frames) == clip, "static 16-frame windows, no zero padding"
            assert len({run_of[i] for i in w.frames}) == 1, "a window crossed a passthrough frame"
            run = runs[run_of[w.frames[0]]]
            if len(run) >= clip:
                assert w.frames == tuple(range(w.frames[0], w.frames[0] + clip)), "consecutive frames"
                if w.keep != w.frames:  # the tail: the run's last frames, keeping those not yet written
                    assert w.frames[-1] == run.stop - 1 and w.keep == tuple(range(w.keep[0], run.stop))
            else:
                assert w.keep == tuple(run) and w.frames == mirror_indices(run, clip)
        if batch is not None:
            assert len(w.frames) <= batch and w.frames == w.keep
            assert w.last - w.first < 2 * batch, "span bounded: memory stays bounded by a window"


@pytest.mark.parametrize("seed", range(40))
def test_random_patterns_follow_the_policies(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    # runs of process and passthrough frames of random lengths (long runs, cutaways, single frames)
    tags: list[bool] = []
    state = bool(rng.integers(0, 2))
    while len(tags) < n:
        tags += [state] * int(rng.integers(1, 60 if state else 8))
        state = not state
    tags = tags[:n]
    check_plan(tags, clip_windows(tags, 16), clip=16, batch=None)
    for batch in (1, 8):
        check_plan(tags, frame_windows(tags, batch), clip=None, batch=batch)


def test_no_process_frames_no_windows():
    assert clip_windows(tags_of("....")) == [] and frame_windows(tags_of("...."), 8) == []
