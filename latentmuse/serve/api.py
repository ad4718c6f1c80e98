"""The HTTP API (JSON under ``/v1``, OpenAPI at ``/docs``) over a :class:`JobService`.

:class:`JobService` is the ingress's state: the job store (its one writer), the handle to the worker
deployment, and one task per job in flight that follows the worker's progress stream into the store.
It knows nothing of Ray beyond the handle's call shape (``handle.options(stream=True).run.remote(job,
clip)``, an async iterator with ``cancel()``), so the same routes run in tests on an in-process
worker. Admission is decided before a byte of an upload is read: a full queue is 503 with a
Retry-After estimated from the jobs done so far, a client at its limit 429. The queue itself is Ray
Serve's: the service only counts what it has accepted, and a job once accepted (202) is never refused
by Ray later (the workers' queue is unbounded; the bound is enforced here, against the durable record).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import LatentmuseError
from ..outcomes import STATUS_LOW_SYNC
from ..runtime.options import ClipOptions, LoadOptions, options_from_dict, options_to_dict
from .intake import Refused, UploadReceiver, extension, make_job, probe, remove_folder, resolve_input, too_large
from .store import ACTIVE, CANCELLED, DONE, FAILED, FINISHED, LOW_SYNC, QUEUED, RUNNING, STATUSES, JobRecord, JobStore

#: how many times in all a job is sent to the workers when its worker dies under it (a killed replica, a lost node)
MAX_ATTEMPTS = 3
#: a JSON request body (paths and options) is small
MAX_JSON_BYTES = 64 * 1024


@dataclass
class ServeSettings:
    """What ``latentmuse serve`` hands the ingress (plain values: they cross to its replica)."""

    state: str
    load: dict = field(default_factory=lambda: options_to_dict(LoadOptions()))
    clip: dict = field(default_factory=lambda: options_to_dict(ClipOptions()))
    input_root: str | None = None
    token: str | None = None
    max_upload_mb: float = 2048.0
    max_queue: int = 100
    max_jobs_per_client: int = 10
    max_seconds: float | None = None
    workers: int = 1
    web: bool = True

    @property
    def state_dir(self) -> Path:
        return Path(self.state)

    @classmethod
    def from_dict(cls, data: dict) -> ServeSettings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def split_reason(reason: str | None) -> tuple[str | None, str | None]:
    """A LatentmuseError's text ("message Fix: fix") as the API's error and fix."""
    if not reason:
        return None, None
    message, _, fix = reason.partition(" Fix: ")
    return message, fix or None


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


class JobService:
    """The ingress's jobs: admitted, recorded, sent to the workers, followed to their end."""

    def __init__(self, settings: ServeSettings, handle) -> None:
        self.settings = settings
        self.handle = handle
        self.store = JobStore(settings.state_dir / "jobs.sqlite3")
        self.load = options_from_dict(LoadOptions, settings.load)
        self.clip = options_from_dict(ClipOptions, settings.clip)
        self.input_root = None if settings.input_root is None else Path(settings.input_root)
        self.tasks: dict[str, asyncio.Task] = {}
        self.streams: dict[str, Any] = {}
        self._admitting: dict[str, int] = {}  # requests past admission whose upload is still arriving, by client

    # ------------------------------------------------------------------------------- life cycle

    async def resume(self) -> int:
        """At start: the jobs a stop cut off queued again and sent to the workers, oldest first."""
        for record in self.store.deleted_with_folders():  # a stop between a DELETE and its files' removal
            remove_folder(Path(record.folder))
        records = self.store.requeue()
        for record in records:
            self._send(record.id)
        return len(records)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks.values(), timeout=5)
        self.store.close()

    # ------------------------------------------------------------------------------- admission

    def admit(self, client: str) -> None:
        """Before reading a request's body: 503 when the queue is full, 429 when the client is at its limit."""
        counts = self.store.counts()
        admitting = sum(self._admitting.values())
        if counts[QUEUED] + admitting >= self.settings.max_queue:
            wait = self.retry_after(counts[QUEUED] + admitting)
            raise Refused(503, f"the queue is full ({self.settings.max_queue} jobs waiting).",
                          f"send it again in {wait} s (Retry-After), or start the service with a higher --max-queue.",
                          {"Retry-After": str(wait)})
        mine = self.store.active_for(client) + self._admitting.get(client, 0)
        if mine >= self.settings.max_jobs_per_client:
            raise Refused(429, f"this client has {mine} jobs queued or running; the limit is {self.settings.max_jobs_per_client}.",
                          "wait for one to finish (GET /v1/jobs/ID), or start the service with a higher --max-jobs-per-client.",
                          {"Retry-After": str(self.retry_after(1))})

    def retry_after(self, queued: int) -> int:
        """A Retry-After for ``queued`` waiting jobs: a quarter of the time the workers need to drain them at the
        mean job time so far (30 s a job before any finished), within 1 s .. 10 min."""
        totals = self.store.totals()
        mean = totals["seconds"] / totals["jobs"] if totals["jobs"] else 30.0
        return int(min(600, max(1, math.ceil(mean * max(1, queued) / max(1, self.settings.workers) / 4))))

    async def submit(self, request, client: str) -> JobRecord:
        """A job from an upload (multipart) or from paths under the input root (JSON), checked, recorded
        and sent; a refused request leaves nothing behind."""
        return await self._admit_job(client, lambda folder: self._receive(request, folder))

    async def submit_files(self, video: Path, audio: Path | None, options: dict, client: str) -> JobRecord:
        """A job from files already on this machine (the web page's uploads): copied into the job's folder,
        then exactly as an upload (``options`` as form fields: strings, or JSON values)."""
        async def receive(folder: Path):
            copies = {}
            for name, path in (("video", video), ("audio", audio)):
                if path is not None:
                    copies[name] = folder / (name + extension(str(path)))
                    await asyncio.to_thread(shutil.copyfile, path, copies[name])
            return make_job(dict(options), copies["video"], copies.get("audio"), folder,
                            from_text=all(isinstance(v, str) for v in options.values()))

        return await self._admit_job(client, receive)

    async def _admit_job(self, client: str, receive) -> JobRecord:
        self.admit(client)
        self._admitting[client] = self._admitting.get(client, 0) + 1
        job_id = uuid.uuid4().hex
        folder = self.settings.state_dir / "jobs" / job_id
        try:
            folder.mkdir(parents=True)
            job = await receive(folder)
            await asyncio.to_thread(probe, job, self.load, self.clip, self.settings.max_seconds)
            record = JobRecord(job_id, str(folder), job.to_dict(), options_to_dict(job.clip_options(self.clip)),
                               dict(job.options), client=client)
            self.store.add(record)
        except Refused as exc:
            remove_folder(folder)
            # the service's own paths are not the client's business: name an upload by its field's file
            raise Refused(exc.status, exc.message.replace(f"{folder}/", "upload:"), exc.fix, exc.headers) from None
        except BaseException:
            remove_folder(folder)
            raise
        finally:
            self._admitting[client] -= 1
            if not self._admitting[client]:
                del self._admitting[client]
        self._send(job_id)
        return record

    async def _receive(self, request, folder: Path):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        limit = int(self.settings.max_upload_mb * 2**20)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(limit)
        if kind == "application/json":
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_JSON_BYTES:
                    raise Refused(413, "the JSON request is larger than 64 KiB.", "send paths and options only; upload files as multipart.")
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise Refused(400, f"the request body is not JSON ({exc}).", 'send {"video": "PATH", "audio": "PATH", ...}.') from None
            if not isinstance(data, dict) or "video" not in data:
                raise Refused(422, "the JSON request names no video.", 'send {"video": "PATH", "audio": "PATH"} (paths under --input-root).')
            video = resolve_input(self.input_root, data.pop("video"), "video")
            audio = data.pop("audio", None)
            audio = None if audio is None else resolve_input(self.input_root, audio, "audio")
            return make_job(data, video, audio, folder, from_text=False)
        receiver = UploadReceiver(request.headers.get("content-type", ""), folder, limit)
        try:
            async for chunk in request.stream():
                receiver.feed(chunk)
            upload = receiver.finish()
        finally:
            receiver.close()
        if "video" not in upload.files:
            raise Refused(422, "the upload has no video.", "send the clip as the file field video (-F video=@clip.mp4).")
        return make_job(upload.fields, upload.files["video"], upload.files.get("audio"), folder, from_text=True)

    # ------------------------------------------------------------------------------- the workers

    def _send(self, job_id: str) -> None:
        self.tasks[job_id] = asyncio.get_running_loop().create_task(self._follow(job_id))

    async def _follow(self, job_id: str) -> None:
        """Send the job to the workers and record its stream; a worker lost under it: send it again
        (Serve routes it to a live replica), :data:`MAX_ATTEMPTS` times in all."""
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                record = self.store.get(job_id)
                if record is None or record.status not in ACTIVE:
                    return
                stream = self.handle.options(stream=True).run.remote(record.job, record.clip)
                self.streams[job_id] = stream
                try:
                    async for event in stream:
                        self._record(job_id, event)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a cancelled request, or its worker lost
                    if self.store.get(job_id).status not in ACTIVE:
                        return  # cancelled: DELETE has recorded it
                    if attempt == MAX_ATTEMPTS:
                        self.store.finish(job_id, FAILED, error=f"the worker failed {attempt} times: {_last_line(exc)}",
                                          fix="see the service's log (ray logs); the job can be sent again.")
                        return
                    self.store.update(job_id, status=QUEUED, frames_done=0)
                finally:
                    self.streams.pop(job_id, None)
        finally:
            self.tasks.pop(job_id, None)

    def _record(self, job_id: str, event: dict) -> None:
        kind = event.get("event")
        if kind == "started":
            record = self.store.get(job_id)
            if record.status in ACTIVE:
                self.store.update(job_id, status=RUNNING, started=time.time(), worker=event.get("worker"),
                                  attempts=record.attempts + 1, frames_done=0)
        elif kind == "progress":
            self.store.update(job_id, frames_done=event["frames_done"], frames_total=event["frames_total"])
        elif kind == "result":
            result, report = event["result"], event.get("report")
            if result["status"] in ("done", "skipped"):
                status = LOW_SYNC if result["outcome"] == STATUS_LOW_SYNC else DONE
            else:
                status = FAILED
            error, fix = split_reason(result.get("reason"))  # done: frames that failed every generator, if any
            frames = result.get("frames") or 0
            self.store.finish(job_id, status, frames_done=frames, seconds=result.get("seconds"),
                              error=error, fix=fix, report=report, worker=result.get("worker"))

    # ------------------------------------------------------------------------------- cancel

    async def delete(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (its worker stops at the next frame and deletes its files) and
        delete the job's files; the record stays (status cancelled, or its end), marked deleted."""
        record = self.store.get(job_id)
        if record is None:
            raise not_found(job_id)
        if record.status in ACTIVE:
            self.store.finish(job_id, CANCELLED, error="cancelled by DELETE /v1/jobs/ID")
            stream = self.streams.get(job_id)
            if stream is not None:
                stream.cancel()
            task = self.tasks.get(job_id)
            if task is not None:
                await asyncio.wait({task}, timeout=10)
        self.store.update(job_id, deleted=True)  # first: a stop before the removal is finished at the next start
        remove_folder(Path(record.folder))
        return self.store.get(job_id)

    # ------------------------------------------------------------------------------- views

    def client_paths(self, report: dict | None, record: JobRecord) -> dict | None:
        """A run report as a client may see it: the job's own files by name (``upload:video.mp4``,
        ``upload:result.mp4``), files under the input root by their path there, no other path of the
        service's (the face cache's folder, the weights') beyond their last part."""
        if report is None:
            return None
        prefixes = [(f"{record.folder}/", "upload:")]
        if self.input_root is not None:
            prefixes.append((f"{self.input_root.resolve()}/", ""))
        return _scrub(report, tuple(prefixes))

    def view(self, record: JobRecord) -> dict:
        """A job as the API shows it."""
        finished = record.status in FINISHED
        out = {"id": record.id, "status": record.status, "created": iso(record.created), "started": iso(record.started),
               "finished": iso(record.finished),
               "progress": {"frames_done": record.frames_done, "frames_total": record.frames_total},
               "options": record.options, "attempts": record.attempts, "worker": record.worker,
               "seconds": record.seconds, "error": record.error, "fix": record.fix, "deleted": record.deleted,
               "video": f"/v1/jobs/{record.id}/video" if record.status in (DONE, LOW_SYNC) and not record.deleted else None,
               "report": self.client_paths(record.report, record) if finished else None}
        sync = (record.report or {}).get("sync") or {}
        out["sync"] = {"confidence": sync.get("confidence"), "distance": sync.get("distance"), "status": sync.get("status")} \
            if sync else None
        return out


def _scrub(value, prefixes: tuple[tuple[str, str], ...]):
    """``value`` (JSON) with every string that starts with a prefix rewritten to its replacement, and any
    other absolute path cut to its last part."""
    if isinstance(value, str):
        for prefix, replacement in prefixes:
            if value.startswith(prefix):
                return replacement + value[len(prefix):]
        if value.startswith("/") and not any(c.isspace() for c in value):  # another path of the service's
            return Path(value).name
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, prefixes) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, prefixes) for v in value]
    return value


