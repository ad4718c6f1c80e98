"""The dubbed face: chosen once, followed across frames (runtime/tracking.py, docs/FACES.md).

Unit tests on hand-written boxes (IoU worked by hand; faces side by side, crossing, hiding one
another, leaving and coming back; too small; landmark continuity), then the S3FD front end's
candidates, then real clips through the pipeline (two astronaut faces built here, dlib detections,
stand-in generators): only the chosen face's region changes in every frame.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest

from latentmuse.errors import LatentmuseError
from latentmuse.runtime.contracts import Face, FaceCandidate
from latentmuse.runtime.tracking import (
    DUBBED,
    LANDMARK_JUMP,
    LOST,
    NO_FACE,
    NO_LANDMARKS,
    OVERLAP,
    TOO_SMALL,
    FacePolicy,
    FaceTracker,
    box_iou,
    parse_face_policy,
)

FRAME = (480, 640, 3)


def box(x: float, y: float, w: float = 100.0, h: float | None = None) -> tuple[float, float, float, float]:
    return (x, y, x + w, y + (w if h is None else h))


def cands(*boxes) -> list[FaceCandidate]:
    return [FaceCandidate(b, 0.9) for b in boxes]


def grid_landmarks(b, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """68 points on a grid inside box ``b`` (shifted by dx, dy): a stand-in landmark set."""
    x1, y1, x2, y2 = b
    xs, ys = np.meshgrid(np.linspace(x1 + 10, x2 - 10, 17), np.linspace(y1 + 10, y2 - 10, 4))
    return (np.stack([xs.ravel(), ys.ravel()], 1)[:68] + [dx, dy]).astype(np.float32)


def follow(tracker: FaceTracker, frames) -> list:
    """Select and confirm (landmarks on the chosen box) every frame; the selections."""
    out = []
    for found in frames:
        sel = tracker.select(found, FRAME)
        face = Face(grid_landmarks(sel.candidate.box), sel.candidate.box) if sel.candidate else None
        tracker.confirm(sel, face)
        out.append(sel)
    return out


# --------------------------------------------------------------------------------------------- maths


def test_iou_worked_by_hand() -> None:
    a = (0.0, 0.0, 10.0, 10.0)
    assert box_iou(a, (5, 0, 15, 10)) == pytest.approx(50 / 150)  # half overlap: 50 / (100 + 100 - 50)
    assert box_iou(a, (5, 5, 15, 15)) == pytest.approx(25 / 175)  # quarter overlap
    assert box_iou(a, (2, 2, 8, 8)) == pytest.approx(36 / 100)  # contained: its area over the outer one
    assert box_iou(a, a) == 1.0
    assert box_iou(a, (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou(a, (30, 30, 40, 40)) == 0.0
    assert box_iou(a, (5, 5, 5, 9)) == 0.0  # empty box


# -------------------------------------------------------------------------------------------- policy


def test_face_option_parsing() -> None:
    assert parse_face_policy("largest") == FacePolicy("largest")
    assert parse_face_policy("Center") == FacePolicy("center")
    point = parse_face_policy(" 320, 180 ")
    assert point == FacePolicy("point", (320, 180)) and str(point) == "320,180"
    for bad in ("left", "1,2,3", "-1,5", "1.5,2", "", "x,y"):
        with pytest.raises(LatentmuseError) as err:
            parse_face_policy(bad)
        assert "largest, center" in err.value.message and "--face 320,180" in err.value.fix
    point.check_frame(321, 181)
    with pytest.raises(LatentmuseError) as err:
        point.check_frame(320, 480)
    assert "outside the 320 x 480 frame" in err.value.message and "0..319" in err.value.fix


def test_policies_choose_by_hand() -> None:
    a, b, c = box(0, 0, 100), box(300, 50, 120), box(270, 190, 80)  # areas 10000, 14400, 6400
    found = cands(a, b, c)
    assert FacePolicy("largest").choose(found, FRAME) == (1, None)
    # frame centre (319.5, 239.5): centres (50, 50) 329.6 px, (360, 110) 135.7 px, (310, 230) 13.4 px away
    assert FacePolicy("center").choose(found, FRAME) == (2, None)
    assert FacePolicy("point", (50, 60)).choose(found, FRAME) == (0, None)
    # (320, 200) is inside b (300..420, 50..170? no: y 200 > 170) and c (270..350, 190..270): c
    assert FacePolicy("point", (320, 200)).choose(found, FRAME) == (2, None)
    # (320, 120) is inside b only
    assert FacePolicy("point", (320, 120)).choose(found, FRAME) == (1, None)
    # (210, 100) is inside none: 110 px from a's edge, 90 px from b's, 90.6 px from c's corner (270, 190)
    index, note = FacePolicy("point", (210, 100)).choose(found, FRAME)
    assert index == 1 and "inside no face" in note
    # equal areas: the higher score, then the detector's order
    twins = [FaceCandidate(box(0, 0), 0.6), FaceCandidate(box(200, 0), 0.8), FaceCandidate(box(400, 0), 0.8)]
    assert FacePolicy("largest").choose(twins, FRAME) == (1, None)


def test_choice_is_made_once_at_first_appearance() -> None:
    small, big, bigger = box(10, 10, 50), box(300, 100, 120), box(100, 300, 160)
    tracker = FaceTracker("largest", min_face_size=64)
    sels = follow(tracker, [[], cands(small), cands(small, big), cands(small, big, bigger), cands(bigger, big)])
    assert [s.status for s in sels] == [NO_FACE, TOO_SMALL, DUBBED, DUBBED, DUBBED]
    assert all(s.candidate.box == big for s in sels[2:])  # a larger face arriving later is not taken
    assert tracker.dubbed.first_frame == 2 and tracker.dubbed.box == big and tracker.dubbed.policy == "largest"
    assert tracker.faces_seen == 3


# ---------------------------------------------------------------------------------------- following


def test_adjacent_faces_never_switch() -> None:
    rng = random.Random(0)
    tracker = FaceTracker(FacePolicy("point", (150, 150)))
    for t in range(60):
        # two faces touching side by side, both jittering by up to 4 px and size by up to 6 px
        a = box(100 + rng.uniform(-4, 4), 100 + rng.uniform(-4, 4), 100 + rng.uniform(-6, 6))
        b = box(a[2] + rng.uniform(-5, 3), 100 + rng.uniform(-4, 4), 110 + rng.uniform(-6, 6))
        found = cands(a, b) if rng.random() < 0.5 else cands(b, a)
        (sel,) = follow(tracker, [found])
        assert sel.status == DUBBED and sel.candidate.box == a, t


def test_crossing_faces_never_switch() -> None:
    """A moves right and B left at 20 px per frame, 12 px apart vertically, both always detected. At
    frame 15, A is at (300, 100) and B at (280, 112): B's box overlaps A's last box (280, 100) more
    (100 x 88 / (20000 - 8800) = 0.79) than A's own does (80 x 100 / (20000 - 8000) = 0.67), so a
    tracker matching last boxes would switch; A's box moved by its velocity is A's new box exactly."""
    tracker = FaceTracker(FacePolicy("point", (50, 150)))
    assert box_iou(box(280, 100), box(280, 112)) == pytest.approx(8800 / 11200)
    assert box_iou(box(280, 100), box(300, 100)) == pytest.approx(8000 / 12000)
    seen = []
    for t in range(30):
        a, b = box(20 * t, 100), box(580 - 20 * t, 112)
        (sel,) = follow(tracker, [cands(b, a)])
        assert sel.status == DUBBED and sel.candidate.box == a, t
        seen.append(box_iou(a, b))
    assert max(seen) > 0.5  # they did cross


def test_a_candidate_two_faces_could_own_is_given_to_neither() -> None:
    """Frame 3 has one box between A's and B's predicted boxes, overlapping both by 0.3 or more: A's
    prediction (180, 100) more (IoU 60/140 = 0.43) than B's (270, 100) (50/150 = 0.33). Greedy matching
    alone would dub it as A; it is B passing in front, so it goes to neither and A passes through."""
    a_dubbed = FacePolicy("point", (160, 150))
    frames = [cands(box(150, 100), box(300, 100)), cands(box(160, 100), box(300, 100)),
              cands(box(170, 100), box(285, 100)),  # A moves +10 per frame, B -15
              cands(box(220, 100)),  # one box, centre 270: between A's (230) and B's (320) predictions
              cands(box(190, 100), box(255, 100))]  # A again where its velocity puts it, B on the left
    tracker = FaceTracker(a_dubbed)
    sels = follow(tracker, frames)
    assert box_iou(box(180, 100), box(220, 100)) == pytest.approx(60 / 140)
    assert box_iou(box(270, 100), box(220, 100)) == pytest.approx(50 / 150)
    assert [s.status for s in sels] == [DUBBED, DUBBED, DUBBED, OVERLAP, DUBBED]
    assert sels[4].candidate.box == box(190, 100)


def test_a_face_passing_in_front_is_never_dubbed() -> None:
    """While B hides A (only B is detected), A's frames pass through; afterwards A is dubbed again."""
    tracker = FaceTracker(FacePolicy("point", (50, 150)))
    statuses = []
    for t in range(50):
        a, b = box(10 * t, 100), box(490 - 10 * t, 100)
        hidden = abs(a[0] - b[0]) < 60
        (sel,) = follow(tracker, [cands(b) if hidden else cands(a, b)])
        if sel.status == DUBBED:
            assert sel.candidate.box == a, t
        else:
            assert hidden and sel.status in (OVERLAP, LOST), (t, sel.status)
        statuses.append(sel.status)
    assert OVERLAP in statuses and statuses[-10:] == [DUBBED] * 10


