"""``latentmuse serve``: the HTTP job service on Ray Serve (docs/SERVE.md)."""

from __future__ import annotations

import functools
import ipaddress
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LatentmuseError
from ..outcomes import Interrupted, signals_as_interrupts
from ..runtime.options import ClipOptions, LoadOptions
from .console import make_console
from .options import OPTIONS, processing_options

console = make_console()

#: the environment variable that holds the token when no --token-file is given
TOKEN_ENV = "LATENTMUSE_TOKEN"
#: the run's options a service fixes for all its jobs: what the workers load, and the face cache
SERVE_OPTIONS = tuple(name for name, (_, _, kind) in OPTIONS.items() if kind == "load") + ("cache", "no_cache")


@functools.partial(processing_options, names=SERVE_OPTIONS)
def serve(
    ray: Annotated[str, typer.Option(metavar="auto|local|ADDRESS", help="auto: a running Ray cluster, else a new local one; local: always a new local one; or a cluster's address (ray start --head).")] = "auto",
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token-file.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    state: Annotated[Path, typer.Option(help="Job records (jobs.sqlite3) and each job's files (jobs/ID/); on storage every node sees in a cluster.")] = Path("latentmuse-serve"),
    token_file: Annotated[Optional[Path], typer.Option(help=f"A file holding the bearer token every route but /healthz requires (or set ${TOKEN_ENV}).")] = None,
    input_root: Annotated[Optional[Path], typer.Option(help="Let JSON requests name input files under this folder (never outside it); without it, uploads only.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker replicas (default: one per GPU; 1 on a cluster without GPUs).")] = None,
    max_upload_mb: Annotated[float, typer.Option(min=1, help="Largest upload (video + audio) in MiB; larger ones get 413.")] = 2048.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Jobs waiting for a worker; past this, 503 with Retry-After.")] = 100,
    max_jobs_per_client: Annotated[int, typer.Option(min=1, help="Queued and running jobs one client address may have; past this, 429.")] = 10,
    max_seconds: Annotated[Optional[float], typer.Option(min=0.1, help="Longest clip a job may be, in seconds (default: no limit).")] = None,
    web: Annotated[bool, typer.Option("--web/--no-web", help="The web page at / (Gradio).")] = True,
    *, load: LoadOptions, clip: ClipOptions,
) -> None:
    """Serve lip-sync jobs over HTTP: POST /v1/jobs, GET /v1/jobs/ID, its /video, DELETE to cancel;
    /healthz, /metrics, OpenAPI at /docs and a web page at /.

    Jobs are durable: stopping the service (Ctrl-C, SIGTERM, a crash) and starting it again with the
    same --state resumes the queued and running ones; done jobs stay done.
    """
    from ..batch.ray_backend import connect, import_ray
    from ..runtime.checks import check_load_options
    from ..runtime.options import options_to_dict
    from ..serve import service
    from ..serve.api import ServeSettings

    token = read_token(token_file)
    if token is None and not is_loopback(host):
        raise LatentmuseError(f"--host {host} is reachable from other machines, and the service has no token.",
                              f"pass --token-file FILE (or set ${TOKEN_ENV}), or listen on 127.0.0.1.")
    check_load_options(load)
    if str(load.weights) != "smoke" and not Path(load.weights).is_dir():
        raise LatentmuseError(f"weights folder {load.weights} does not exist.",
                              "pass the folder `latentmuse weights download` wrote (or --weights smoke to try the service).")
    if input_root is not None and not input_root.is_dir():
        raise LatentmuseError(f"--input-root {input_root} is not a folder.", "pass the folder clients may name files in.")
    service.import_serve()
    service.check_port_free(host, port)
    state = state.resolve()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LatentmuseError(f"cannot create --state {state} ({exc.strerror or exc}).", "pass a writable folder.") from None
    lock = hold_state(state)  # held for the service's life, released at its end
    load = absolute_paths(load)
    settings = ServeSettings(str(state), options_to_dict(load), options_to_dict(clip),
                             None if input_root is None else str(input_root.resolve()), token, max_upload_mb, max_queue,
                             max_jobs_per_client, max_seconds, web=web)
    ray_module = import_ray()
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    with signals_as_interrupts(raise_now=False) as guard:
        started = connect(ray_module, ray)
        try:
            console.print(f"starting the service on Ray (--ray {ray}); the workers load their networks first")
            described = service.deploy_interruptibly(ray_module, settings, host, port, workers, guard.check)
            service.wait_ready(url, check=guard.check)
            console.print(f"[bold]latentmuse serve[/]: {url}  (API /v1/jobs, OpenAPI {'/openapi.json' if token else '/docs'}{', page /' if web else ''}); "
                          f"{described}; state {state}; {'token required' if token else 'no token (loopback only)'}. "
                          "Ctrl-C stops; queued and running jobs resume at the next start.", soft_wrap=True)
            while True:
                guard.check()
                time.sleep(0.5)
        except Interrupted as exc:
            console.print(f"{exc}: stopping (queued and running jobs resume at the next start with --state {state})")
        finally:
            try:
                service.shutdown()
            finally:
                if started:
                    ray_module.shutdown()
                lock.close()


def read_token(path: Path | None) -> str | None:
    """The bearer token: the file's text (stripped), else ``$LATENTMUSE_TOKEN``, else None."""
    if path is None:
        value = os.environ.get(TOKEN_ENV, "").strip()
        return value or None
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise LatentmuseError(f"cannot read --token-file {path} ({getattr(exc, 'strerror', None) or exc}).",
                              "write the token into that file (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))').") from None
    if not value:
        raise LatentmuseError(f"--token-file {path} is empty.", "write a token into it (32 random bytes, e.g. secrets.token_urlsafe(32)).")
    if len(value) < 16:
        raise LatentmuseError(f"the token in {path} is {len(value)} characters: too easy to guess.", "use at least 16 random characters.")
    return value


def hold_state(state: Path):
    """An exclusive lock on ``state`` for this service's life: two services on one job store would both run
    its jobs. The open file is the lock (released when the process ends, however it ends)."""
    import fcntl

    handle = (state / "serve.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise LatentmuseError(f"another latentmuse serve uses --state {state}.",
                              "stop it first, or give this one another --state.") from None
    return handle


def absolute_paths(load: LoadOptions) -> LoadOptions:
    """The load's paths as absolute ones: the workers run in Ray's own working folder, not this one."""
    from dataclasses import replace

    from ..models.constants import SMOKE

    values = {}
    if str(load.weights) != SMOKE:
        values["weights"] = str(Path(load.weights).expanduser().resolve())
    for name in ("engines", "trust_torchscript"):
        if getattr(load, name) is not None:
            values[name] = Path(getattr(load, name)).expanduser().resolve()
    return replace(load, **values)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
