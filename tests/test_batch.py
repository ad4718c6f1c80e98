"""``latentmuse batch``: one load for all jobs, resumable, a failing job among good ones, job lists.

The CLI runs in-process on stand-in runners (tests/standins.py) behind a load counter, so each clip
takes about a second.
"""

from __future__ import annotations

import json
import shutil

import pytest

from latentmuse.errors import LatentmuseError
from latentmuse.outcomes import ExitCode

from .conftest import run_cli
from .helpers import write_wav

COMMON = ("--weights", "smoke", "--face-detector", "dlib", "--generator", "musetalk")


def jsonl(path, *jobs: dict):
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def summary_of(path) -> dict:
    return json.loads(path.with_name(path.name + ".summary.json").read_text())


def statuses(summary: dict) -> list[str]:
    return [job["status"] for job in summary["jobs"]]


def batch(capsys, jobs, *extra: str):
    return run_cli(capsys, "batch", str(jobs), *COMMON, "--no-cache", *extra)


def three_jobs(tmp_path, clip):
    work = tmp_path / "work"
    work.mkdir()
    video = shutil.copy(clip.video, work / "talk.mp4")
    write_wav(work / "a.wav", 0.6, freq=220.0)
    write_wav(work / "b.wav", 0.4, freq=330.0)
    return jsonl(work / "jobs.jsonl",
                 {"video": "talk.mp4", "audio": "a.wav", "output": "out/a.mp4"},
                 {"video": "talk.mp4", "audio": "b.wav", "output": "out/b.mp4", "steps": 2},
                 {"video": "talk.mp4", "output": "out/own.mp4"}), video


def test_one_load_then_a_second_run_skips_everything(capsys, clip, loads, tmp_path):
    jobs, _ = three_jobs(tmp_path, clip)
    code, out, err = batch(capsys, jobs)
    assert code == 0, err
    assert loads["n"] == 1  # three jobs, one load
    summary = summary_of(jobs)
    assert statuses(summary) == ["done"] * 3 and summary["counts"]["done"] == 3
    assert [j["frames"] for j in summary["jobs"]] == [15, 10, 20]
    for name in ("a", "b", "own"):
        report = json.loads((jobs.parent / "out" / f"{name}.mp4.json").read_text())  # beside its output
        assert report["status"] == "ok" and len(report["job"]["key"]) == 64
    assert json.loads((jobs.parent / "out" / "b.mp4.json").read_text())["steps"] is None  # musetalk: no steps
    assert "3 done, 0 skipped, 0 failed" in out

    code, out, err = batch(capsys, jobs)
    assert code == 0 and loads["n"] == 1  # nothing to run: nothing loaded
    assert statuses(summary_of(jobs)) == ["skipped"] * 3 and "done earlier" in out


def test_a_changed_audio_reruns_that_job_only(capsys, clip, loads, tmp_path):
    jobs, _ = three_jobs(tmp_path, clip)
    assert batch(capsys, jobs)[0] == 0
    before = (jobs.parent / "out" / "a.mp4").stat().st_mtime_ns
    write_wav(jobs.parent / "b.wav", 0.4, freq=440.0)  # same name, other content
    code, _, err = batch(capsys, jobs)
    assert code == 0, err
    assert statuses(summary_of(jobs)) == ["skipped", "done", "skipped"]
    assert (jobs.parent / "out" / "a.mp4").stat().st_mtime_ns == before
    # a changed per-job option reruns too; --force reruns everything
    assert batch(capsys, jobs, "--seed", "3")[0] == 0 and statuses(summary_of(jobs)) == ["done"] * 3
    assert batch(capsys, jobs, "--seed", "3", "--force")[0] == 0 and statuses(summary_of(jobs)) == ["done"] * 3
    # a deleted output reruns its job
    (jobs.parent / "out" / "own.mp4").unlink()
    assert batch(capsys, jobs, "--seed", "3")[0] == 0
    assert statuses(summary_of(jobs)) == ["skipped", "skipped", "done"]


def test_a_failing_job_among_good_ones(capsys, clip, loads, tmp_path):
    jobs, _ = three_jobs(tmp_path, clip)
    (jobs.parent / "broken.mp4").write_bytes(b"\0" * 1000)
    lines = jobs.read_text().splitlines()
    lines.insert(1, json.dumps({"video": "broken.mp4", "output": "out/broken.mp4"}))
    jobs.write_text("\n".join(lines) + "\n")
    code, out, err = batch(capsys, jobs)
    assert code == ExitCode.ERROR
    summary = summary_of(jobs)
    assert statuses(summary) == ["done", "failed", "done", "done"] and summary["exit_code"] == 1
    failed = summary["jobs"][1]
    assert "broken.mp4" in failed["reason"] and failed["outcome"] == "error"
    assert not (jobs.parent / "out" / "broken.mp4").exists()
    assert json.loads((jobs.parent / "out" / "broken.mp4.json").read_text())["status"] == "error"
    (line,) = [l for l in err.splitlines() if l.strip()]
    assert line.startswith("error: 1 of 4 jobs failed") and "run the same command again" in line
    # the rerun skips the failure (same inputs), reports it, and still exits 1
    code, out, _ = batch(capsys, jobs)
    assert code == ExitCode.ERROR and statuses(summary_of(jobs)) == ["skipped", "failed", "skipped", "skipped"]
    assert "failed earlier" in summary_of(jobs)["jobs"][1]["reason"]