def test_the_dubbed_face_leaves_and_comes_back() -> None:
    tracker = FaceTracker("largest")
    a, b = box(400, 100, 120), box(100, 120, 100)
    frames = [cands(a, b)] * 5 + [cands(b)] * 20 + [cands(box(410, 92, 115), b)] * 5
    sels = follow(tracker, frames)
    assert [s.status for s in sels] == [DUBBED] * 5 + [LOST] * 20 + [DUBBED] * 5
    assert all(s.candidate.box == a for s in sels[:5]) and all(s.candidate.box[0] == 410 for s in sels[25:])
    assert tracker.counts() == {**tracker.counts(), DUBBED: 10, LOST: 20}


def test_a_face_coming_back_elsewhere_is_another_face() -> None:
    """Without overlap (IoU < 0.3 with where it left), re-acquisition needs the centre within one box
    height of the last one and a height within a factor 1.5 of it."""
    a, b = box(400, 100, 120), box(50, 300, 100)  # a's centre (460, 160), height 120

    def returns_as(back) -> list[str]:
        assert box_iou(a, back) < 0.3
        tracker = FaceTracker("largest")
        return [s.status for s in follow(tracker, [cands(a, b)] * 3 + [cands(b)] * 3 + [cands(back, b)] * 3)]

    # centre (530, 259): sqrt(70^2 + 99^2) = 121.2 px away > 120
    assert returns_as(box(470, 199, 120)) == [DUBBED] * 3 + [LOST] * 6
    # centre (519.5, 189.5) 66.4 px away, but 79 / 120 = 0.658 < 1 / 1.5
    assert returns_as(box(480, 150, 79)) == [DUBBED] * 3 + [LOST] * 6
    # centre (522, 222) 87.7 px away, 84 / 120 = 0.7: the same face
    assert returns_as(box(480, 180, 84)) == [DUBBED] * 3 + [LOST] * 3 + [DUBBED] * 3
    # overlapping where it left (IoU 79^2 / 120^2 = 0.43), any size: the same face
    tracker = FaceTracker("largest")
    sels = follow(tracker, [cands(a, b)] * 3 + [cands(b)] * 3 + [cands(box(410, 110, 79), b)] * 3)
    assert [s.status for s in sels] == [DUBBED] * 3 + [LOST] * 3 + [DUBBED] * 3


