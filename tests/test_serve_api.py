"""The service's API in one process: real HTTP on loopback (uvicorn), the jobs on an in-process worker
holding a real ``LipSync`` on smoke weights (tests/serve_support.py). Ray Serve itself: test_serve_live.py.

Each refusal is checked for its status, its one-line error and fix, and that nothing of the request
stays on disk; each finished job against the files it wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'latentmuse[serve]')")
httpx = pytest.importorskip("httpx")

from latentmuse.runtime import media  # noqa: E402
from latentmuse.runtime.options import ClipOptions, LoadOptions, options_to_dict  # noqa: E402
from latentmuse.serve.api import MAX_ATTEMPTS, JobService, ServeSettings, create_app  # noqa: E402
from latentmuse.serve.store import CANCELLED, DONE, QUEUED, RUNNING, JobRecord, JobStore  # noqa: E402
from latentmuse.serve.worker import JobWorker  # noqa: E402

from .catalogue import truncate_copy  # noqa: E402
from .helpers import write_level_video, write_wav  # noqa: E402
from .serve_support import InProcessHandle, app_server  # noqa: E402

LOAD = options_to_dict(LoadOptions(weights="smoke", generator="musetalk", face_detector="dlib"))
CLIP = options_to_dict(ClipOptions(cache=None))
TOKEN = "t0ken-for-the-tests-0123456789"
POLL_S, POLL_LIMIT_S = 0.2, 120.0


@pytest.fixture(scope="module")
def worker():
    return JobWorker(LOAD)  # no cpu_threads: torch.set_num_threads would change every later test in this process


@pytest.fixture(scope="module")
def media_files(tmp_path_factory, clip):
    folder = tmp_path_factory.mktemp("media")
    return {"video": clip.video, "short": write_wav(folder / "short.wav", 0.4, freq=200.0),
            "long": write_wav(folder / "long.wav", 3.0, freq=180.0)}


class StalledHandle:
    """A worker deployment whose replicas are all busy: every request waits until cancelled."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def options(self, **_):
        return self

    @property
    def run(self):
        return self

    def remote(self, job, clip):
        self.sent.append(job)
        return StalledStream()


class StalledStream:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.cancelled.wait()
        raise RuntimeError("the request was cancelled")


class FailingHandle(InProcessHandle):
    """Its first ``failures`` requests die as a lost replica's do; the rest run on the worker."""

    def __init__(self, workers, failures: int) -> None:
        super().__init__(workers)
        self.failures, self.calls = failures, 0

    def remote(self, job, clip):
        self.calls += 1
        if self.calls <= self.failures:
            return self._dead()
        return super().remote(job, clip)

    async def _dead(self):
        yield {"event": "started", "worker": "doomed"}
        raise RuntimeError("ActorDiedError: the replica's process died\nits last words")


def make_service(state: Path, handle, **settings) -> JobService:
    return JobService(ServeSettings(str(state), LOAD, CLIP, **{"web": False, **settings}), handle)


def wait_for(client, job_id: str, statuses=("done", "failed", "low_sync", "cancelled"), headers=None) -> dict:
    deadline = time.monotonic() + POLL_LIMIT_S
    while True:
        view = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if view["status"] in statuses:
            return view
        assert time.monotonic() < deadline, f"job {job_id} still {view['status']} after {POLL_LIMIT_S} s"
        time.sleep(POLL_S)


def upload(client, video: Path, audio: Path | None = None, headers=None, **options):
    files = {"video": (video.name, video.read_bytes())}
    if audio is not None:
        files["audio"] = (audio.name, audio.read_bytes())
    return client.post("/v1/jobs", files=files, data={k: str(v) for k, v in options.items()}, headers=headers)


def jobs_on_disk(state: Path) -> list[str]:
    folder = state / "jobs"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not in /metrics")


# ------------------------------------------------------------------------------------------ store