def not_found(job_id: str) -> Refused:
    return Refused(404, f"there is no job {job_id}.", "list the jobs with GET /v1/jobs.")


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


# ===================================================================================== the app

def create_app(service: JobService):
    """The FastAPI app of ``service``: the API, ``/healthz``, ``/metrics`` and (``settings.web``) the page at ``/``."""
    from .. import __version__
    from .metrics import metrics_text

    token = service.settings.token

    @asynccontextmanager
    async def lifespan(app):
        await service.resume()
        yield
        await service.close()

    # With a token, the OpenAPI document needs it too, and there is no /docs page (a browser cannot send the header).
    app = FastAPI(title="latentmuse", version=__version__, lifespan=lifespan,
                  docs_url=None if token else "/docs", openapi_url=None if token else "/openapi.json",
                  description="Lip-sync jobs: submit a video and an audio track, follow the job, download the result "
                              "(docs/SERVE.md). Every route but /healthz needs `Authorization: Bearer TOKEN` when the "
                              "service has a token.")
    bearer = HTTPBearer(auto_error=False, description="the service's token (--token-file)")

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return JSONResponse({"error": exc.message, "fix": exc.fix}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(LatentmuseError)
    async def latentmuse_error(request: Request, exc: LatentmuseError):
        return JSONResponse({"error": exc.message, "fix": exc.fix}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}.".lstrip(": "),
                             "fix": "see the route's parameters in docs/SERVE.md (or /openapi.json)."}, status_code=422)

    def authorised(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            given = "authorization" in request.headers
            raise Refused(401, "wrong token." if given else "this service needs a token.",
                          "send the header Authorization: Bearer TOKEN (the service's --token-file).",
                          {"WWW-Authenticate": 'Bearer realm="latentmuse"'})

    guarded = [Depends(authorised)]
    if token:
        @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
        async def openapi():
            return JSONResponse(app.openapi())
    upload_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["video"], "properties": {
            "video": {"type": "string", "format": "binary"}, "audio": {"type": "string", "format": "binary"}},
            "additionalProperties": {"type": "string", "description": "a per-clip option, e.g. steps=20"}}},
        "application/json": {"schema": {"type": "object", "required": ["video"], "properties": {
            "video": {"type": "string", "description": "a path under --input-root"},
            "audio": {"type": "string", "description": "a path under --input-root"}},
            "additionalProperties": {"description": "a per-clip option, e.g. \"steps\": 20"}}}}}}

    def client_of(request: Request) -> str:
        return request.client.host if request.client else ""

    @app.post("/v1/jobs", status_code=202, dependencies=guarded, openapi_extra=upload_body,
              summary="Submit a job: multipart (video, audio files) or JSON (paths under --input-root), plus per-clip options")
    async def submit(request: Request):
        record = await service.submit(request, client_of(request))
        return JSONResponse(service.view(record), status_code=202, headers={"Location": f"/v1/jobs/{record.id}"})

    @app.get("/v1/jobs", dependencies=guarded, summary="The jobs, oldest first, a page at a time")
    async def jobs(status: str | None = None, offset: int = 0, limit: int = 50):
        statuses = tuple(s.strip() for s in status.split(",")) if status else None
        if statuses and not set(statuses) <= set(STATUSES):
            raise Refused(422, f"status {status} is not known.", f"use {', '.join(STATUSES)} (comma-separated).")
        if not (0 <= offset and 1 <= limit <= 500):
            raise Refused(422, f"offset {offset} / limit {limit} is out of range.", "use offset >= 0 and limit 1..500.")
        records, total = service.store.page(statuses=statuses, offset=offset, limit=limit)
        following = offset + len(records)
        return {"jobs": [service.view(r) for r in records], "total": total, "offset": offset, "limit": limit,
                "next": f"/v1/jobs?offset={following}&limit={limit}" + (f"&status={status}" if status else "")
                if following < total else None}

    @app.get("/v1/jobs/{job_id}", dependencies=guarded, summary="One job: status, progress, report, error and fix")
    async def job(job_id: str):
        record = service.store.get(job_id)
        if record is None:
            raise not_found(job_id)
        return service.view(record)

    @app.delete("/v1/jobs/{job_id}", dependencies=guarded, summary="Cancel a queued or running job and delete its files")
    async def delete(job_id: str):
        return service.view(await service.delete(job_id))

    @app.get("/v1/jobs/{job_id}/video", dependencies=guarded, summary="The result (range requests supported)",
             response_class=FileResponse)
    async def video(job_id: str):
        record = service.store.get(job_id)
        if record is None:
            raise not_found(job_id)
        if record.deleted:
            raise Refused(410, f"job {job_id}'s files were deleted.", "submit it again.")
        if record.status in ACTIVE:
            raise Refused(409, f"job {job_id} is {record.status}.", "poll GET /v1/jobs/ID until it is done.")
        if record.status not in (DONE, LOW_SYNC) or not record.output.is_file():
            raise Refused(409, f"job {job_id} made no video ({record.status}).", "see its error and fix: GET /v1/jobs/ID.")
        return FileResponse(record.output, media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.get("/healthz", summary="Liveness (no token needed)")
    async def healthz():
        counts = service.store.counts()
        return {"status": "ok", "workers": service.settings.workers, "queued": counts[QUEUED], "running": counts[RUNNING]}

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse,
             summary="Prometheus text: jobs by status, queue length, frames/s, seconds per job")
    async def metrics():
        body, content_type = metrics_text(service.store)
        return PlainTextResponse(body, media_type=content_type)

    if service.settings.web:
        from .web import mount_page

        app = mount_page(app, service)
    return app
