"""``latentmuse serve`` as users run it: a separate process with its own local Ray cluster (``--ray local``,
two CPU worker replicas on smoke weights), driven over HTTP on 127.0.0.1 by a real client.

Twenty concurrent submissions all complete, once each, with every frame; a full queue answers 503;
killing the whole service (its process group, Ray included) mid-job and starting it again on the same
``--state`` completes the job once. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the serve extra is not installed (pip install 'latentmuse[serve]')")
httpx = pytest.importorskip("httpx")

from latentmuse.runtime import media  # noqa: E402

from .helpers import write_wav  # noqa: E402
from .serve_support import free_port  # noqa: E402
from .test_serve_api import metric  # noqa: E402

START_LIMIT_S, JOB_LIMIT_S = 180.0, 300.0
MAX_QUEUE = 20
SHORT_FRAMES, LONG_FRAMES = 10, 75


class LiveService:
    """``latentmuse serve`` in a process group of its own (Ray's processes join it), so that a kill takes it all."""

    def __init__(self, state: Path, log: Path) -> None:
        self.state, self.log, self.port = state, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "latentmuse", "serve", "--ray", "local", "--workers", "2", "--port", str(self.port),
                   "--state", str(self.state), "--weights", "smoke", "--face-detector", "dlib", "--generator", "musetalk",
                   "--no-cache", "--no-web", "--max-queue", str(MAX_QUEUE), "--max-jobs-per-client", "50"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            assert self.process.poll() is None, f"the service exited ({self.process.returncode}): {self.tail()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the service did not start in {START_LIMIT_S} s: {self.tail()}"
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL to the whole group: the command, Ray's head, its replicas (no cleanup of any kind)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        # Ray's workers (Serve's proxy and replicas among them) are children of its raylet, not of this
        # group: they exit when they find the raylet gone, within seconds
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
            except httpx.HTTPError:
                return
            assert time.monotonic() < deadline, "the killed service still answers"
            time.sleep(0.5)

    def stop(self) -> int:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(30)
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # whatever of Ray's is left in the group
            except ProcessLookupError:
                pass

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    service = LiveService(folder / "state", folder / "serve.log")
    service.start()
    yield service
    if service.process.poll() is None:
        service.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, clip):
    folder = tmp_path_factory.mktemp("inputs")
    return {"video": clip.video.read_bytes(), "short": write_wav(folder / "short.wav", 0.4).read_bytes(),
            "long": write_wav(folder / "long.wav", 3.0, freq=180.0).read_bytes()}


def submit(url: str, inputs: dict, audio: str = "short") -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", files={"video": ("talk.mp4", inputs["video"]), "audio": ("a.wav", inputs[audio])},
                      timeout=60)


def finished(url: str, ids: list[str], limit: float = JOB_LIMIT_S) -> dict[str, dict]:
    deadline, views = time.monotonic() + limit, {}
    with httpx.Client(base_url=url, timeout=30) as client:
        while len(views) < len(ids):
            for job_id in ids:
                if job_id not in views:
                    view = client.get(f"/v1/jobs/{job_id}").json()
                    if view["status"] not in ("queued", "running"):
                        views[job_id] = view
            assert time.monotonic() < deadline, f"{len(ids) - len(views)} jobs unfinished after {limit} s"
            time.sleep(0.5)
    return views


def test_twenty_concurrent_jobs_all_complete_once_with_every_frame(live, inputs, tmp_path):
    replies: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def one() -> None:
        start.wait(30)
        reply = submit(live.url, inputs)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r.status_code for r in replies] == [202] * 20, [r.text for r in replies if r.status_code != 202]
    ids = [r.json()["id"] for r in replies]
    assert len(set(ids)) == 20
    views = finished(live.url, ids)
    assert {v["status"] for v in views.values()} == {"done"}, {v["id"]: (v["status"], v["error"]) for v in views.values()}
    assert all(v["progress"] == {"frames_done": SHORT_FRAMES, "frames_total": SHORT_FRAMES} and v["attempts"] == 1
               for v in views.values())
    assert len({v["worker"] for v in views.values()}) == 2  # both replicas took jobs
    for job_id in ids:
        assert media.probe(live.state / "jobs" / job_id / "result.mp4").frame_count == SHORT_FRAMES
    downloaded = tmp_path / "one.mp4"
    downloaded.write_bytes(httpx.get(f"{live.url}{views[ids[0]]['video']}", timeout=30).content)
    assert media.probe(downloaded).frame_count == SHORT_FRAMES
    listed = httpx.get(f"{live.url}/v1/jobs", params={"limit": 500}, timeout=30).json()
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(ids) and listed["total"] == 20  # none lost, none twice
    text = httpx.get(f"{live.url}/metrics", timeout=30).text
    assert metric(text, 'latentmuse_jobs{status="done"}') == 20 and metric(text, "latentmuse_frames_total") == 20 * SHORT_FRAMES
    assert metric(text, "latentmuse_job_seconds_count") == 20 and metric(text, "latentmuse_queue_length") == 0


def test_a_full_queue_answers_503_and_cancelled_jobs_leave_nothing(live, inputs):
    ids, refused = [], None
    for _ in range(MAX_QUEUE + 4):  # two run, MAX_QUEUE wait, the next is refused
        reply = submit(live.url, inputs, "long")
        if reply.status_code != 202:
            refused = reply
            break
        ids.append(reply.json()["id"])
    assert refused is not None and refused.status_code == 503, refused and refused.text
    assert int(refused.headers["retry-after"]) >= 1 and "queue is full" in refused.json()["error"]
    assert MAX_QUEUE <= len(ids) <= MAX_QUEUE + 2
    for job_id in ids:
        reply = httpx.delete(f"{live.url}/v1/jobs/{job_id}", timeout=60)
        assert reply.status_code == 200 and reply.json()["status"] in ("cancelled", "done"), reply.text
    deadline = time.monotonic() + 60
    while any((live.state / "jobs" / job_id).exists() for job_id in ids):
        assert time.monotonic() < deadline, "a cancelled job's folder is still there"
        time.sleep(0.5)
    health = httpx.get(f"{live.url}/healthz", timeout=30).json()
    assert health["queued"] == 0 and health["running"] == 0


def test_killing_the_service_mid_job_and_restarting_completes_the_job_once(live, inputs):
    job_id = submit(live.url, inputs, "long").json()["id"]
    deadline = time.monotonic() + JOB_LIMIT_S
    while httpx.get(f"{live.url}/v1/jobs/{job_id}", timeout=30).json()["progress"]["frames_done"] < 5:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    live.kill()
    live.start()
    view = finished(live.url, [job_id])[job_id]
    assert view["status"] == "done" and view["attempts"] == 2, view
    assert view["progress"] == {"frames_done": LONG_FRAMES, "frames_total": LONG_FRAMES}
    folder = live.state / "jobs" / job_id
    assert media.probe(folder / "result.mp4").frame_count == LONG_FRAMES
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "result.mp4", "result.mp4.json", "video.mp4"]  # no partials
    listed = httpx.get(f"{live.url}/v1/jobs", params={"limit": 500}, timeout=30).json()["jobs"]
    assert [j["id"] for j in listed].count(job_id) == 1
    assert live.stop() == 0