def test_the_store_requeues_cut_off_jobs_and_keeps_a_cancel(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for name in "abc":
        store.add(JobRecord(name, str(tmp_path / name), {"output": str(tmp_path / name / "r.mp4")}, {}, client="x"))
    store.update("a", status=RUNNING, frames_done=7)
    store.finish("c", CANCELLED)
    assert not store.finish("c", DONE)  # a worker's late result never overrides a cancel
    assert store.journal_mode() == "wal"
    assert store.counts()[QUEUED] == 1 and store.active_for("x") == 2
    again = JobStore(tmp_path / "jobs.sqlite3")  # a new process after a stop
    assert [r.id for r in again.requeue()] == ["a", "b"]
    assert again.get("a").status == QUEUED and again.get("a").frames_done == 0
    assert again.get("c").status == CANCELLED
    page, total = again.page(offset=1, limit=1)
    assert total == 3 and [r.id for r in page] == ["b"]


# ------------------------------------------------------------------------------------------ a job

def test_a_job_is_submitted_followed_and_downloaded_with_every_frame(tmp_path, worker, media_files):
    service = make_service(tmp_path / "state", InProcessHandle([worker]))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        reply = upload(client, media_files["video"], media_files["short"], steps=2)
        assert reply.status_code == 202, reply.text
        job = reply.json()
        assert reply.headers["location"] == f"/v1/jobs/{job['id']}" and job["options"] == {"steps": 2}
        view = wait_for(client, job["id"])
        assert view["status"] == "done", view
        frames = round(0.4 * 25)
        assert view["progress"] == {"frames_done": frames, "frames_total": frames}
        assert view["report"]["status"] == "ok" and view["report"]["frames_out"] == frames
        assert (view["report"]["video"], view["report"]["output"]) == ("upload:video.mp4", "upload:result.mp4")
        assert str(tmp_path) not in json.dumps(view)  # no path of the service's
        assert view["error"] is None and view["attempts"] == 1
        video = client.get(view["video"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        local = tmp_path / "got.mp4"
        local.write_bytes(video.content)
        assert media.probe(local).frame_count == frames
        part = client.get(view["video"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == video.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(video.content)}"
        text = client.get("/metrics").text
        assert metric(text, 'latentmuse_jobs{status="done"}') == 1 and metric(text, "latentmuse_frames_total") == frames
        assert metric(text, "latentmuse_queue_length") == 0 and metric(text, "latentmuse_job_seconds_count") == 1
        listed = client.get("/v1/jobs").json()
        assert listed["total"] == 1 and listed["jobs"][0]["id"] == job["id"] and listed["next"] is None


def test_a_job_names_files_under_the_input_root_and_nothing_outside_it(tmp_path, worker, media_files):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "clips").mkdir(parents=True)
    outside.mkdir()
    (root / "clips" / "talk.mp4").write_bytes(media_files["video"].read_bytes())
    (root / "clips" / "talk.wav").write_bytes(media_files["short"].read_bytes())
    (outside / "secret.mp4").write_bytes(media_files["video"].read_bytes())
    (root / "clips" / "link.mp4").symlink_to(outside / "secret.mp4")
    state = tmp_path / "state"
    service = make_service(state, InProcessHandle([worker]), input_root=str(root))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for path in ("../outside/secret.mp4", str(outside / "secret.mp4"), "clips/link.mp4", "clips/../../outside/secret.mp4"):
            reply = client.post("/v1/jobs", json={"video": path})
            assert reply.status_code == 403, (path, reply.text)
            assert "outside the service's input root" in reply.json()["error"] and reply.json()["fix"]
        assert jobs_on_disk(state) == []
        assert client.post("/v1/jobs", json={"video": "clips/none.mp4"}).status_code == 422
        reply = client.post("/v1/jobs", json={"video": "clips/talk.mp4", "audio": "clips/talk.wav", "seed": 3})
        assert reply.status_code == 202, reply.text
        view = wait_for(client, reply.json()["id"])
        assert view["status"] == "done" and view["options"] == {"seed": 3}
        assert (view["report"]["video"], view["report"]["audio"]) == ("clips/talk.mp4", "clips/talk.wav")
        assert media.probe(state / "jobs" / view["id"] / "result.mp4").frame_count == 10
        client.delete(f"/v1/jobs/{view['id']}")
        assert (root / "clips" / "talk.mp4").is_file()  # the client's own files are never deleted
    uploads_only = make_service(tmp_path / "state2", StalledHandle())
    with app_server(create_app(uploads_only)) as url, httpx.Client(base_url=url, timeout=30) as client:
        reply = client.post("/v1/jobs", json={"video": "clips/talk.mp4"})
        assert reply.status_code == 403 and "--input-root" in reply.json()["fix"]


# ------------------------------------------------------------------------------------------ refusals

def test_every_route_but_healthz_needs_the_token(tmp_path, media_files):
    service = make_service(tmp_path / "state", StalledHandle(), token=TOKEN)
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/abc"), ("DELETE", "/v1/jobs/abc"),
                                 ("GET", "/v1/jobs/abc/video"), ("GET", "/metrics"), ("POST", "/v1/jobs")):
                reply = client.request(method, path, headers=headers)
                assert reply.status_code == 401, (method, path, headers)
                assert reply.headers["www-authenticate"].startswith("Bearer") and reply.json()["fix"]
        assert upload(client, media_files["video"]).status_code == 401 and jobs_on_disk(tmp_path / "state") == []
        assert client.get("/openapi.json").status_code == 401 and client.get("/docs").status_code == 404
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/jobs", headers=good).json()["total"] == 0
        schemes = client.get("/openapi.json", headers=good).json()["components"]["securitySchemes"]
        assert schemes["HTTPBearer"]["scheme"] == "bearer"
        assert upload(client, media_files["video"], headers=good).status_code == 202


def test_an_oversized_upload_is_413_and_leaves_nothing(tmp_path, media_files):
    state = tmp_path / "state"
    service = make_service(state, StalledHandle(), max_upload_mb=1)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 * 2**20))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        reply = upload(client, big)  # with a Content-Length: refused before the body is read
        assert reply.status_code == 413 and "1 MiB" in reply.json()["error"]

        def chunks():  # chunked, no length: counted as it streams to disk
            boundary = b"b0undary"
            yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n'
            for _ in range(48):
                yield os.urandom(64 * 1024)
            yield b"\r\n--" + boundary + b"--\r\n"

        reply = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
        assert reply.status_code == 413, reply.text
        assert jobs_on_disk(state) == [] and service.store.counts()[QUEUED] == 0


