"""The Ray Serve application of ``latentmuse serve``: an ingress and a worker deployment.

- ``LipSyncWorker``: :class:`~.worker.JobWorker`, one replica per GPU (``num_gpus=1``), or ``--workers``
  CPU replicas (one core each) on a cluster without GPUs; ``max_ongoing_requests=1``: a replica runs
  one job at a time, and Ray Serve queues the rest and routes each to the first free replica.
- ``Ingress``: the FastAPI app (:func:`~.api.create_app`), one replica, pinned to the node that runs
  ``latentmuse serve`` (its SQLite store is that node's file, written by that one process); it holds no
  GPU and no core of its own.

Nothing here is a queue, a scheduler or a worker protocol of our own: requests go through a Serve
deployment handle; a replica that dies is replaced by Serve's controller. ``ray`` is imported only here.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from ..errors import LatentmuseError
from .api import JobService, ServeSettings, create_app, split_reason
from .worker import JobWorker

APP_NAME = "latentmuse"
#: how long a stopping worker replica waits for its job before Serve kills it (the job is requeued at
#: the next start, and its writer's temporary files swept then)
WORKER_SHUTDOWN_S = 5.0
#: requests the ingress serves at once (status calls, uploads in flight, the page)
INGRESS_CONCURRENCY = 256


class Ingress:
    """The ingress replica: a :class:`JobService` over the worker deployment's handle, and its app."""

    def __init__(self, settings: dict, worker) -> None:
        self.service = JobService(ServeSettings.from_dict(settings), worker)

    def __serve_build_asgi_app__(self):
        return create_app(self.service)


def import_serve():
    try:
        from ray import serve
    except ImportError:
        raise LatentmuseError("latentmuse serve needs Ray Serve and FastAPI, which are not installed.",
                              "pip install 'latentmuse[serve]'.") from None
    return serve


def check_port_free(host: str, port: int) -> None:
    """One line before Ray starts, rather than a proxy that cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LatentmuseError(f"cannot listen on {host}:{port} ({exc.strerror or exc}).",
                                  "stop what uses that port, or pass another --port.") from None


def worker_resources(ray, workers: int | None) -> tuple[int, dict, int | None, str]:
    """Replicas, their Ray resources, torch threads per replica and a description: one per GPU, else
    ``workers`` (default 1) CPU replicas of one core each."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        count = workers or gpus
        return count, {"num_gpus": 1}, None, f"{count} GPU worker{'s' if count != 1 else ''}"
    count = workers or 1
    return count, {"num_cpus": 1}, 1, f"{count} CPU worker{'s' if count != 1 else ''} (no GPU in the cluster)"


def deploy(ray, settings: ServeSettings, host: str, port: int, workers: int | None) -> str:
    """Start Serve's proxy on ``host:port`` and run the application; a description of its workers."""
    serve = import_serve()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve client: its INFO lines are Ray's business
    count, resources, threads, described = worker_resources(ray, workers)
    settings.workers = count
    node = f"node:{ray.util.get_node_ip_address()}"
    # one proxy, on this node: the port checked free here is the only one the service listens on
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    worker = serve.deployment(name="LipSyncWorker", num_replicas=count, max_ongoing_requests=1, max_queued_requests=-1,
                              graceful_shutdown_timeout_s=WORKER_SHUTDOWN_S, health_check_period_s=10,
                              ray_actor_options=resources)(JobWorker)
    ingress = serve.deployment(name="Ingress", num_replicas=1, max_ongoing_requests=INGRESS_CONCURRENCY,
                               ray_actor_options={"num_cpus": 0, "resources": {node: 0.001}})(serve.ingress()(Ingress))
    app = ingress.bind(asdict(settings), worker.bind(settings.load, threads))
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # noqa: BLE001 - a replica that could not start (its weights, its device)
        message, fix = split_reason(replica_error(serve) or _cause(exc))
        raise LatentmuseError(f"the service did not start: {message}",
                              fix or "run `latentmuse doctor` with the same options, fix what it names, and start again.") from None
    return described


def replica_error(serve) -> str | None:
    """Our own error line (message and fix) from a deployment that failed to start, if one is in its status."""
    try:
        deployments = serve.status().applications[APP_NAME].deployments
    except Exception:  # noqa: BLE001 - no status to read: the caller says what it has
        return None
    for deployment in deployments.values():
        for line in reversed((deployment.message or "").splitlines()):
            match = re.search(r"(?:LatentmuseError|CheckpointError): (.+)", line)
            if match:
                return match.group(1).strip()
    return None


def deploy_interruptibly(ray, settings: ServeSettings, host: str, port: int, workers: int | None,
                         check: Callable[[], None]) -> str:
    """:func:`deploy` in a thread, so that a signal (``check`` raises) stops a start that waits for replicas
    the cluster cannot place; the caller's ``serve.shutdown`` then ends the thread's wait."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["described"] = deploy(ray, settings, host, port, workers)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="latentmuse-deploy", daemon=True)
    thread.start()
    while thread.is_alive():
        check()
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["described"]


def wait_ready(url: str, timeout: float = 60.0, check: Callable[[], None] = lambda: None) -> None:
    """Until ``/healthz`` answers (Serve's proxy routes once the app is up)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        check()
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:  # noqa: S310 - our own loopback URL
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LatentmuseError(f"the service did not answer at {url}/healthz within {timeout:.0f} s.",
                                  "see Ray Serve's log (/tmp/ray/session_latest/logs/serve).")
        time.sleep(0.5)


def shutdown() -> None:
    import_serve().shutdown()


def _cause(exc: BaseException) -> str:
    """The last meaningful line of a deployment error (Serve wraps the replica's traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else type(exc).__name__
