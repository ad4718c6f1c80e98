"""The web page at ``/`` (latentmuse/serve/web.py): a job submitted and followed in headless Chromium,
the page's login when the service has a token, and the API routes answering beside the page's mount.

The service is the in-process one (tests/serve_support.py): a real uvicorn server on a loopback port, its
jobs on a :class:`JobWorker` in this process (smoke weights, MuseTalk, dlib: a 10-frame job takes seconds).
The browser test needs selenium and Debian's chromium + chromedriver; it skips, saying which is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web page needs gradio (pip install 'latentmuse[serve]')")
httpx = pytest.importorskip("httpx", reason="the service tests need httpx (pip install 'latentmuse[test]')")

from latentmuse.runtime.defaults import DEFAULT_STEPS  # noqa: E402
from latentmuse.runtime.media import probe  # noqa: E402
from latentmuse.runtime.options import ClipOptions, LoadOptions, options_to_dict  # noqa: E402
from latentmuse.serve.api import JobService, ServeSettings, create_app  # noqa: E402
from latentmuse.serve.store import DONE  # noqa: E402
from latentmuse.serve.web import AUTH_MESSAGE  # noqa: E402

from .helpers import write_wav  # noqa: E402
from .serve_support import InProcessHandle, app_server  # noqa: E402
from .standins import twenty_frame_sample  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: the longest any one page wait may take (the job itself: ~6 s on 2 cores)
PAGE_WAIT_S = 30
JOB_WAIT_S = 120


def settings(state: Path, generator: str = "musetalk", steps: int = DEFAULT_STEPS, **extra) -> tuple[dict, ServeSettings]:
    """The load (smoke weights, dlib) as a dict, and the service's settings over it."""
    load = options_to_dict(LoadOptions(weights="smoke", generator=generator, face_detector="dlib"))
    clip = options_to_dict(ClipOptions(cache=None, steps=steps))
    return load, ServeSettings(str(state), load, clip, **extra)


@pytest.fixture(autouse=True)
def gradio_cache(tmp_path, monkeypatch) -> Path:
    """Gradio's uploads and cached results in the test's folder, not the machine's /tmp/gradio."""
    folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture
def browser(request, tmp_path):
    """Headless Chromium through chromedriver (skips, naming what is missing). At the end the page is
    saved as a screenshot: browser.png in the test's temporary folder (kept when the test fails), and in
    $LATENTMUSE_SCREENSHOTS/TEST.png when that is set."""
    pytest.importorskip("selenium", reason="the page test drives Chromium with selenium (pip install 'latentmuse[test]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            pytest.skip(f"{path} is missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(PAGE_WAIT_S)
    driver.set_script_timeout(PAGE_WAIT_S)
    try:
        yield driver
    finally:
        try:
            driver.save_screenshot(str(tmp_path / "browser.png"))
            if os.environ.get("LATENTMUSE_SCREENSHOTS"):
                folder = Path(os.environ["LATENTMUSE_SCREENSHOTS"])
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp_path / "browser.png", folder / f"{request.node.name}.png")
        finally:
            driver.quit()


