"""Decoding frames: a plain pass over the video, and schedule-driven access in bounded memory."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np

from ...errors import LatentmuseError
from ..contracts import VideoInfo
from .formats import DECODE_FLAGS
from .opening import _corrupt, _open_input, _video_stream
from .orientation import Orientation
from .probing import _packet_pts, probe

DEFAULT_CHUNK = 64


def _decoded(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.FFmpegError as exc:
        raise _corrupt(path, exc) from None


def _setup_decoder(stream) -> None:
    stream.thread_type = "AUTO"  # frame + slice threading


def _orientation(info: VideoInfo) -> Orientation:
    return Orientation(info.rotation, info.mirrored)


def _to_bgr(frame: av.VideoFrame, orientation: Orientation) -> np.ndarray:
    """The displayed frame as BGR uint8 (H, W, 3): any pixel format (gray, 4:4:4, 10-bit) to 8-bit BGR,
    turned upright by the display matrix."""
    return orientation.apply(frame.to_ndarray(format="bgr24", interpolation=DECODE_FLAGS))


def iter_frames(path: Path | str, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Every frame of the video in presentation order, as displayed (upright), BGR uint8 (H, W, 3).

    Pass the :func:`probe` result as ``info`` when there is one: without it the file is probed (opened
    and demuxed) first, only to learn its orientation."""
    path = Path(path)
    orientation = _orientation(info if info is not None else probe(path))
    container = _open_input(path, "video")
    with container:
        stream = _video_stream(container, path)
        _setup_decoder(stream)
        for frame in _decoded(container, stream, path):
            yield _to_bgr(frame, orientation)