def test_another_face_near_the_departure_point_keeps_its_own_track() -> None:
    """B, already tracked, walks to where A left: B's own track holds it, A stays lost."""
    a = box(400, 100, 120)
    tracker = FaceTracker("largest")
    frames = [cands(a, box(100, 100, 100))] * 2 + [cands(box(100 + 20 * k, 100, 100)) for k in range(1, 16)]
    sels = follow(tracker, frames)
    assert [s.status for s in sels] == [DUBBED] * 2 + [LOST] * 15


def test_too_small_frames_pass_through_and_tracking_goes_on() -> None:
    tracker = FaceTracker("largest", min_face_size=80)
    heights = [60, 70, 90, 100, 75, 70, 95]
    sels = follow(tracker, [cands(box(100, 100, h)) for h in heights])
    assert [s.status for s in sels] == [TOO_SMALL, TOO_SMALL, DUBBED, DUBBED, TOO_SMALL, TOO_SMALL, DUBBED]
    assert tracker.dubbed.first_frame == 2 and tracker.counts([0, 1, 2, 3, 4, 5, 6, 6]) == {
        **dict.fromkeys(tracker.counts(), 0), TOO_SMALL: 4, DUBBED: 4}


def test_landmark_continuity() -> None:
    tracker = FaceTracker("largest")
    b0 = box(100, 100)  # height 100: a jump of more than 25 px is rejected
    steps = [
        (b0, grid_landmarks(b0), DUBBED),
        (box(110, 100), grid_landmarks(box(110, 100), 24, 0), DUBBED),  # box moved 10, points 34: net 24 px
        (box(120, 100), grid_landmarks(box(120, 100), 24 + 26, 0), LANDMARK_JUMP),  # net 26 px vs the last accepted
        (box(120, 100), grid_landmarks(box(120, 100), 80, 0), LANDMARK_JUMP),  # centroid outside the box
        (box(120, 100), None, NO_LANDMARKS),
        (box(130, 100), grid_landmarks(box(130, 100), 24 + 5, 3), DUBBED),
    ]
    for b, pts, expected in steps:
        sel = tracker.select(cands(b), FRAME)
        got = tracker.confirm(sel, None if pts is None else Face(pts, b))
        assert tracker.statuses[-1] == expected and (got is None) == (expected != DUBBED)


