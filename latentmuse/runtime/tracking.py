"""Which face is dubbed: chosen once, then followed from frame to frame (docs/FACES.md).

A front end reports every face candidate of a frame (a detector box and score). The
:class:`FaceTracker` sees the frames in order and keeps a *track* per face in view, so the dubbed face
is one track, never "whichever face scores best in this frame" (with several people in view that
made the mouth jump between them):

1. **Matching by overlap.** Each track predicts its box in the new frame (its last box moved by its
   last per-frame velocity, for at most ``coast_frames`` frames of absence). Track/candidate pairs are
   matched greedily, highest intersection over union (IoU) first, if the IoU is at least
   ``match_iou``. A face next to the dubbed one is matched to its own track, so the dubbed track
   cannot take it.
2. **Overlapping faces.** A matched candidate that another recently seen track (absent at most
   ``coast_frames`` frames) that got no candidate also overlaps by ``match_iou`` could belong to
   either (one face passing in front of another): it is given to neither, and both tracks coast
   through the frame on their velocities. The dubbed face's frame passes through (``overlap``).
3. **Re-acquisition.** A track without a match takes a free candidate whose centre is within
   ``reacquire_distance`` of the track's last box heights from that box's centre and whose height is
   within a factor ``reacquire_size`` of it (nearest first). This is how the dubbed face that left the
   frame is found again when it comes back where it left, however long it was away. Every other free
   candidate starts a new track; tracks other than the dubbed one are forgotten after
   ``forget_after`` frames without a match.
4. **The choice**, once, at the first frame with a face at least ``min_face_size`` pixels tall (box
   height), among those faces (:class:`FacePolicy`): the largest (box area), the one nearest the frame
   centre, or the one containing (else nearest to) a given pixel.
5. **Landmark continuity.** Landmarks are computed for the dubbed face's candidate only; they are
   accepted (:meth:`FaceTracker.confirm`) when their centroid lies inside the candidate's box and,
   relative to the last accepted landmarks of the same appearance, their median point moved at most
   ``landmark_jump`` box heights once the box's own motion is taken out. After ``landmark_patience``
   consecutive rejections the reference is dropped (the face really changed, e.g. a quick head turn).

Every frame gets one status (:data:`STATUSES`); every frame but ``dubbed`` ones passes through
unchanged. The tracker is pure Python + numpy and sees only boxes and landmarks, so the decisions do
not depend on how frames are batched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from ..errors import LatentmuseError
from .contracts import Face, FaceCandidate
from .defaults import DEFAULT_MIN_FACE_SIZE

__all__ = [
    "DEFAULT_MIN_FACE_SIZE",
    "DUBBED",
    "FacePolicy",
    "FaceTracker",
    "REASONS",
    "STATUSES",
    "DubbedFace",
    "Selection",
    "STATE_VERSION",
    "TrackerSettings",
    "box_iou",
    "parse_face_policy",
]

Box = tuple[float, float, float, float]

# Per-frame statuses: one per input frame, in this order of precedence in the docs.
DUBBED = "dubbed"  # the dubbed face, with accepted landmarks
NO_FACE = "no_face"  # before the choice: no face in the frame
TOO_SMALL = "too_small"  # the dubbed face (before the choice: every face) is below min_face_size
LOST = "lost"  # the dubbed face has no candidate in this frame (left, hidden, missed)
OVERLAP = "overlap"  # the dubbed face's candidate could belong to another face as well
NO_LANDMARKS = "no_landmarks"  # the landmarker gave degenerate landmarks, or they make no crop
LANDMARK_JUMP = "landmark_jump"  # landmarks outside the box, or jumped since the last accepted ones
STATUSES = (DUBBED, NO_FACE, TOO_SMALL, LOST, OVERLAP, NO_LANDMARKS, LANDMARK_JUMP)
#: Why a frame passed through, in words (the run table and docs/FACES.md).
REASONS = {
    NO_FACE: "no face in view",
    TOO_SMALL: "face smaller than --min-face-size",
    LOST: "dubbed face not found (left the frame, hidden or missed)",
    OVERLAP: "dubbed face overlapping another face",
    NO_LANDMARKS: "no usable landmarks",
    LANDMARK_JUMP: "landmarks jumped away from the face",
}


# ------------------------------------------------------------------------------------------ policy


@dataclass(frozen=True)
class FacePolicy:
    """How the dubbed face is chosen at its first appearance (``--face``).

    ``largest``: the largest box area (ties: higher score, then the detector's order). ``center``: the
    box centre nearest the frame centre ((W - 1) / 2, (H - 1) / 2) in pixel-index coordinates (ties:
    larger area). ``point``: a box containing pixel ``(x, y)``, the one whose centre is nearest if
    several do; if none does, the box nearest to the pixel (ties: nearer centre).
    """

    kind: Literal["largest", "center", "point"] = "largest"
    point: tuple[int, int] | None = None

    def __str__(self) -> str:
        return f"{self.point[0]},{self.point[1]}" if self.kind == "point" and self.point else self.kind

    def check_frame(self, width: int, height: int) -> None:
        """A pixel policy must name a pixel of the frame (checked before anything loads)."""
        if self.kind == "point" and self.point is not None:
            x, y = self.point
            if not (0 <= x < width and 0 <= y < height):
                raise LatentmuseError(
                    f"--face {self} is outside the {width} x {height} frame.",
                    f"use a pixel x,y with x in 0..{width - 1} and y in 0..{height - 1}, or --face largest.",
                )

    def choose(self, candidates: Sequence[FaceCandidate], frame_shape: Sequence[int]) -> tuple[int, str | None]:
        """Index of the chosen candidate, and a note when a pixel policy's pixel is inside no box."""
        if not candidates:
            raise ValueError("no candidates to choose from")
        order = range(len(candidates))
        if self.kind == "largest":
            return min(order, key=lambda i: (-candidates[i].area, -candidates[i].score, i)), None
        if self.kind == "center":
            h, w = int(frame_shape[0]), int(frame_shape[1])
            target = ((w - 1) / 2, (h - 1) / 2)
            return min(order, key=lambda i: (_distance(candidates[i].center, target), -candidates[i].area, i)), None
        assert self.point is not None
        px, py = self.point
        inside = [i for i in order if _box_distance(candidates[i].box, (px, py)) == 0.0]
        if inside:
            return min(inside, key=lambda i: (_distance(candidates[i].center, (px, py)), i)), None
        best = min(order, key=lambda i: (_box_distance(candidates[i].box, (px, py)), _distance(candidates[i].center, (px, py)), i))
        return best, f"--face {self} is inside no face; the nearest was chosen"


_POINT = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")


def parse_face_policy(value: str | FacePolicy) -> FacePolicy:
    """``--face``: ``largest``, ``center`` or ``x,y`` (a pixel, column then row, of the face at its first
    appearance). Anything else is one :class:`LatentmuseError` naming the accepted forms."""
    if isinstance(value, FacePolicy):
        return value
    text = str(value).strip().lower()
    if text in ("largest", "center"):
        return FacePolicy(text)  # type: ignore[arg-type]
    match = _POINT.match(text)
    if match:
        return FacePolicy("point", (int(match.group(1)), int(match.group(2))))
    raise LatentmuseError(
        f"--face {value!r} is not largest, center or a pixel x,y.",
        "use --face largest (the default), --face center, or --face X,Y with the pixel column and row of the face "
        "in its first frame, e.g. --face 320,180.",
    )


# -------------------------------------------------------------------------------------------- maths


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (continuous coordinates; 0 for empty boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _distance(p: Sequence[float], q: Sequence[float]) -> float:
    return math.hypot(p[0] - q[0], p[1] - q[1])


def _box_distance(box: Sequence[float], p: Sequence[float]) -> float:
    """Distance from point ``p`` to the box (0 inside or on its edge)."""
    dx = max(box[0] - p[0], 0.0, p[0] - box[2])
    dy = max(box[1] - p[1], 0.0, p[1] - box[3])
    return math.hypot(dx, dy)


def _center(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _height(box: Sequence[float]) -> float:
    return box[3] - box[1]


# ------------------------------------------------------------------------------------------ tracker


@dataclass(frozen=True)
class TrackerSettings:
    """The tracker's thresholds (docs/FACES.md explains each)."""

    match_iou: float = 0.3  # a track continues on a candidate overlapping its predicted box this much
    coast_frames: int = 5  # a missing track's prediction moves on its velocity for this many frames
    reacquire_distance: float = 1.0  # re-acquisition: centre within this many last box heights ...
    reacquire_size: float = 1.5  # ... and box height within this factor of the last one
    forget_after: int = 50  # a track other than the dubbed one is dropped after this many frames unseen
    landmark_jump: float = 0.25  # max median landmark move (box heights) once the box's own move is out
    landmark_patience: int = 5  # consecutive landmark rejections after which the reference is dropped


#: Bumped whenever :meth:`FaceTracker.state`'s layout or meaning changes.
STATE_VERSION = 1


@dataclass
class _Track:
    box: Box  # last matched box
    last_seen: int
    velocity: tuple[float, float] = (0.0, 0.0)  # box centre pixels per frame, from the last two matches
    current: FaceCandidate | None = None  # its candidate in the frame being selected

    def predicted(self, frame: int, coast: int) -> Box:
        steps = min(frame - self.last_seen, coast)
        dx, dy = self.velocity[0] * steps, self.velocity[1] * steps
        x1, y1, x2, y2 = self.box
        return x1 + dx, y1 + dy, x2 + dx, y2 + dy

    def move_to(self, candidate: FaceCandidate, frame: int, *, keep_velocity: bool) -> None:
        if keep_velocity:
            gap = frame - self.last_seen
            (ox, oy), (nx, ny) = _center(self.box), candidate.center
            self.velocity = ((nx - ox) / gap, (ny - oy) / gap)
        else:
            self.velocity = (0.0, 0.0)
        self.box, self.last_seen, self.current = candidate.box, frame, candidate


@dataclass(frozen=True)
class Selection:
    """The tracker's verdict on one frame before landmarks: the dubbed face's candidate (status
    ``dubbed``, landmarks still to come) or ``None`` and why."""

    index: int
    candidate: FaceCandidate | None
    status: str


@dataclass(frozen=True)
class DubbedFace:
    """Which face was chosen, for the report."""

    policy: str
    first_frame: int  # input frame index of the choice
    box: Box  # its detector box there
    score: float
    note: str | None = None  # e.g. a pixel policy whose pixel was inside no face

    def to_dict(self) -> dict:
        return {"policy": self.policy, "first_frame": self.first_frame, "box": [round(v, 1) for v in self.box],
                "score": round(self.score, 4), **({"note": self.note} if self.note else {})}


class FaceTracker:
    """Chooses the dubbed face once and follows it; see the module docstring for the rules.

    Per frame, in order: :meth:`select` with the frame's candidates, then (landmarks of the selected
    candidate computed) :meth:`confirm`. Selections may run ahead of confirmations (a batch of frames
    is selected, its landmarks computed together, then confirmed in order): selection uses boxes only,
    so the result does not depend on the batching.

    Between frames the tracker can be saved (:meth:`state`, JSON-able) and resumed (:meth:`resume`): the
    resumed tracker decides every later frame exactly as this one would have, so a cached pass over a
    video's first frames is extended instead of recomputed (runtime/facecache.py).
    """

    def __init__(self, policy: FacePolicy | str = "largest", min_face_size: float = DEFAULT_MIN_FACE_SIZE,
                 settings: TrackerSettings | None = None) -> None:
        self.policy = parse_face_policy(policy)
        if not (math.isfinite(min_face_size) and min_face_size >= 0):
            raise ValueError(f"min_face_size must be a non-negative number, got {min_face_size}")
        self.min_face_size = min_face_size
        self.settings = settings or TrackerSettings()
        self.dubbed: DubbedFace | None = None
        self.faces_seen = 0  # tracks started: distinct faces (and detector false positives) seen
        self.statuses: list[str] = []  # one per confirmed frame
        self.seen_by_frame: list[int] = []  # faces_seen after each selected frame (a prefix's count)
        self._tracks: list[_Track] = []
        self._dubbed_track: _Track | None = None
        self._next_frame = 0
        self._reference: tuple[np.ndarray, tuple[float, float]] | None = None  # landmarks, box centre
        self._rejections = 0

    # ------------------------------------------------------------------ selection (boxes only)

    def select(self, candidates: Sequence[FaceCandidate], frame_shape: Sequence[int]) -> Selection:
        """Match the frame's candidates to the tracks; the dubbed face's candidate, or why there is none."""
        t = self._next_frame
        self._next_frame += 1
        s = self.settings
        cands = list(candidates)
        tracks = self._tracks
        for tr in tracks:
            tr.current = None
        iou = [[box_iou(tr.predicted(t, s.coast_frames), c.box) for c in cands] for tr in tracks]

        # 1. greedy matching by overlap, highest IoU first (ties: track order, then candidate order)
        pairs = sorted((-iou[ti][di], ti, di) for ti in range(len(tracks)) for di in range(len(cands))
                       if iou[ti][di] >= s.match_iou)
        match: dict[int, int] = {}  # track index -> candidate index
        for _, ti, di in pairs:
            if ti not in match and di not in match.values():
                match[ti] = di

        # 2. a candidate that a recently seen, unmatched track overlaps as well belongs to neither
        contested: dict[int, int] = {}  # track index -> its contested candidate
        overlapping: set[int] = set()  # every track in a contest
        for ti, di in match.items():
            rivals = [tj for tj in range(len(tracks)) if tj not in match
                      and t - tracks[tj].last_seen <= s.coast_frames and iou[tj][di] >= s.match_iou]
            if rivals:
                contested[ti] = di
                overlapping.update([ti, *rivals])
        for ti in contested:
            del match[ti]
        for ti, di in match.items():
            tracks[ti].move_to(cands[di], t, keep_velocity=True)

        # 3. re-acquisition of unmatched tracks by distance and size, nearest first
        used = set(match.values()) | set(contested.values())
        options = []
        for ti, tr in enumerate(tracks):
            if ti in match or ti in contested:
                continue
            h, c = _height(tr.box), _center(tr.box)
            for di, cand in enumerate(cands):
                if di not in used and 1 / s.reacquire_size <= cand.height / h <= s.reacquire_size:
                    dist = _distance(cand.center, c)
                    if dist <= s.reacquire_distance * h:
                        options.append((dist, ti, di))
        for _, ti, di in sorted(options):
            if tracks[ti].current is None and di not in used:
                tracks[ti].move_to(cands[di], t, keep_velocity=False)
                used.add(di)

        # every other candidate starts a track; tracks unseen for long are forgotten (never the dubbed one)
        for di, cand in enumerate(cands):
            if di not in used:
                tracks.append(_Track(cand.box, t, current=cand))
                self.faces_seen += 1
        self.seen_by_frame.append(self.faces_seen)
        self._tracks = [tr for tr in tracks if tr is self._dubbed_track or t - tr.last_seen <= s.forget_after]

        # 4. the choice, once
        if self._dubbed_track is None:
            eligible = [tr for tr in self._tracks if tr.current is not None and tr.current.height >= self.min_face_size]
            if not eligible:
                if any(cands[di].height >= self.min_face_size for di in contested.values()):
                    return Selection(t, None, OVERLAP)
                return Selection(t, None, TOO_SMALL if cands else NO_FACE)
            k, note = self.policy.choose([tr.current for tr in eligible], frame_shape)  # type: ignore[misc]
            self._dubbed_track = eligible[k]
            chosen = eligible[k].current
            assert chosen is not None
            self.dubbed = DubbedFace(str(self.policy), t, chosen.box, chosen.score, note)

        dubbed = self._dubbed_track
        if dubbed.current is None:
            return Selection(t, None, OVERLAP if any(tracks[ti] is dubbed for ti in overlapping) else LOST)
        if dubbed.current.height < self.min_face_size:
            return Selection(t, None, TOO_SMALL)
        return Selection(t, dubbed.current, DUBBED)

    # ------------------------------------------------------------------ confirmation (landmarks)

    def confirm(self, selection: Selection, face: Face | None) -> Face | None:
        """The face to dub in the selection's frame (``None``: it passes through); records its status.

        ``face`` is the landmarks of ``selection.candidate`` (``None`` when there were none or they are
        unusable). Frames must be confirmed in order.
        """
        if selection.index != len(self.statuses):
            raise ValueError(f"frame {selection.index} confirmed out of order (expected {len(self.statuses)})")
        if selection.status != DUBBED:
            if selection.status in (LOST, OVERLAP, TOO_SMALL):
                self._end_appearance()
            self.statuses.append(selection.status)
            return None
        if face is None:
            self.statuses.append(NO_LANDMARKS)
            return None
        assert selection.candidate is not None
        if not self._continuous(face, selection.candidate):
            self._rejections += 1
            if self._rejections >= self.settings.landmark_patience:
                self._end_appearance()
            self.statuses.append(LANDMARK_JUMP)
            return None
        self._rejections = 0
        self._reference = (np.asarray(face.landmarks, dtype=np.float64), selection.candidate.center)
        self.statuses.append(DUBBED)
        return face

    def _continuous(self, face: Face, candidate: FaceCandidate) -> bool:
        """Centroid inside the box; median move since the reference, box motion taken out, within bounds."""
        pts = np.asarray(face.landmarks, dtype=np.float64)
        cx, cy = pts.mean(axis=0)
        x1, y1, x2, y2 = candidate.box
        if not (x1 <= cx <= x2 and y1 <= cy <= y2):
            return False
        if self._reference is None:
            return True
        ref, ref_center = self._reference
        shift = np.subtract(candidate.center, ref_center)
        moved = np.median(np.linalg.norm(pts - ref - shift, axis=1))
        return bool(moved <= self.settings.landmark_jump * candidate.height)

    def _end_appearance(self) -> None:
        self._reference = None
        self._rejections = 0

    # ------------------------------------------------------------------ saving and resuming

    def state(self) -> dict:
        """Everything the next frame's decisions depend on, as a JSON-able dict (Python floats, which
        JSON writes exactly, so a JSON round trip loses nothing): the configuration, frames so far,
        faces seen, the choice, every track in order (box, last frame seen, velocity; the order
        decides ties), which one is dubbed, and the landmark reference and rejection count.

        Why: a longer audio track over a cached video needs only the frames the cache lacks; a tracker
        resumed from this (:meth:`resume`) continues exactly as this one would. The per-frame history
        (``statuses``, ``seen_by_frame``) is not in it: the face-track cache holds it, and it grows with
        the clip. Only between frames: every selected frame must be confirmed."""
        if len(self.statuses) != self._next_frame:
            raise ValueError(f"tracker state taken with {self._next_frame - len(self.statuses)} selected "
                             "frames not yet confirmed")
        dubbed_index = next((i for i, tr in enumerate(self._tracks) if tr is self._dubbed_track), None)
        reference = None
        if self._reference is not None:
            points, center = self._reference
            reference = {"landmarks": points.tolist(), "center": [float(v) for v in center]}
        return {
            "version": STATE_VERSION,
            "policy": str(self.policy),
            "min_face_size": self.min_face_size,
            "settings": asdict(self.settings),
            "frames": self._next_frame,
            "faces_seen": self.faces_seen,
            "dubbed": None if self.dubbed is None else {**asdict(self.dubbed), "box": list(self.dubbed.box)},
            "tracks": [{"box": [float(v) for v in tr.box], "last_seen": tr.last_seen,
                        "velocity": [float(v) for v in tr.velocity]} for tr in self._tracks],
            "dubbed_track": dubbed_index,
            "reference": reference,
            "rejections": self._rejections,
        }

    @classmethod
    def resume(cls, state: dict, *, statuses: Sequence[str], seen: Sequence[int]) -> FaceTracker:
        """The tracker that :meth:`state` described, ready for the frame after its last one.

        ``statuses`` and ``seen`` are the per-frame history of those frames (what the face track
        stores), so that the resumed tracker's ``statuses``, ``seen_by_frame`` and :meth:`counts` cover
        the whole clip as the original's did. Policy, minimum size and thresholds come from the state
        (they decided the frames so far; the face cache's key holds them too). A state of another
        version or a history of the wrong length is a ``ValueError``."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"tracker state version {state.get('version')}, expected {STATE_VERSION}")
        frames = int(state["frames"])
        if len(statuses) != frames or len(seen) != frames:
            raise ValueError(f"tracker state after {frames} frames, history of {len(statuses)} statuses "
                             f"and {len(seen)} counts")
        tracker = cls(state["policy"], state["min_face_size"], TrackerSettings(**state["settings"]))
        tracker._next_frame = frames
        tracker.faces_seen = int(state["faces_seen"])
        tracker.statuses = list(statuses)
        tracker.seen_by_frame = [int(v) for v in seen]
        dubbed = state["dubbed"]
        if dubbed is not None:
            tracker.dubbed = DubbedFace(**{**dubbed, "box": tuple(float(v) for v in dubbed["box"])})
        tracker._tracks = [_Track(tuple(float(v) for v in tr["box"]), int(tr["last_seen"]),  # type: ignore[arg-type]
                                  (float(tr["velocity"][0]), float(tr["velocity"][1]))) for tr in state["tracks"]]
        if state["dubbed_track"] is not None:
            tracker._dubbed_track = tracker._tracks[int(state["dubbed_track"])]
        reference = state["reference"]
        if reference is not None:
            tracker._reference = (np.asarray(reference["landmarks"], dtype=np.float64),
                                  (float(reference["center"][0]), float(reference["center"][1])))
        tracker._rejections = int(state["rejections"])
        return tracker

    # ------------------------------------------------------------------ summary

    def counts(self, schedule: Sequence[int] | None = None) -> dict[str, int]:
        """Frames per status (every status, zeros included), over ``schedule`` (output frames as input
        indices, ping-pong repeats counted) or over the confirmed input frames."""
        return count_statuses(self.statuses, schedule)


def count_statuses(statuses: Sequence[str], schedule: Sequence[int] | None = None) -> dict[str, int]:
    """Frames per status (every status, zeros included) over ``schedule`` (input indices, repeats
    counted), or over all of ``statuses``."""
    out = dict.fromkeys(STATUSES, 0)
    for i in range(len(statuses)) if schedule is None else schedule:
        out[statuses[i]] += 1
    return out
