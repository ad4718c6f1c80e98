"""The service without Ray, for tests: the API app on a real loopback port, its jobs on in-process workers.

:class:`InProcessHandle` has the call shape of the worker deployment's Serve handle
(``handle.options(stream=True).run.remote(job, clip)``: an async iterator of the worker's events with
``cancel()``), over :class:`~latentmuse.serve.worker.JobWorker` objects of this process: a request
waits for a free worker, one job per worker, as Serve's queue does. :func:`app_server` runs an app
under uvicorn on 127.0.0.1 in a thread. The tests against a live Ray Serve service are in
tests/test_serve_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

_CANCELLED = object()


class InProcessHandle:
    def __init__(self, workers: list) -> None:
        self.workers = workers
        self._free: asyncio.Queue | None = None

    def options(self, **_: object) -> InProcessHandle:
        return self

    @property
    def run(self) -> InProcessHandle:
        return self

    def remote(self, job: dict, clip: dict) -> _Stream:
        return _Stream(self, job, clip)

    async def acquire(self):
        if self._free is None:
            self._free = asyncio.Queue()
            for worker in self.workers:
                self._free.put_nowait(worker)
        return await self._free.get()

    def release(self, worker) -> None:
        self._free.put_nowait(worker)


class _Stream:
    def __init__(self, handle: InProcessHandle, job: dict, clip: dict) -> None:
        self.handle, self.job, self.clip = handle, job, clip
        self.events: asyncio.Queue = asyncio.Queue()
        self.pump = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        worker = await self.handle.acquire()
        try:
            async for event in worker.run(self.job, self.clip):
                self.events.put_nowait(event)
            self.events.put_nowait(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, as Serve hands a replica's error
            self.events.put_nowait(exc)
            raise
        finally:
            self.handle.release(worker)

    def cancel(self) -> None:
        self.pump.cancel()
        self.events.put_nowait(_CANCELLED)

    def __aiter__(self):
        return self

    async def __anext__(self):
        event = await self.events.get()
        if event is None:
            raise StopAsyncIteration
        if event is _CANCELLED or isinstance(event, asyncio.CancelledError):
            raise RuntimeError("the request was cancelled")
        if isinstance(event, BaseException):
            raise RuntimeError(f"the worker failed: {event!r}")
        return event


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def app_server(app, timeout: float = 30.0):
    """``app`` served by uvicorn on 127.0.0.1 (lifespan on) in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