def test_landmark_reference_is_dropped_after_patience() -> None:
    tracker = FaceTracker("largest")
    b = box(100, 100)
    statuses = []
    for t in range(9):
        sel = tracker.select(cands(b), FRAME)
        tracker.confirm(sel, Face(grid_landmarks(b, 0 if t == 0 else 30, 0), b))
        statuses.append(tracker.statuses[-1])
    # 5 rejections (the patience), then the shifted points are the new reference
    assert statuses == [DUBBED] + [LANDMARK_JUMP] * 5 + [DUBBED] * 3


def test_confirmation_order_and_batch_independence() -> None:
    rng = random.Random(3)
    frames = []
    for t in range(40):
        found = [box(50 + 5 * t + rng.uniform(-3, 3), 100, 90 + rng.uniform(-5, 5))]
        if rng.random() < 0.8:
            found.append(box(400 - 4 * t, 120, 100 + rng.uniform(-5, 5)))
        if rng.random() < 0.2:
            found = []
        frames.append(cands(*found))
    one = FaceTracker("center")
    follow(one, frames)
    batched = FaceTracker("center")
    for start in range(0, 40, 16):  # select a batch, then confirm it, as the pipeline does
        sels = [batched.select(f, FRAME) for f in frames[start : start + 16]]
        for sel in sels:
            batched.confirm(sel, Face(grid_landmarks(sel.candidate.box), sel.candidate.box) if sel.candidate else None)
    assert one.statuses == batched.statuses and one.dubbed == batched.dubbed
    assert set(one.statuses) >= {DUBBED, LOST}
    tracker = FaceTracker()
    first, second = tracker.select([], FRAME), tracker.select([], FRAME)
    with pytest.raises(ValueError, match="out of order"):
        tracker.confirm(second, None)
    assert tracker.confirm(first, None) is None and tracker.statuses == [NO_FACE]
    with pytest.raises(ValueError):
        FaceTracker(min_face_size=math.nan)


# ------------------------------------------------------------------------------- through the pipeline

W, H, FPS = 480, 200, 25


@pytest.fixture(scope="module")
def patches() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's face twice: 175 px (face box about 109 px) and 140 px (about 87 px), BGR."""
    import cv2
    from skimage.data import astronaut

    face = np.ascontiguousarray(astronaut()[56:196, 152:292, ::-1])  # 140 x 140 around the face
    return cv2.resize(face, (175, 175), interpolation=cv2.INTER_CUBIC), face


