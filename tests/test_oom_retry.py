"""Out of memory inside a generator: the window is run again at half the batch (down to one frame),
then falls back to MuseTalk, then fails with its frames counted and passed through, never dropped.

Stand-in runners (tests/standins.py) run out of memory exactly when a call's batch exceeds a limit, so
the retried output can be compared with a run that used the small batch from the start.
"""

from __future__ import annotations


import numpy as np
import pytest

from latentmuse.runtime import media
from latentmuse.runtime.generators.base import BatchOutOfMemory, batch_memory, is_out_of_memory
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions

from .standins import Notes, OutOfMemoryAbove, standin_models, twenty_frame_sample, whisper_standin

OOM = "out of memory in {what} at batch {batch} (CUDA out of memory. Tried to allocate {batch2} x 2.00 GiB)"
MUSETALK = "MuseTalk's VAE, UNet and face parser"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """0.8 s at 25 fps: 20 frames, faces in 0-4 and 10-19 (15 process frames), 5-9 a faceless cutaway."""
    return twenty_frame_sample(tmp_path_factory.mktemp("clip"))


def run_with(clip, tmp_path, generator: str, setup=None, **options):
    models, _ = standin_models(steps=1, whisper_runner=whisper_standin())
    if setup is not None:
        setup(models.runners)
    sink, notes = media.MemorySink(), Notes()
    report = run(RunOptions.flat(video=clip.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                            generator=generator, steps=1, guidance=1.0, **options), notes, sink=sink, models=models)
    return report, sink.frames, notes, models.runners


def wrap(role: str, limit: int, source: str | None = None):
    """Put an OutOfMemoryAbove(limit) runner in ``role`` (around ``source``'s runner, default the role's own)."""
    def setup(runners):
        runners[role] = OutOfMemoryAbove(runners[source or role], limit)
    return setup


def both(*setups):
    def setup(runners):
        for s in setups:
            s(runners)
    return setup


@pytest.fixture(scope="module")
def references(clip, tmp_path_factory):
    """Frames of runs that never run out of memory: MuseTalk at batch 2, and LatentSync."""
    folder = tmp_path_factory.mktemp("ref")
    musetalk = run_with(clip, folder, "musetalk", batch_size=2)[1]
    latentsync = run_with(clip, folder, "latentsync")[1]
    inputs = list(media.iter_frames(clip.video))
    assert not np.array_equal(musetalk[0], inputs[0]) and not np.array_equal(latentsync[0], musetalk[0])
    return {"musetalk": musetalk, "latentsync": latentsync, "inputs": inputs}


def assert_same_frames(actual, expected):
    assert len(actual) == len(expected) == 20
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert np.array_equal(a, b), f"frame {i}"


def test_musetalk_retries_at_half_the_batch_until_it_fits(clip, tmp_path, references):
    report, frames, notes, runners = run_with(clip, tmp_path, "musetalk", setup=wrap("musetalk_unet", 2), batch_size=8)
    assert_same_frames(frames, references["musetalk"])  # what batch 2 computes from the start
    assert report.frames_by_generator == {"musetalk": 15} and report.fallbacks == [] and report.frames_failed == 0
    assert report.status == "ok" and report.exit_code == 0
    # the first window (8 process frames: 0-4 and 10-12) at 8 does not fit, nor at 4; at 2 it does
    assert [(r["generator"], r["batch"], r["frames"]) for r in report.retries] == [
        ("musetalk", [8, 4], [[0, 4], [10, 12]]), ("musetalk", [4, 2], [[0, 4], [10, 12]])]
    assert report.retries[0]["reason"] == OOM.format(what=MUSETALK, batch=8, batch2=8)
    assert report.retries[1]["reason"] == OOM.format(what=MUSETALK, batch=4, batch2=4)
    assert runners["musetalk_unet"].batches[:2] == [8, 4] and max(runners["musetalk_unet"].batches[2:]) == 2
    assert sum("run again at batch" in m for m in notes.messages) == 2  # each retry noted once


def test_latentsync_retries_its_vae_at_half_the_batch(clip, tmp_path, references):
    report, frames, notes, runners = run_with(clip, tmp_path, "latentsync", setup=wrap("vae_decoder", 4))
    assert_same_frames(frames, references["latentsync"])
    assert report.frames_by_generator == {"latentsync": 15} and report.fallbacks == []
    assert [(r["generator"], r["batch"]) for r in report.retries] == [("latentsync", [16, 8]), ("latentsync", [8, 4])]
    assert report.retries[0]["reason"] == OOM.format(what="LatentSync's VAE decoder", batch=16, batch2=16)
    assert set(runners["vae_decoder"].batches[2:]) == {4}  # every later call at the batch that fitted


def test_a_generator_that_always_runs_out_of_memory_falls_back(clip, tmp_path, references):
    """LatentSync's own VAE encoder role never fits: down to batch 1, then MuseTalk serves the window."""
    report, frames, notes, _ = run_with(clip, tmp_path, "latentsync",
                                        setup=wrap("vae_encoder_latentsync", 0, source="vae_encoder"))
    assert_same_frames(frames, references["musetalk"])  # MuseTalk's frames, per frame as at any batch
    assert [r["batch"] for r in report.retries] == [[16, 8], [8, 4], [4, 2], [2, 1]]  # once: later windows start at 1
    assert report.fallbacks == [{"generator": "latentsync", "to": "musetalk", "frames": [[0, 4], [10, 19]], "count": 15,
                                 "reason": OOM.format(what="LatentSync's VAE encoder", batch=1, batch2=1)}]
    assert report.frames_by_generator == {"musetalk": 15} and report.frames_failed == 0 and report.status == "ok"


def test_when_every_generator_runs_out_of_memory_the_frames_fail_counted(clip, tmp_path, references):
    setup = both(wrap("vae_encoder_latentsync", 0, source="vae_encoder"), wrap("musetalk_unet", 0))
    report, frames, notes, _ = run_with(clip, tmp_path, "latentsync", setup=setup)
    assert_same_frames(frames, references["inputs"])  # passed through as read, none dropped
    assert report.frames_failed == 15 and report.frames_by_generator == {} and report.frames_passthrough == 20
    assert [(r["generator"], r["batch"]) for r in report.retries] == [
        ("latentsync", [16, 8]), ("latentsync", [8, 4]), ("latentsync", [4, 2]), ("latentsync", [2, 1]),
        ("musetalk", [8, 4]), ("musetalk", [4, 2]), ("musetalk", [2, 1])]
    assert [(f["generator"], f["to"], f["count"]) for f in report.fallbacks] == [
        ("latentsync", "musetalk", 15), ("musetalk", "passthrough", 15)]
    assert report.status == "failed_frames" and report.exit_code == 3
    assert "15 of 20 frames failed every generator" in report.error and "out of memory in MuseTalk's" in report.error


def test_only_out_of_memory_becomes_a_batch_retry():
    import torch

    with pytest.raises(BatchOutOfMemory) as info:
        with batch_memory("the VAE", 8):
            raise RuntimeError("Failed to allocate memory for requested buffer of size 1048576")  # ONNX Runtime
    assert info.value.batch == 8 and info.value.reason.startswith("out of memory in the VAE at batch 8 (Failed")
    with pytest.raises(ValueError):
        with batch_memory("the VAE", 8):
            raise ValueError("shape mismatch")
    assert is_out_of_memory(torch.OutOfMemoryError("x")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("engine exploded"))
