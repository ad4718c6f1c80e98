"""Stages on threads joined by bounded queues: decoding and encoding overlap the generators.

A clip's generation loop is decode -> generate (network calls) -> paste the generated faces back
(blending) -> encode. Run in one thread, the GPU waits while a frame is decoded, pasted and encoded
(at 1080p each costs 5-20 ms on a CPU core). Here the decoder runs ahead in its own thread
(:class:`Prefetch`) and the encoder behind in another (:class:`BackgroundSink`), which also runs
each frame's paste (the generators return :class:`~.generators.base.DeferredFrame` objects in a
run), each joined to the generation loop by a queue of at most ``depth`` frames, so

- order is kept: one producer and one consumer per queue, FIFO, so frames leave in the order they
  came (the tests check frame identity through both queues);
- memory stays bounded: at most ``depth`` frames wait in each queue, whatever the clip's length;
- errors surface in the generation loop: an exception in the decoder is raised where the next frame
  is taken, one in the encoder (a full disk) at the next frame handed to it or at the end, with its
  own one-line message; and an exception or signal in the loop stops both threads before the
  writer deletes its temporary files.

PyAV releases the GIL while it decodes, converts and encodes, and torch while it computes, so the
three threads do run at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from .generators.base import resolved

T = TypeVar("T")

#: Frames each queue holds at most (1080p BGR: 6 MB a frame).
DEFAULT_DEPTH = 8
_DONE = object()
_POLL_S = 0.1


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetch(Generic[T]):
    """Iterate ``items`` in a background thread, at most ``depth`` ahead of the consumer.

    Use as a context manager: leaving the block (normally, by an exception or by a signal) stops
    the producer and joins it, and closes the underlying iterator in that thread.
    """

    def __init__(self, items: Iterable[T], depth: int = DEFAULT_DEPTH, name: str = "decode") -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=f"latentmuse-{name}", daemon=True)

    def __enter__(self) -> Prefetch[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        self._thread.join()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = iter(self._items)
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item


class BackgroundSink:
    """A frame sink that encodes in a background thread, at most ``depth`` frames behind.

    Wraps an entered sink (:class:`~latentmuse.runtime.media.VideoWriter` or a test's memory sink).
    ``frames_written`` counts the frames the wrapped sink has taken. On a normal exit the queue is
    drained and any encoder error raised; on an exception the thread stops without writing the
    waiting frames, so the wrapped writer can then delete its temporary files.
    """

    def __init__(self, sink, depth: int = DEFAULT_DEPTH) -> None:
        self.sink = sink
        self.frames_written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._consume, name="latentmuse-encode", daemon=True)

    def __enter__(self) -> BackgroundSink:
        self._thread.start()
        return self

    def _consume(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE or self._stop.is_set():
                return
            try:
                self.sink.write(resolved(item))  # a deferred paste runs here, beside the next window
            except BaseException as exc:  # noqa: BLE001 - raised in the generation loop
                self._error = exc
                return
            self.frames_written += 1

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, frame) -> None:
        while True:
            self._raise_error()
            if not self._thread.is_alive():
                raise RuntimeError("the encoder thread stopped")
            try:
                self._queue.put(frame, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            while self._thread.is_alive():  # drain: the encoder writes what is queued, then stops
                try:
                    self._queue.put(_DONE, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            self._thread.join()
            self._raise_error()
            return
        self._stop.set()
        self._thread.join()
