"""The web page at ``/`` (Gradio), mounted on the API's app: upload a clip, follow its job, watch the result.

The page is a client of the same :class:`~.api.JobService` as the HTTP API, in the same process and on
the same event loop: a submission goes through :meth:`JobService.submit_files` (the API's admission,
option checks and input probes, so a refusal reads exactly as the API's error and fix), and the page
follows the job by reading its durable record (``service.store``) every :data:`POLL_S` seconds. Nothing
runs in the page's handlers but that: the work is the workers'. A result is handed to Gradio from a
temporary folder of its own (:func:`publish`), so Gradio is never allowed to serve the jobs' folders,
which hold every client's uploads.

Gradio is imported inside :func:`mount_page`, never at module level: it is an optional dependency (the
``serve`` extra), slow to import, and the API runs without it (``latentmuse serve --no-web``;
:func:`~.api.create_app` imports this module only when the page is on). For the same reason this module
has no ``from __future__ import annotations``: Gradio finds a handler's ``gr.Request`` parameter by its
annotation, which must then be the class itself, not a string naming a module-local import. The page
keeps no global state: everything it needs is closed over per call of :func:`mount_page`.

When the service has a token the page asks for it (Gradio's login form; any user name, the token as the
password, compared in constant time). The API's routes (``/v1/...``, ``/healthz``, ``/metrics``, the
OpenAPI routes) were added before the page's mount at ``/``, so Starlette matches them first and they
keep their own bearer-token check; a login to the page does not open them.
"""

import asyncio
import hmac
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LatentmuseError
from .store import ACTIVE, DONE, LOW_SYNC, QUEUED

if TYPE_CHECKING:
    import gradio
    from fastapi import FastAPI

    from .api import JobService
    from .store import JobRecord

#: how often the page reads a followed job's record
POLL_S = 0.5
#: how long one page submission follows its job before it hands over to the API (the job runs on)
FOLLOW_LIMIT_S = 12 * 3600.0
#: the generator choices: the per-clip option ``musetalk_only`` of each, and how the page names them
GENERATORS: dict[str, tuple[str, bool]] = {
    "latentsync": ("LatentSync (MuseTalk fallback)", False),
    "musetalk": ("MuseTalk", True),
}
#: Gradio's cached files (uploads, the results it plays) are removed after a day, checked hourly
CACHE_CLEANUP = (3600, 24 * 3600)
#: the videos' box height in pixels (a portrait clip would otherwise stretch the page)
VIDEO_HEIGHT = 420
#: the login form's line (Gradio's form needs a user name; any will do)
AUTH_MESSAGE = "password: the service's token (user name: any)"


def mount_page(app: "FastAPI", service: "JobService", *, poll_s: float = POLL_S,
               follow_limit_s: float = FOLLOW_LIMIT_S) -> "FastAPI":
    """Mount the page on ``app`` at ``/`` (after the API's routes, which keep precedence); ``app``."""
    import gradio as gr

    blocks = build_page(service, poll_s=poll_s, follow_limit_s=follow_limit_s)
    token = service.settings.token
    return gr.mount_gradio_app(
        app, blocks, path="/",
        auth=None if token is None else token_check(token),
        auth_message=None if token is None else AUTH_MESSAGE,
        max_file_size=int(service.settings.max_upload_mb * 2**20),
        footer_links=["settings"],  # no link to Gradio's own API: the service's API is /v1 (docs/SERVE.md)
        run_history=False, ssr_mode=False, show_error=True)


def token_check(token: str) -> Callable[[str, str], bool]:
    """Gradio's ``auth`` callable: any user name, the service's token as the password (constant time)."""
    expected = token.encode()

    def check(username: str, password: str) -> bool:
        return hmac.compare_digest((password or "").encode(), expected)

    return check


def generator_choices(service: "JobService") -> list[str]:
    """The generators a job may pick: both, unless the service loaded MuseTalk only."""
    if service.settings.load.get("generator") == "musetalk":
        return ["musetalk"]
    return list(GENERATORS)