def page_text(driver, selector: str) -> str:
    """An element's text, whitespace collapsed (textContent: what the page renders, wherever it wraps)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return " ".join((found[0].get_attribute("textContent") or "").split()) if found else ""


def video_src(driver, selector: str) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f"{selector} video")
    return (found[0].get_attribute("src") or None) if found else None


def test_page_submits_a_job_and_plays_its_result(tmp_path, browser, gradio_cache):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from latentmuse.serve.worker import JobWorker

    sample = twenty_frame_sample(tmp_path / "clip")
    audio = write_wav(tmp_path / "speech.wav", 0.4, freq=200.0)  # 0.4 s at 25 fps: 10 output frames
    load, config = settings(tmp_path / "state")
    service = JobService(config, InProcessHandle([JobWorker(load)]))

    with app_server(create_app(service)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, PAGE_WAIT_S, poll_frequency=0.2)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#submit"))
        assert page_text(browser, "#status") == "Upload a video, then press Lip-sync."
        # a MuseTalk-only service offers MuseTalk only; steps start at the service's default
        labels = browser.find_elements(By.CSS_SELECTOR, "#generator label")
        assert [label.text for label in labels] == ["MuseTalk"]
        steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        assert steps.get_attribute("value") == str(service.clip.steps) == str(DEFAULT_STEPS)

        browser.find_element(By.CSS_SELECTOR, "#video-in input[type=file]").send_keys(str(sample.video))
        browser.find_element(By.CSS_SELECTOR, "#audio-in input[type=file]").send_keys(str(audio))
        # both uploads landed: the video preview plays the uploaded clip, the audio offers its file back
        wait.until(lambda d: video_src(d, "#video-in") and d.find_elements(By.CSS_SELECTOR, "#audio-in a[download]"))
        assert video_src(browser, "#video-in").endswith("/sample.mp4")
        assert sorted(path.name for path in gradio_cache.rglob("*") if path.is_file()) == ["sample.mp4", "speech.wav"]
        assert browser.find_element(By.CSS_SELECTOR, "#audio-in a[download]").get_attribute("href").endswith("/speech.wav")

        labels[0].click()
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("7", Keys.TAB)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#steps input[type=range]").get_attribute("value") == "7")
        browser.find_element(By.CSS_SELECTOR, "#submit").click()

        seen: list[str] = []  # every status the page showed while the job ran
        button_states: set[bool] = set()

        def finished(driver) -> bool:
            shown = page_text(driver, "#status")
            if not seen or seen[-1] != shown:
                seen.append(shown)
            button_states.add(driver.find_element(By.CSS_SELECTOR, "#submit").is_enabled())
            return bool(video_src(driver, "#result")) and "frames_out" in page_text(driver, "#report") and ": done" in shown

        WebDriverWait(browser, JOB_WAIT_S, poll_frequency=0.2).until(finished)

        records, total = service.store.page(limit=None)
        assert total == 1
        record = records[0]
        assert record.status == DONE and record.error is None
        assert record.options == {"musetalk_only": True, "steps": 7}
        assert record.clip["musetalk_only"] is True and record.clip["steps"] == 7
        assert record.client == "127.0.0.1"
        assert probe(record.output).frame_count == record.frames_done == 10

        # the page followed that job: its progress while it ran, then its outcome, report and (smoke
        # weights: no SyncNet) no score
        progress = [s for s in seen if re.search(rf"Job {record.id}: running, (starting|\d+ / 10 frames \(\d+ %\))\.", s)]
        assert progress, seen
        assert page_text(browser, "#status") == f"Job {record.id}: done in {record.seconds:.1f} s: 10 frames."
        assert page_text(browser, "#sync") == "Sync score: not scored."
        report = page_text(browser, "#report")
        for shown in ('"frames_in": 20 ,', '"frames_out": 10 ,', '"frames_written": 10 ,', '"status": "ok" ,',
                      '"output": "upload:result.mp4"'):  # the job's own file by name, no path of the service's
            assert shown in report
        # the button was off while the job ran, and is on again
        assert False in button_states
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#submit").is_enabled())
        # the video the page plays (and offers for download, named by the job) is the job's result, byte for byte
        src = video_src(browser, "#result")
        assert src.endswith(f"/{record.id}.mp4")
        played = httpx.get(src, timeout=10)
        assert played.status_code == 200 and played.content == record.output.read_bytes()

        # a refused submission (here: a full queue) shows the service's error and fix, and records nothing
        service.settings.max_queue = 0
        browser.find_element(By.CSS_SELECTOR, "#submit").click()
        wait.until(lambda d: page_text(d, "#status").startswith("Not submitted"))
        assert page_text(browser, "#status") == ("Not submitted (503): the queue is full (0 jobs waiting). "
                                                 f"Fix: send it again in {service.retry_after(0)} s (Retry-After), "
                                                 "or start the service with a higher --max-queue.")
        assert video_src(browser, "#result") is None
        wait.until(lambda d: page_text(d, ".toast-message-text") == "the queue is full (0 jobs waiting). Fix: send it again "
                   f"in {service.retry_after(0)} s (Retry-After), or start the service with a higher --max-queue.")
        assert service.store.page(limit=None)[1] == 1

        # the API routes answer beside the page's mount, and see the same one job
        jobs = httpx.get(url + "/v1/jobs", timeout=10).json()
        assert jobs["total"] == 1 and jobs["jobs"][0]["id"] == record.id and jobs["jobs"][0]["status"] == "done"
        assert httpx.get(url + f"/v1/jobs/{record.id}/video", timeout=10).content == record.output.read_bytes()
        assert httpx.get(url + "/healthz", timeout=10).json() == {"status": "ok", "workers": 1, "queued": 0, "running": 0}
        assert "/v1/jobs" in httpx.get(url + "/openapi.json", timeout=10).json()["paths"]
        assert "swagger-ui" in httpx.get(url + "/docs", timeout=10).text


TOKEN = "s3cret-token"


def page_component(config: dict, elem_id: str) -> dict:
    """One component of the page's Gradio config, by its elem_id."""
    found = [c for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
    assert len(found) == 1, elem_id
    return found[0]["props"]


def test_page_asks_for_the_token_and_the_api_keeps_its_own(tmp_path):
    """With a token the page is behind Gradio's login (the token as the password) and its upload route
    too; the API routes beside it keep their bearer check, which the page's login does not open.
    (No job runs: the service's handle has no worker.)"""
    _, config = settings(tmp_path / "state", generator="latentsync", steps=33, token=TOKEN)
    service = JobService(config, InProcessHandle([]))
    with app_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=10) as page:
        refused = page.get("/config")
        assert refused.status_code == 401
        assert refused.json()["detail"] == {"error": "Not authenticated", "auth_message": AUTH_MESSAGE}
        assert page.post("/gradio_api/upload", files={"files": ("a.wav", b"RIFF")}).status_code == 401
        assert page.post("/login", data={"username": "anyone", "password": "wrong"}).status_code == 400
        assert page.post("/login", data={"username": "anyone", "password": TOKEN[:-1]}).status_code == 400
        assert page.post("/login", data={"username": "anyone", "password": TOKEN}).json() == {"success": True}

        shown = page.get("/config")
        assert shown.status_code == 200
        # a service with LatentSync offers both generators, LatentSync first; steps from the service's clip options
        generator = page_component(shown.json(), "generator")
        assert generator["choices"] == [["LatentSync (MuseTalk fallback)", "latentsync"], ["MuseTalk", "musetalk"]]
        assert generator["value"] == "latentsync"
        assert page_component(shown.json(), "steps")["value"] == 33

        # the API: /healthz is open, the rest needs the bearer token, and the page's login cookie is not one
        assert page.get("/healthz").status_code == 200
        for path in ("/v1/jobs", "/metrics", "/openapi.json"):
            assert page.get(path).status_code == 401
            assert page.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert page.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()["total"] == 0
        # with a token the OpenAPI document needs it too, and there is no /docs page (nor does the page's mount answer)
        assert page.get("/openapi.json").status_code == 401
        assert "/v1/jobs" in page.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()["paths"]
        assert page.get("/docs").status_code == 404


def test_page_login_in_the_browser(tmp_path, browser):
    """The login form the browser gets: the auth message, a wrong password refused, the token let in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, config = settings(tmp_path / "state", token=TOKEN)
    service = JobService(config, InProcessHandle([]))
    with app_server(create_app(service)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, PAGE_WAIT_S, poll_frequency=0.2)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        assert AUTH_MESSAGE in page_text(browser, "body")
        assert not browser.find_elements(By.CSS_SELECTOR, "#submit")

        def log_in(password: str) -> None:
            user, secret = browser.find_elements(By.CSS_SELECTOR, "input[type=text], input[type=password]")
            for field, value in ((user, "anyone"), (secret, password)):
                field.clear()
                field.send_keys(value)
            browser.find_element(By.XPATH, "//button[normalize-space()='Login']").click()

        log_in("wrong")
        wait.until(lambda d: "Incorrect Credentials" in page_text(d, "body"))
        assert not browser.find_elements(By.CSS_SELECTOR, "#submit")
        log_in(TOKEN)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#submit"))
        assert page_text(browser, "#status") == "Upload a video, then press Lip-sync."