def two_face_clip(path, patches, positions) -> list[dict[str, tuple[int, int, int, int]]]:
    """Write a clip with the large face ("L") and the small one ("R") at ``positions[t]`` = {name: (x, y)}
    (a name left out is not in that frame) on a grey background; the patches' rectangles, clipped
    to the frame, per frame."""
    from latentmuse.runtime import media

    rects = []
    with media.VideoWriter(path, W, H, FPS, None, crf=12) as writer:
        for where in positions:
            frame = np.full((H, W, 3), 90, np.uint8)
            rect = {}
            for name, (x, y) in where.items():
                patch = patches[0] if name == "L" else patches[1]
                x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + patch.shape[1], W), min(y + patch.shape[0], H)
                if x1 > x0 and y1 > y0:
                    frame[y0:y1, x0:x1] = patch[y0 - y : y1 - y, x0 - x : x1 - x]
                    rect[name] = (x0, y0, x1, y1)
            writer.write(frame)
            rects.append(rect)
    return rects


@pytest.fixture(scope="module")
def standins():
    """Stand-in runners (stateless on the MuseTalk path), shared by the module's runs."""
    from .standins import standin_models

    return standin_models(1)[0]


def dub(video, tmp_path, models, **options):
    """The pipeline with dlib and the stand-in MuseTalk (blocky, known output) on ``video``."""
    from latentmuse.runtime import media
    from latentmuse.runtime.lipsync import run
    from latentmuse.runtime.options import RunOptions

    from .helpers import write_wav

    frames = list(media.iter_frames(video))
    audio = write_wav(tmp_path / "a.wav", len(frames) / FPS + 0.01)
    sink = media.MemorySink()
    report = run(RunOptions.flat(video=video, audio=audio, output=tmp_path / "o.mp4", face_detector="dlib",
                            generator="musetalk", **options), sink=sink, models=models)
    assert len(sink.frames) == len(frames) == report.frames_out
    return report, frames, sink.frames


def changed(a: np.ndarray, b: np.ndarray, rect=None) -> np.ndarray:
    """(N, 2) row, column of the pixels that differ, inside ``rect`` (x0, y0, x1, y1) if given."""
    diff = (a != b).any(axis=2)
    if rect is not None:
        x0, y0, x1, y1 = rect
        mask = np.zeros_like(diff)
        mask[y0:y1, x0:x1] = True
        diff &= mask
    return np.argwhere(diff)


def moving(n: int = 12) -> list[dict]:
    """L drifts right 3 px a frame; R rises 2 px a frame and drifts right 2 px: never closer than 30 px."""
    return [{"L": (10 + 3 * t, 12), "R": (230 + 2 * t, 40 - 2 * t)} for t in range(n)]


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, patches):
    path = tmp_path_factory.mktemp("two") / "two faces.mp4"
    return path, two_face_clip(path, patches, moving())


def only_region_changes(inputs, outputs, rects, chosen: str, other: str) -> None:
    for t, (a, b) in enumerate(zip(inputs, outputs)):
        assert len(changed(a, b, rects[t][chosen])) > 200, f"frame {t}: {chosen} was not dubbed"
        assert len(changed(a, b, rects[t][other])) == 0, f"frame {t}: {other} changed"
        x0, y0, x1, y1 = rects[t][chosen]
        rows, cols = changed(a, b).T
        assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1, t


@pytest.mark.parametrize("face, chosen, other", [("largest", "L", "R"), ("center", "R", "L"), ("300,110", "R", "L")])
def test_only_the_chosen_face_changes_in_every_frame(side_by_side, standins, tmp_path, face, chosen, other):
    video, rects = side_by_side
    report, inputs, outputs = dub(video, tmp_path, standins, face=face)
    only_region_changes(inputs, outputs, rects, chosen, other)
    assert report.frames_processed == len(inputs) and report.frames_no_face == 0 and report.face_passthrough == {}
    assert report.face == face and report.faces_seen == 2 and report.dubbed_face["first_frame"] == 0
    x0, y0, x1, y1 = rects[0][chosen]
    bx0, by0, bx1, by1 = report.dubbed_face["box"]
    assert x0 <= bx0 < bx1 <= x1 and y0 <= by0 < by1 <= y1  # the report names the chosen face's box
    assert not any("--min-face-size" in w or "inside no face" in w for w in report.warnings)


def test_a_pixel_outside_every_face_takes_the_nearest_and_says_so(side_by_side, standins, tmp_path):
    video, rects = side_by_side
    report, inputs, outputs = dub(video, tmp_path, standins, face="195,100")  # in the gap: 39 px to L's box, 58 to R's
    only_region_changes(inputs, outputs, rects, "L", "R")
    assert any("--face 195,100 is inside no face" in w for w in report.warnings)