def build_page(service: "JobService", *, poll_s: float = POLL_S,
               follow_limit_s: float = FOLLOW_LIMIT_S) -> "gradio.Blocks":
    """The page's ``gr.Blocks``, its handlers bound to ``service``."""
    import gradio as gr

    choices = generator_choices(service)
    steps_default = int(service.clip.steps)

    async def run_job(video: str | None, audio: str | None, generator: str, steps: float | None,
                      request: gr.Request) -> AsyncIterator[dict]:
        """Submit, then follow the job to its end: status and progress, then the result, report and score.
        The button is off meanwhile (on again by the event's ``then``, however this ends); a page closed
        mid-job only stops following it: the job runs on."""
        yield {status: "Submitting…", result: None, report: None, sync: "", button: gr.Button(interactive=False)}
        async for update in submit_and_follow(video, audio, generator, steps, request):
            yield update

    async def submit_and_follow(video: str | None, audio: str | None, generator: str, steps: float | None,
                                request: gr.Request) -> AsyncIterator[dict]:
        if not video:
            gr.Warning("Upload a video first.")
            yield {status: refusal_text("no video.", "upload a video with a face (and, optionally, an audio track).")}
            return
        if generator not in choices:
            yield {status: refusal_text(f"the generator {generator!r} is not offered.", f"pick one of {', '.join(choices)}.")}
            return
        options = {"musetalk_only": GENERATORS[generator][1], "steps": steps_default if steps is None else int(round(steps))}
        client = request.client.host if request is not None and request.client else ""
        try:
            record = await service.submit_files(Path(video), Path(audio) if audio else None, options, client)
        except LatentmuseError as exc:  # Refused: a full queue, a client at its limit, bad input or options
            gr.Warning(exc.message + (f" Fix: {exc.fix}" if exc.fix else ""))
            yield {status: refusal_text(exc.message, exc.fix, getattr(exc, "status", None))}
            return
        async for update in follow(record.id):
            yield update

    async def follow(job_id: str) -> AsyncIterator[dict]:
        deadline = time.monotonic() + follow_limit_s
        shown = None
        while True:
            record = service.store.get(job_id)
            if record is None:
                yield {status: f"Job `{job_id}` is no longer on record."}
                return
            if record.status not in ACTIVE:
                break
            text = progress_text(record)
            if text != shown:
                shown = text
                yield {status: text}
            if time.monotonic() >= deadline:
                yield {status: text + f"\n\nThe page stopped following it after {follow_limit_s / 60:.0f} min; the job runs on: "
                                      f"`GET /v1/jobs/{job_id}`."}
                return
            await asyncio.sleep(poll_s)
        view = service.view(record)
        with tempfile.TemporaryDirectory(prefix="latentmuse-page-") as folder:
            video = None
            if view["video"] is not None and record.output.is_file():
                video = await asyncio.to_thread(publish, record.output, Path(folder) / f"{job_id}.mp4")
            # Gradio copies the file into its cache before it resumes this generator, so the folder
            # (outside the job's folder, which the page never exposes) can go right after
            yield {status: outcome_text(record), result: video, report: view["report"], sync: sync_text(view["sync"])}

    with gr.Blocks(title="latentmuse", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as page:
        gr.Markdown("# latentmuse: lip sync\n"
                    "Upload a video with a face and, optionally, the audio to dub it with (without one, the video's "
                    "own track is used). The job runs on the service's workers; the same jobs are on the HTTP API "
                    + ("(`/v1/jobs`, with the token as a bearer token)." if service.settings.token else "([/docs](/docs))."))
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label="Video", sources=["upload"], height=VIDEO_HEIGHT, elem_id="video-in")
                audio_in = gr.Audio(label="Audio (optional)", sources=["upload"], type="filepath", buttons=["download"],
                                    elem_id="audio-in")
                generator_in = gr.Radio([(GENERATORS[name][0], name) for name in choices], value=choices[0],
                                        label="Generator", elem_id="generator",
                                        info=None if len(choices) > 1 else "This service loaded MuseTalk only.")
                steps_in = gr.Slider(1, 1000, value=steps_default, step=1, label="Steps", elem_id="steps",
                                     info="LatentSync's denoising steps (MuseTalk runs in one).")
                button = gr.Button("Lip-sync", variant="primary", elem_id="submit")
            with gr.Column():
                status = gr.Markdown("Upload a video, then press Lip-sync.", elem_id="status")
                result = gr.Video(label="Result", interactive=False, buttons=["download"], height=VIDEO_HEIGHT,
                                  elem_id="result")
                sync = gr.Markdown("", elem_id="sync")
                report = gr.JSON(label="Run report", elem_id="report")
        # the HTTP API is the documented way in (/docs): Gradio's API for the page's event stays undocumented
        button.click(run_job, [video_in, audio_in, generator_in, steps_in], [status, result, report, sync, button],
                     concurrency_limit=None,  # each follow only polls; admission is the service's (429/503)
                     show_progress="minimal", api_name="lipsync", api_visibility="undocumented",
                     ).then(lambda: gr.Button(interactive=True), None, button, queue=False, api_visibility="private")
    return page


def publish(output: Path, target: Path) -> str:
    """The result where Gradio may read it (a link, or a copy across file systems): the page never
    widens Gradio's allowed paths to the jobs' folders, which hold every client's uploads."""
    try:
        os.link(output, target)
    except OSError:
        shutil.copyfile(output, target)
    return str(target)


# ----------------------------------------------------------------------------------- the texts

def progress_text(record: "JobRecord") -> str:
    head = f"Job `{record.id}`: **{record.status}**"
    if record.status == QUEUED:
        return head + ", waiting for a worker."
    if not record.frames_total:
        return head + ", starting."
    percent = 100 * record.frames_done / record.frames_total
    return head + f", {record.frames_done} / {record.frames_total} frames ({percent:.0f} %)."


def outcome_text(record: "JobRecord") -> str:
    text = f"Job `{record.id}`: **{record.status}**"
    if record.status in (DONE, LOW_SYNC):
        seconds = f" in {record.seconds:.1f} s" if record.seconds is not None else ""
        text += f"{seconds}: {record.frames_done} frames"
        text += ", below the service's lip-sync threshold." if record.status == LOW_SYNC else "."
    else:
        text += "."
    if record.error:  # a finished video's error is about some of its frames (those that failed every generator)
        text += f"\n\n**{'Warning' if record.status in (DONE, LOW_SYNC) else 'Error'}**: {record.error}"
    if record.fix:
        text += f"\n\n**Fix**: {record.fix}"
    return text


def refusal_text(message: str, fix: str | None, code: int | None = None) -> str:
    text = f"**Not submitted**{f' ({code})' if code else ''}: {message}"
    return text + (f"\n\n**Fix**: {fix}" if fix else "")


def sync_text(sync: dict[str, Any] | None) -> str:
    """The sync block of the report (LSE-C, LSE-D), or that the clip was not scored."""
    if not sync or sync.get("confidence") is None:
        return "**Sync score**: not scored."
    parts = [f"confidence {sync['confidence']:.2f} (LSE-C)"]
    if sync.get("distance") is not None:
        parts.append(f"distance {sync['distance']:.2f} (LSE-D)")
    verdict = f", {sync['status']}" if sync.get("status") else ""
    return f"**Sync score**: {', '.join(parts)}{verdict}."