def test_retry_failed_reruns_only_the_failures(capsys, clip, loads, tmp_path, monkeypatch):
    jobs, _ = three_jobs(tmp_path, clip)
    from latentmuse.runtime.faces import DlibFrontEnd

    original = DlibFrontEnd.candidates
    calls = {"n": 0}

    def flaky(self, frames):  # the second job's face pass fails once, as a transient fault would
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("transient fault")
        return original(self, frames)

    monkeypatch.setattr(DlibFrontEnd, "candidates", flaky)
    assert batch(capsys, jobs)[0] == ExitCode.ERROR
    assert statuses(summary_of(jobs)) == ["done", "failed", "done"]
    assert "RuntimeError: transient fault" in summary_of(jobs)["jobs"][1]["reason"]
    assert batch(capsys, jobs)[0] == ExitCode.ERROR  # not retried by default
    assert statuses(summary_of(jobs)) == ["skipped", "failed", "skipped"]
    code, _, err = batch(capsys, jobs, "--retry-failed")
    assert code == 0, err
    assert statuses(summary_of(jobs)) == ["skipped", "done", "skipped"]


def test_csv_jobs_with_per_job_options(capsys, clip, loads, tmp_path):
    work = tmp_path / "csv"
    work.mkdir()
    shutil.copy(clip.video, work / "talk one.mp4")
    (work / "jobs.csv").write_text("video,audio,output,face,min_face_size\n"
                                   "talk one.mp4,,out/one.mp4,center,\n"
                                   "talk one.mp4,,out/two.mkv,,300\n")
    code, out, err = batch(capsys, work / "jobs.csv")
    assert code == 0, err
    one = json.loads((work / "out" / "one.mp4.json").read_text())
    two = json.loads((work / "out" / "two.mkv.json").read_text())
    assert one["face"] == "center" and two["min_face_size"] == 300 and two["frames_processed"] == 0


@pytest.mark.parametrize("content, message", [
    ('{"video": "a.mp4"}\n', "jobs.jsonl line 1 has no output"),
    ('{"video": "a.mp4", "output": "o.mp4", "guidance": 2}\n', "line 1: guidance is a batch-wide option"),
    ('{"video": "a.mp4", "output": "o.mp4", "stepz": 2}\n', "line 1: unknown key 'stepz'"),
    ('{"video": "a.mp4", "output": "o.mp4", "steps": "many"}\n', "line 1: steps 'many' is not a number"),
    ('{"video": "a.mp4", "output": "o.mp4"}\n{"video": "b.mp4", "output": "o.mp4"}\n', "line 2 writes"),
    ('not json\n', "line 1 is not JSON"),
    ('', "holds no jobs"),
])
def test_job_list_mistakes_are_one_line_before_any_load(capsys, loads, tmp_path, content, message):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(content)
    code, out, err = batch(capsys, jobs)
    assert code == ExitCode.ERROR and loads["n"] == 0
    (line,) = [l for l in err.splitlines() if l.strip()]
    assert message in line and "Traceback" not in err


def test_a_folder_pairs_languages_with_their_video_and_caches_faces(capsys, clip, loads, tmp_path, monkeypatch):
    folder = tmp_path / "talks"
    folder.mkdir()
    shutil.copy(clip.video, folder / "talk.mp4")
    write_wav(folder / "talk.de.wav", 0.6)
    write_wav(folder / "talk.fr.wav", 0.8, freq=330.0)
    from latentmuse.runtime.faces import DlibFrontEnd

    detected, original = [], DlibFrontEnd.candidates
    monkeypatch.setattr(DlibFrontEnd, "candidates", lambda self, frames: detected.append(len(frames)) or original(self, frames))
    code, out, err = run_cli(capsys, "batch", str(folder), *COMMON, "--cache", str(tmp_path / "cache"))
    assert code == 0, err
    assert sum(detected) == 20  # 15 frames for the German track, the French one's 5 more
    summary = json.loads((folder / "lipsynced" / "batch.summary.json").read_text())
    assert [(j["output"].rsplit("/", 1)[1], j["face_cache"]) for j in summary["jobs"]] == \
        [("talk.de.mp4", "miss"), ("talk.fr.mp4", "partial")]  # the French track is longer: 20 frames, not 15,
    # so its run extends the German run's entry (only the 5 new frames are detected) and replaces it
    from latentmuse.runtime.facecache import FaceCache

    assert [entry.frames for entry in FaceCache(tmp_path / "cache").entries()] == [20]
    (folder / "lipsynced" / "talk.de.mp4").unlink()
    code, out, err = run_cli(capsys, "batch", str(folder), *COMMON, "--cache", str(tmp_path / "cache"))
    assert code == 0 and [j["face_cache"] for j in json.loads((folder / "lipsynced" / "batch.summary.json").read_text())["jobs"]] \
        == ["hit", ""]
    assert sum(detected) == 20  # the hit detected nothing
    (folder / "orphan.wav").write_bytes(b"")
    with pytest.raises(LatentmuseError, match="names no video: orphan.wav"):
        from latentmuse.batch.jobs import read_jobs

        read_jobs(folder)