def test_the_dubbed_face_leaves_the_frame_and_comes_back(tmp_path, patches, standins):
    xs = [10, 10, 10, -60, -130, -200, -200, -200, -200, -130, -60, 10, 12, 14, 16]
    positions = [{"L": (x, 12), "R": (230, 40 - 2 * t)} for t, x in enumerate(xs)]
    rects = two_face_clip(tmp_path / "leaves.mp4", patches, positions)
    report, inputs, outputs = dub(tmp_path / "leaves.mp4", tmp_path, standins)
    untouched = [t for t in range(len(xs)) if len(changed(inputs[t], outputs[t])) == 0]
    for t in range(len(xs)):
        assert len(changed(inputs[t], outputs[t], rects[t]["R"])) == 0, f"frame {t}: the other face changed"
    gone = [t for t, x in enumerate(xs) if x <= -175]
    assert set(gone) <= set(untouched) and set(range(3)).isdisjoint(untouched) and set(range(11, 15)).isdisjoint(untouched)
    for t in [*range(3), *range(11, 15)]:  # before leaving and after coming back: the same face, L
        assert len(changed(inputs[t], outputs[t], rects[t]["L"])) > 200
    assert report.frames_no_face == len(untouched) == sum(report.face_passthrough.values())
    assert report.frames_face_lost == report.face_passthrough["lost"] >= len(gone)
    # lost = exactly the frames in which the detector found nothing inside L's visible rectangle
    from latentmuse.runtime.faces import DlibFrontEnd

    def inside(c, rect) -> bool:
        return rect is not None and rect[0] <= c.center[0] < rect[2] and rect[1] <= c.center[1] < rect[3]

    found = DlibFrontEnd().candidates(inputs)
    assert untouched == [t for t in range(len(xs)) if not any(inside(c, rects[t].get("L")) for c in found[t])]
    assert report.dubbed_face["first_frame"] == 0 and report.faces_seen == 2
    from rich.console import Console

    from latentmuse.cli.run import summary_table

    console = Console(width=240, record=True, file=io.StringIO())
    console.print(summary_table(report, "run"))
    row = next(line for line in console.export_text().splitlines() if "dubbed face" in line)
    assert "largest from input frame 0 at (" in row and f"{report.frames_face_lost} lost" in row, row


def test_a_face_below_the_minimum_size_passes_through_with_the_reason(side_by_side, patches, standins, tmp_path):
    from latentmuse.runtime.faces import DlibFrontEnd

    video, rects = side_by_side
    report, inputs, outputs = dub(video, tmp_path, standins, face="center", min_face_size=100)
    # R's box (about 87 px) is below 100 px: L, the only face big enough, is chosen instead
    only_region_changes(inputs, outputs, rects, "L", "R")
    heights = [[c.height for c in found] for found in DlibFrontEnd().candidates(inputs)]
    assert all(len(h) == 2 and min(h) < 100 <= max(h) for h in heights)

    # A face is "too small" when the detector finds it below --min-face-size. dlib's detection scale
    # follows the minimum (so smaller faces are mostly not found at all, and pass through as no_face),
    # but it never shrinks the frame's short side below its window: a close-up filling a 200 px tall
    # frame is found, about 180 px, at --min-face-size 150 and 200 alike.
    import cv2

    from latentmuse.runtime import media

    big = cv2.resize(patches[1], (240, 240), interpolation=cv2.INTER_CUBIC)[20:220]
    close_up = tmp_path / "close-up.mp4"
    with media.VideoWriter(close_up, W, H, FPS, None, crf=12) as writer:
        for t in range(6):
            frame = np.full((H, W, 3), 90, np.uint8)
            frame[:, 140 + 2 * t : 380 + 2 * t] = big
            writer.write(frame)
    report, inputs, outputs = dub(close_up, tmp_path, standins, min_face_size=150)
    assert report.frames_processed == len(inputs) == 6 and report.face_passthrough == {}
    heights = [c.height for found in DlibFrontEnd().for_clip(200, W, H).candidates(inputs) for c in found]
    assert len(heights) == len(inputs) and all(150 <= h < 200 for h in heights)
    report, _, outputs = dub(close_up, tmp_path, standins, min_face_size=200)
    assert report.dubbed_face is None and report.frames_processed == 0
    assert report.frames_face_too_small == report.frames_no_face == len(inputs)
    assert report.face_passthrough == {"too_small": len(inputs)}
    assert all(np.array_equal(a, b) for a, b in zip(inputs, outputs))
    assert any("smaller than --min-face-size 200 px" in w for w in report.warnings)