def test_bad_media_is_422_with_runs_own_error_and_nothing_kept(tmp_path, media_files):
    state = tmp_path / "state"
    service = make_service(state, StalledHandle())
    truncated = truncate_copy(media_files["video"], tmp_path / "cut.mp4", 0.4)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    silent = write_level_video(tmp_path / "silent.mp4", 10, Fraction(25), None)
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for video, audio, words in ((truncated, None, "is truncated"), (text, None, "not a media file"),
                                    (silent, None, "no audio")):
            reply = upload(client, video, audio)
            assert reply.status_code == 422, (video, reply.text)
            body = reply.json()
            assert words in body["error"] and body["fix"], body
            assert str(state) not in body["error"]  # the service's paths are not shown
        reply = client.post("/v1/jobs", files={"audio": ("a.wav", media_files["short"].read_bytes())})
        assert reply.status_code == 422 and "no video" in reply.json()["error"]
        reply = client.post("/v1/jobs", content=b"video=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status_code == 415
        assert jobs_on_disk(state) == [] and service.store.page()[1] == 0


def test_options_are_checked_as_a_batch_jobs(tmp_path, media_files):
    state = tmp_path / "state"
    service = make_service(state, StalledHandle())
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for options, words in (({"steps": "many"}, "steps 'many' is not a number"), ({"colour": "red"}, "unknown key 'colour'"),
                               ({"output": "/etc/x.mp4"}, "output is chosen by the service"),
                               ({"weights": "/x"}, "weights is fixed for the whole service"), ({"steps": "0"}, "--steps 0 is outside"),
                               ({"min_sync_confidence": "5"}, "needs the lip-sync score, which is off"),
                               ({"cache": "/tmp"}, "unknown key 'cache'"), ({"musetalk_only": "perhaps"}, "musetalk_only")):
            reply = upload(client, media_files["video"], **options)
            assert reply.status_code == 422, (options, reply.text)
            assert words in reply.json()["error"], reply.json()
        assert jobs_on_disk(state) == []
        reply = upload(client, media_files["video"], steps="3", musetalk_only="true", face="center")
        assert reply.status_code == 202 and reply.json()["options"] == {"steps": 3, "musetalk_only": True, "face": "center"}


def test_a_full_queue_is_503_and_a_busy_client_429(tmp_path, media_files):
    handle = StalledHandle()
    service = make_service(tmp_path / "state", handle, max_queue=2, max_jobs_per_client=3)
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        ids = [upload(client, media_files["video"]).json()["id"] for _ in range(2)]
        reply = upload(client, media_files["video"])
        assert reply.status_code == 503 and int(reply.headers["retry-after"]) >= 1
        assert "queue is full (2 jobs waiting)" in reply.json()["error"]
        assert len(jobs_on_disk(tmp_path / "state")) == 2 and len(handle.sent) == 2
        service.settings.max_queue = 10
        assert upload(client, media_files["video"]).status_code == 202
        reply = upload(client, media_files["video"])
        assert reply.status_code == 429 and "limit is 3" in reply.json()["error"] and reply.headers["retry-after"]
        client.delete(f"/v1/jobs/{ids[0]}")  # a slot of this client's is free again
        assert upload(client, media_files["video"]).status_code == 202


# ------------------------------------------------------------------------------------------ cancel, retry, restart

def test_cancel_a_queued_and_a_running_job(tmp_path, worker, media_files):
    state = tmp_path / "state"
    service = make_service(state, InProcessHandle([worker]))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        running = upload(client, media_files["video"], media_files["long"]).json()["id"]
        queued = upload(client, media_files["video"], media_files["short"]).json()["id"]
        after = upload(client, media_files["video"], media_files["short"]).json()["id"]
        deadline = time.monotonic() + POLL_LIMIT_S
        while client.get(f"/v1/jobs/{running}").json()["progress"]["frames_done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(POLL_S)
        gone = client.delete(f"/v1/jobs/{queued}").json()
        assert gone["status"] == "cancelled" and gone["deleted"] and not (state / "jobs" / queued).exists()
        stopped = client.delete(f"/v1/jobs/{running}").json()
        assert stopped["status"] == "cancelled" and stopped["progress"]["frames_done"] < 75
        assert client.get(f"/v1/jobs/{running}/video").status_code == 410
        assert wait_for(client, after)["status"] == "done"  # the worker is free again
        assert not (state / "jobs" / running).exists() and not (state / "jobs" / queued).exists()
        assert client.delete("/v1/jobs/nope").status_code == 404
        text = client.get("/metrics").text
        assert metric(text, 'latentmuse_jobs{status="cancelled"}') == 2 and metric(text, 'latentmuse_jobs{status="done"}') == 1


def test_a_job_whose_worker_died_is_sent_again_then_failed(tmp_path, worker, media_files):
    service = make_service(tmp_path / "state", FailingHandle([worker], failures=1))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        view = wait_for(client, upload(client, media_files["video"], media_files["short"]).json()["id"])
        assert view["status"] == "done" and view["attempts"] == 2
    service = make_service(tmp_path / "state2", FailingHandle([worker], failures=MAX_ATTEMPTS))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        view = wait_for(client, upload(client, media_files["video"], media_files["short"]).json()["id"])
        assert view["status"] == "failed" and view["error"] == f"the worker failed {MAX_ATTEMPTS} times: its last words"
        assert view["fix"] and client.get(f"/v1/jobs/{view['id']}/video").status_code == 409


def test_a_restart_runs_the_queued_jobs_and_redoes_nothing_finished(tmp_path, worker, media_files):
    state = tmp_path / "state"
    first = make_service(state, StalledHandle())
    with app_server(create_app(first)) as url, httpx.Client(base_url=url, timeout=30) as client:
        waiting = upload(client, media_files["video"], media_files["short"]).json()["id"]
    second = make_service(state, InProcessHandle([worker]))
    with app_server(create_app(second)) as url, httpx.Client(base_url=url, timeout=30) as client:
        view = wait_for(client, waiting)
        assert view["status"] == "done" and view["attempts"] == 1
    output = state / "jobs" / waiting / "result.mp4"
    stamp = output.stat().st_mtime_ns
    second.store = JobStore(state / "jobs.sqlite3")
    second.store.update(waiting, status=RUNNING, finished=None)  # stopped after its video was written, before its end was recorded
    third = make_service(state, InProcessHandle([worker]))
    with app_server(create_app(third)) as url, httpx.Client(base_url=url, timeout=30) as client:
        view = wait_for(client, waiting)
        assert view["status"] == "done" and view["progress"]["frames_done"] == 10
    assert output.stat().st_mtime_ns == stamp  # the resume key kept the finished video: not made twice
    assert json.loads((state / "jobs" / waiting / "result.mp4.json").read_text())["status"] == "ok"


def test_the_job_list_pages_and_filters(tmp_path, media_files):
    service = make_service(tmp_path / "state", StalledHandle(), max_jobs_per_client=10)
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        ids = [upload(client, media_files["video"]).json()["id"] for _ in range(3)]
        client.delete(f"/v1/jobs/{ids[1]}")
        first = client.get("/v1/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in first["jobs"]] == ids[:2] and first["total"] == 3 and first["next"] == "/v1/jobs?offset=2&limit=2"
        assert [j["id"] for j in client.get(first["next"]).json()["jobs"]] == ids[2:]
        queued = client.get("/v1/jobs", params={"status": "queued"}).json()
        assert [j["id"] for j in queued["jobs"]] == [ids[0], ids[2]]
        assert client.get("/v1/jobs", params={"status": "lost"}).status_code == 422
        assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
        invalid = client.get("/v1/jobs", params={"offset": "first"})
        assert invalid.status_code == 422 and invalid.json()["error"].startswith("query offset:") and invalid.json()["fix"]
        assert client.get(f"/v1/jobs/{ids[0]}/video").status_code == 409
        health = client.get("/healthz").json()
        assert health == {"status": "ok", "workers": 1, "queued": 2, "running": 0}
        assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