def _runs(schedule: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Split a schedule into maximal monotone runs of step +1 or -1, as (first, last) pairs."""
    i, n = 0, len(schedule)
    while i < n:
        start = schedule[i]
        j = i
        if j + 1 < n and abs(schedule[j + 1] - schedule[j]) == 1:
            step = schedule[j + 1] - schedule[j]
            while j + 1 < n and schedule[j + 1] - schedule[j] == step:
                j += 1
        yield start, schedule[j]
        i = j + 1


class FrameSource:
    """Random access to a video's frames following a schedule of input indices, in bounded memory.

    ``frames(schedule)`` yields ``(index, frame)`` for each index of ``schedule``. The schedule is made
    of monotone runs (forward ``a, a+1, ...`` or backward ``b, b-1, ...``), as ping-pong cycling
    (0..N-1, N-1..0, 0..N-1, ...) or a plain prefix (0..k) produce; any other jump simply starts a new
    run. Forward runs decode sequentially (seeking when they start elsewhere than where the decoder
    is). Backward runs are decoded ``chunk`` frames at a time from their end: seek to the keyframe
    before the chunk, decode forward dropping the frames before the chunk, yield the chunk reversed.
    At most ``chunk`` decoded frames are held (the most recent ones, which is also what makes the turn
    of a ping-pong cycle free). Yielded frames are the caller's own copies, displayed (upright, of
    ``info``'s size).
    """

    def __init__(self, path: Path | str, info: VideoInfo | None = None, *, chunk: int = DEFAULT_CHUNK) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        self._orientation = _orientation(self.info)
        self.chunk = int(chunk)
        self._container = None
        self._stream = None
        self._frames_iter: Iterator[av.VideoFrame] | None = None
        self._next = 0  # index of the frame the decoder yields next
        self._pts: list[int] | None = None  # sorted presentation timestamps; index = position
        self._pts_index: dict[int, int] = {}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.decoded = 0  # frames decoded so far (for tests and the run report)
        self.seeks = 0

    # -- lifecycle

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._stream = self._frames_iter = None
        self._cache.clear()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.info.frame_count

    # -- decoder state

    def _open(self) -> None:
        if self._container is not None:
            return
        self._container = _open_input(self.path, "video")
        self._stream = _video_stream(self._container, self.path)
        _setup_decoder(self._stream)
        self._frames_iter = _decoded(self._container, self._stream, self.path)
        self._next = 0
        self._pending = None

    def _restart(self) -> None:
        """Decode from the first frame again."""
        self._seek_container(None)
        self._frames_iter = _decoded(self._container, self._stream, self.path)
        self._next = 0
        self._pending = None

    def _seek_container(self, pts: int | None) -> None:
        self.seeks += 1
        try:
            if pts is None:
                self._container.seek(0, backward=True, any_frame=False)
            else:
                self._container.seek(pts, backward=True, any_frame=False, stream=self._stream)
        except av.FFmpegError as exc:
            raise _corrupt(self.path, exc) from None

    def _index_timestamps(self) -> bool:
        """Build pts -> index from the packet timestamps (once). False when timestamps are unusable.

        The timestamps are those :func:`probe` kept in ``info``; only a ``VideoInfo`` made elsewhere
        (without them) makes this demux the file."""
        if self._pts is None:
            pts = list(self.info.timestamps)
            if not pts:
                with _open_input(self.path, "video") as container:
                    stream = _video_stream(container, self.path)
                    try:
                        pts = sorted(_packet_pts(container, stream))
                    except av.FFmpegError as exc:
                        raise _corrupt(self.path, exc) from None
            if pts and pts[0] >= 0 and len(set(pts)) == len(pts):
                self._pts = pts
                self._pts_index = {p: i for i, p in enumerate(pts)}
            else:
                self._pts = []
        return bool(self._pts)

    def _index_of(self, frame: av.VideoFrame, fallback: int) -> int:
        if self._pts:
            ts = frame.pts
            if ts in self._pts_index:
                return self._pts_index[ts]
            if ts is not None:  # a decoder that re-stamps frames: nearest packet timestamp
                k = bisect.bisect_left(self._pts, ts)
                near = [c for c in (k - 1, k) if 0 <= c < len(self._pts)]
                return min(near, key=lambda c: abs(self._pts[c] - ts))
        return fallback

    def _position(self, index: int) -> None:
        """Make the decoder's next frame be ``index``."""
        if index == self._next:
            return
        if self._next < index <= self._next + self.chunk:
            while self._next < index:  # short skip forward: cheaper than a seek
                self._read()
            return
        if index > 0 and self._index_timestamps() and self._seek_to(index):
            return
        self._restart()  # from the start (also the fallback when timestamps cannot be trusted)
        while self._next < index:
            self._read()

    def _seek_to(self, index: int) -> bool:
        """Keyframe-seek before ``index`` and decode up to it; False when the seek missed it."""
        self._seek_container(self._pts[index])
        self._frames_iter = _decoded(self._container, self._stream, self.path)
        self._pending = None
        for frame in self._frames_iter:
            got = self._index_of(frame, -1)
            if got < index:
                continue  # between the keyframe and the target
            if got == index:
                self._next, self._pending = index, frame
                return True
            break  # overshot (an open GOP, a bad index): the caller decodes from the start
        return False

    _pending: av.VideoFrame | None = None

    def _read(self) -> tuple[int, np.ndarray]:
        """Decode the next frame, remember it in the cache and return (index, frame)."""
        frame = self._pending
        self._pending = None
        if frame is None:
            frame = next(self._frames_iter, None)
            if frame is None:
                raise LatentmuseError(
                    f"{self.path} ended after {self._next} frames but {self.info.frame_count} were expected.",
                    "the file is truncated: re-export it.",
                )
            index = self._index_of(frame, self._next)
            if index != self._next:  # frames must come out in presentation order, one per index
                raise _corrupt(self.path, ValueError(f"decoder gave frame {index}, expected {self._next}"))
        else:
            index = self._next
        array = _to_bgr(frame, self._orientation)
        self.decoded += 1
        self._next = index + 1
        self._cache[index] = array
        self._cache.move_to_end(index)
        while len(self._cache) > self.chunk:
            self._cache.popitem(last=False)
        return index, array

    def _get(self, index: int) -> np.ndarray:
        if index in self._cache and index != self._next:
            return self._cache[index]
        self._position(index)
        return self._read()[1]

    # -- public

    def frames(self, schedule: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        schedule = [int(i) for i in schedule]
        n = self.info.frame_count
        bad = [i for i in schedule if not 0 <= i < n]
        if bad:
            raise ValueError(f"schedule index {bad[0]} is outside the video's {n} frames")
        if not schedule:
            return
        self._open()
        for first, last in _runs(schedule):
            if first <= last:  # forward run (or a single index)
                for index in range(first, last + 1):
                    yield index, self._get(index).copy()
            else:  # backward run, chunk by chunk from its end
                hi = first
                while hi >= last:
                    lo = max(last, hi - self.chunk + 1)
                    if all(i in self._cache for i in range(lo, hi + 1)):
                        chunk = {i: self._cache[i] for i in range(lo, hi + 1)}
                    else:
                        self._position(lo)
                        chunk = dict(self._read() for _ in range(lo, hi + 1))
                    for index in range(hi, lo - 1, -1):
                        yield index, chunk[index].copy()
                    del chunk
                    hi = lo - 1