# -------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, words", [(("--face", "left"), "'left' is not largest, center or X,Y"),
                                         (("--face", "3,4,5"), "e.g. --face 320,180"),
                                         (("--min-face-size", "0"), "--min-face-size")])
def test_bad_face_options_are_usage_errors(capsys, side_by_side, tmp_path, argv, words):
    from .conftest import run_cli

    video, _ = side_by_side
    code, out, err = run_cli(capsys, "run", str(video), "-o", str(tmp_path / "o.mp4"), "--weights", "smoke", *argv)
    assert code == 2 and "Traceback" not in out + err
    assert words in " ".join(err.split()) and "Usage:" in err
    assert not (tmp_path / "o.mp4").exists()


def test_a_pixel_outside_the_frame_is_one_error_before_any_loading(capsys, side_by_side, tmp_path):
    from .conftest import run_cli
    from .helpers import write_wav

    video, _ = side_by_side  # silent: the speech comes from --audio, so the face is the one mistake
    code, out, err = run_cli(capsys, "run", str(video), "-o", str(tmp_path / "o.mp4"), "--weights", "smoke",
                             "--audio", str(write_wav(tmp_path / "a.wav", 0.5)),
                             "--face-detector", "dlib", "--face", "480,10")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in out + err, out + err
    assert "--face 480,10 is outside the 480 x 200 frame" in lines[0] and "x in 0..479" in lines[0]
    assert not (tmp_path / "o.mp4").exists()


def test_s3fd_front_end_through_the_face_pass(tmp_path):
    """The smoke S3FD (random weights: noise "faces", up to 20 a frame) through the run's face stage in two
    batches, with a stand-in FAN (peaks at the heatmaps' centre): every frame gets a status, FAN sees at
    most one crop per frame, and the choice is the first frame's largest candidate."""
    import torch

    from latentmuse.models.smoke import smoke_model
    from latentmuse.runtime import media
    from latentmuse.runtime.faces import S3FDFanFrontEnd
    from latentmuse.runtime.generators.musetalk import crop_box
    from latentmuse.runtime.stream import FaceStage

    from .standins import FnRunner

    crops, found = [], []

    def fan(image: torch.Tensor) -> dict:
        crops.append(image.shape[0])
        heatmaps = torch.zeros(image.shape[0], 68, 64, 64)
        heatmaps[:, :, 28:36, 28:36] = torch.rand(image.shape[0], 68, 8, 8)  # points near the crop centre
        return {"heatmaps": heatmaps}

    fe = S3FDFanFrontEnd(smoke_model("s3fd"), FnRunner("fan68", fan), "cpu", batch_size=2)
    candidates = fe.candidates
    fe.candidates = lambda frames: found.extend(candidates(frames)) or found[-len(frames):]
    rng = np.random.default_rng(0)
    video = tmp_path / "noise.mp4"
    with media.VideoWriter(video, 128, 96, FPS, None, crf=12) as writer:
        for _ in range(4):
            writer.write(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    tracker = FaceTracker("largest", min_face_size=1)
    stage = FaceStage(fe, tracker, lambda face, shape: crop_box(face, shape) is not None, 2)
    jobs = list(stage.jobs(((i, f) for i, f in enumerate(media.iter_frames(video))), list(range(4))))
    assert [(j.out_index, j.in_index) for j in jobs] == [(i, i) for i in range(4)] and stage.detected == 4
    faces_out = [j.face for j in jobs]
    assert len(faces_out) == len(tracker.statuses) == len(found) == 4 and len(found[0]) > 1
    assert tracker.dubbed.first_frame == 0 and tracker.dubbed.box == max(found[0], key=lambda c: c.area).box
    assert crops and sum(crops) <= 4 and sum(crops) == sum(s in (DUBBED, NO_LANDMARKS, LANDMARK_JUMP) for s in tracker.statuses)
    assert all((f is not None) == (s == DUBBED) for f, s in zip(faces_out, tracker.statuses))
    assert faces_out[0] is not None and faces_out[0].box == tracker.dubbed.box
