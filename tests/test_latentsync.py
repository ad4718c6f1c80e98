"""The LatentSync generator inside the pipeline: data paths through stand-in runners of known function,
the fallback to MuseTalk for every reason, DeepCache, guidance, the mask and the noise."""

from __future__ import annotations

import json
import math
from importlib import resources

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentmuse.errors import LatentmuseError
from latentmuse.models.smoke import smoke_model
from latentmuse.runtime import alignment as al
from latentmuse.runtime import media
from latentmuse.runtime.audio import encode_latentsync_states
from latentmuse.runtime.blending import paste_back
from latentmuse.runtime.datagen import clip_windows, output_frame_count
from latentmuse.runtime.defaults import DEFAULT_MIN_FACE_SIZE
from latentmuse.runtime.faces import DlibFrontEnd
from latentmuse.runtime.generators import latentsync as ls
from latentmuse.runtime.generators.musetalk import crop_box
from latentmuse.runtime.lipsync import run
from latentmuse.runtime.options import RunOptions
from latentmuse.samples import build_sample

from .standins import Notes, block_decode, block_encode, standin_models

STEPS = 3  # DDIM(3): timesteps 667, 334, 1


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2.4 s at 25 fps, frames 15-24 a faceless cutaway: runs of 15 (mirrored) and 34 or 35 process
    frames (two windows and an overlapping tail; the AAC track decides whether the output has 59 or 60)."""
    sample = build_sample(tmp_path_factory.mktemp("clip"), seconds=2.4, cutaway=(0.6, 1.0))
    n_out = output_frame_count(len(media.load_audio(sample.video)), sample.fps)
    frames = list(media.iter_frames(sample.video))[:n_out]
    height, width = frames[0].shape[:2]  # the run's front end: dlib at the default --min-face-size's scale
    faces = DlibFrontEnd().for_clip(DEFAULT_MIN_FACE_SIZE, width, height).detect(frames)
    faces = [f if f is not None and crop_box(f, frames[0].shape) is not None else None for f in faces]
    transforms = al.smoothed_transforms([None if f is None else al.alignment_points(f.landmarks) for f in faces],
                                        al.face_template(256))
    assert n_out in (59, 60) and [i for i, f in enumerate(faces) if f is None] == list(range(15, 25))
    return sample, frames, faces, transforms


def process_count(clip) -> int:
    return sum(f is not None for f in clip[2])


def last(clip) -> int:
    return len(clip[1]) - 1


def run_standins(clip, tmp_path, *, generator="latentsync", guidance=1.5, setup=None, **options):
    sample = clip[0]
    models, denoiser = standin_models(STEPS)
    if setup is not None:
        setup(models, denoiser)
    sink, notes = media.MemorySink(), Notes()
    report = run(RunOptions.flat(video=sample.video, output=tmp_path / "o.mp4", weights="smoke", face_detector="dlib",
                            generator=generator, steps=STEPS, guidance=guidance, **options),
                 notes, sink=sink, models=models)
    return report, sink.frames, denoiser, notes


def mask_from_package_data() -> np.ndarray:
    data = json.loads(resources.files("latentmuse.runtime").joinpath("data/latentsync_mask.json").read_text())
    mask = np.ones((256, 256), np.float32)
    for row, runs in data["rows"].items():
        for a, b in runs:
            mask[int(row), a : b + 1] = 0.0
    return mask


def latentsync_expected(frame: np.ndarray, matrix: np.ndarray, *, use_masked_as_reference: bool = False) -> np.ndarray:
    """The LatentSync output frame when the final latent is the reference latent (PIPELINE 6b)."""
    crop = al.warp_face(frame, matrix, (210, 280))
    rgb = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_LANCZOS4)[..., ::-1]
    pixels = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None] / 255.0 * 2 - 1
    mask = torch.from_numpy(mask_from_package_data())
    source = pixels * mask if use_masked_as_reference else pixels
    decoded = block_decode(block_encode(source)) * 2 - 1
    combined = decoded * (1 - mask) + pixels * mask  # reference kept outside the mouth mask
    face = F.interpolate(combined, size=(280, 210), mode="bicubic", antialias=True, align_corners=False)
    return al.paste_face(frame, face[0].permute(1, 2, 0).flip(-1).numpy(), matrix)


def musetalk_expected(frame: np.ndarray, face) -> np.ndarray:
    """The MuseTalk output frame when its UNet returns the reference latent (PIPELINE 6a)."""
    x1, y1, x2, y2 = crop_box(face, frame.shape)
    crop = cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    image = torch.from_numpy(crop[..., ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    patch = (block_decode(block_encode(image))[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)[..., ::-1]
    return paste_back(frame, np.ascontiguousarray(patch), (x1, y1, x2, y2), np.ones((512, 512), np.uint8))


def assert_frames_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"{what}: max {diff.max()}, {(diff > 0).mean():.4f} differ"


# ------------------------------------------------------------------------------ mask and noise


def test_mask_is_the_released_mask():
    mask = ls.load_mask(256)[0].numpy()
    assert mask.shape == (256, 256) and set(np.unique(mask)) == {0.0, 1.0}
    assert int((mask == 0).sum()) == 26673  # pixels LatentSync generates (released mask.png)
    assert mask[200, 128] == 0 and mask[40, 128] == 1 and mask[200, 2] == 1  # mouth generated, eyes and edge kept
    latent = ls.latent_mask(ls.load_mask(256), 32)[0]
    assert int((latent == 0).sum()) == 422  # nearest: pixel (8i, 8j) of each cell
    assert torch.equal(latent, ls.load_mask(256)[0, ::8, ::8])
    big = ls.load_mask(512)[0].numpy()
    assert big.shape == (512, 512) and abs((big < 0.5).sum() / (4 * 26673) - 1) < 0.02


def test_noise_is_one_seeded_draw_shared_by_every_frame():
    noise = ls.initial_noise(7, 256)
    assert noise.shape == (1, 4, 1, 32, 32)
    assert torch.equal(noise, torch.randn((1, 4, 1, 32, 32), generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(noise, ls.initial_noise(8, 256)) and ls.initial_noise(0, 512).shape == (1, 4, 1, 64, 64)


# ------------------------------------------------------------------------ data paths, stand-ins


def test_latentsync_output_frames_equal_an_independent_computation(clip, tmp_path):
    sample, frames, faces, transforms = clip
    report, out, denoiser, _ = run_standins(clip, tmp_path)
    assert report.frames_by_generator == {"latentsync": process_count(clip)} and report.frames_no_face == 10
    assert report.windows == 4 and len(out) == len(frames)
    for i in range(len(frames)):
        if faces[i] is None:
            assert np.array_equal(out[i], frames[i]), i
        else:
            assert_frames_close(out[i], latentsync_expected(frames[i], transforms[i]), f"frame {i}")
    # The check can fail: had the generator fed the masked latent as the reference, frames would differ.
    wrong = latentsync_expected(frames[30], transforms[30], use_masked_as_reference=True)
    assert np.abs(wrong.astype(int) - out[30]).max() > 40


def test_latentsync_feeds_each_window_its_own_audio_and_zero_audio_unconditionally(clip, tmp_path):
    sample, frames, faces, _ = clip
    _, _, denoiser, _ = run_standins(clip, tmp_path)
    states = encode_latentsync_states(standin_models(STEPS)[0]["whisper_encoder"], media.load_audio(sample.video))
    windows = sorted(clip_windows([f is not None for f in faces], 16), key=lambda w: w.last)
    assert len(denoiser.calls) == len(windows) * STEPS
    for w, window in enumerate(windows):
        for step, t in enumerate((667, 334, 1)):
            call = denoiser.calls[w * STEPS + step]
            assert call["t"] == [t, t]
            audio = call["audio"]
            assert audio.shape == (2, 16, 50, 384) and torch.all(audio[0] == 0)  # unconditional first
            for k, frame in enumerate(window.frames):  # hand formula: steps 2i - 4 .. 2i + 5, clamped
                rows = [states[min(max(2 * frame - 4 + s, 0), len(states) - 1)] for s in range(10)]
                assert torch.equal(audio[1, k], torch.cat(rows)), (w, k)


def test_guidance_off_runs_batch_one(clip, tmp_path):
    report, out, denoiser, _ = run_standins(clip, tmp_path, guidance=1.0)
    assert report.guidance == 1.0 and all(len(c["t"]) == 1 for c in denoiser.calls)
    assert denoiser.calls[0]["audio"].shape == (1, 16, 50, 384) and denoiser.calls[0]["audio"].abs().sum() > 0
    sample, frames, faces, transforms = clip
    assert_frames_close(out[40], latentsync_expected(frames[40], transforms[40]), "frame 40")


def test_musetalk_output_frames_equal_an_independent_computation(clip, tmp_path):
    sample, frames, faces, _ = clip
    report, out, _, _ = run_standins(clip, tmp_path, generator="musetalk")
    assert report.frames_by_generator == {"musetalk": process_count(clip)} and report.steps is None
    for i in (0, 14, 25, last(clip)):
        assert_frames_close(out[i], musetalk_expected(frames[i], faces[i]), f"frame {i}")


# --------------------------------------------------------------------------------- fallbacks


def fail_window(window: int, exc: BaseException):
    """Make the denoiser raise ``exc`` on the first step of window ``window`` (in call order)."""
    def setup(models, denoiser):
        def fail(number):
            starts = [k for k, call in enumerate(denoiser.calls) if call["t"][0] == 667]
            if len(starts) - 1 == window and starts[-1] == number:
                raise exc
        denoiser.fail = fail
    return setup


@pytest.mark.parametrize("exc, reason", [
    (RuntimeError("engine exploded"), "RuntimeError: engine exploded"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"),
])
def test_a_failing_window_goes_to_musetalk_with_its_frames(clip, tmp_path, exc, reason):
    sample, frames, faces, transforms = clip
    report, out, _, notes = run_standins(clip, tmp_path, setup=fail_window(2, exc))  # window 2 keeps 41-56
    assert report.fallbacks == [{"generator": "latentsync", "reason": reason, "to": "musetalk",
                                 "frames": [[41, 56]], "count": 16}]
    assert report.frames_by_generator == {"latentsync": process_count(clip) - 16, "musetalk": 16}
    assert report.frames_failed == 0 and len(out) == len(frames) and sum(reason in m for m in notes.messages) == 1
    assert_frames_close(out[45], musetalk_expected(frames[45], faces[45]), "fallback frame 45")
    assert_frames_close(out[40], latentsync_expected(frames[40], transforms[40]), "frame 40")


def test_non_finite_output_goes_to_musetalk(clip, tmp_path):
    def setup(models, denoiser):
        denoiser.corrupt = lambda number, eps: eps * float("nan") if number == 1 else eps  # window 0, step 2
    report, out, _, _ = run_standins(clip, tmp_path, setup=setup)
    (record,) = report.fallbacks
    assert record["reason"] == "the UNet3D (step 2, t = 334) returned non-finite values"
    assert record["frames"] == [[0, 14]]
    assert report.frames_by_generator == {"latentsync": process_count(clip) - 15, "musetalk": 15}
    assert all(np.isfinite(f).all() for f in out)


def test_a_reason_is_noted_once_and_every_window_is_recorded(clip, tmp_path):
    def setup(models, denoiser):
        def fail(number):
            raise RuntimeError("always")
        denoiser.fail = fail
    report, _, _, notes = run_standins(clip, tmp_path, setup=setup)
    (record,) = report.fallbacks
    assert record["frames"] == [[0, 14], [25, last(clip)]] and record["count"] == process_count(clip)
    assert sum("RuntimeError: always" in m for m in notes.messages) == 1


def test_when_the_fallback_fails_too_frames_pass_through_as_failed(clip, tmp_path):
    sample, frames, faces, _ = clip

    def setup(models, denoiser):
        fail_window(0, RuntimeError("unet3d down"))(models, denoiser)
        def broken(latents, audio):
            raise RuntimeError("musetalk down")
        models.runners["musetalk_unet"].fn = broken
    report, out, _, _ = run_standins(clip, tmp_path, setup=setup)
    assert report.frames_failed == 15 and report.frames_by_generator == {"latentsync": process_count(clip) - 15}
    assert report.frames_passthrough == 25 and report.frames_no_face == 10
    assert [(r["generator"], r["to"], r["frames"]) for r in report.fallbacks] == [
        ("latentsync", "musetalk", [[0, 14]]), ("musetalk", "passthrough", [[0, 14]])]
    assert all(np.array_equal(out[i], frames[i]) for i in range(15))


def test_no_fallback_turns_the_first_failure_into_an_error_and_writes_nothing(clip, tmp_path):
    sample = clip[0]
    models, denoiser = standin_models(STEPS)
    fail_window(1, RuntimeError("engine exploded"))(models, denoiser)
    output = tmp_path / "o.mp4"
    with pytest.raises(LatentmuseError, match="frames 25-40: RuntimeError: engine exploded"):
        run(RunOptions.flat(video=sample.video, output=output, weights="smoke", face_detector="dlib",
                       generator="latentsync", steps=STEPS, fallback=False), models=models)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a partial file


# ------------------------------------------------------------------ DeepCache and guidance, tiny UNet3D


@pytest.fixture(scope="module")
def tiny_unet3d():
    return smoke_model("unet3d")


def unet_inputs(batch=2, frames=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 13, frames, size, size, generator=g), torch.full((batch,), 501),
            torch.randn(batch, frames, 50, 384, generator=g))


def test_deepcache_shallow_step_on_its_own_cache_equals_the_full_step(tiny_unet3d):
    sample, t, audio = unet_inputs()
    with torch.inference_mode():
        eps = tiny_unet3d(sample, t, audio)
        eps_full, cache = tiny_unet3d(sample, t, audio, return_cache=True)
        assert torch.equal(eps, eps_full) and cache.shape == (2, 32, 16, 8, 8)
        torch.testing.assert_close(tiny_unet3d.forward_shallow(sample, t, audio, cache), eps, rtol=1e-5, atol=1e-6)
        # the shallow step does see the new latent and timestep (through conv_in and the time embedding)
        other = tiny_unet3d.forward_shallow(sample + 0.5, torch.full((2,), 101), audio, cache)
        assert (other - eps).abs().max() > 1e-3


def test_deepcache_schedule_in_the_generator(clip, tmp_path):
    calls = []

    def setup(models, denoiser):
        def record(kind):
            def fn(sample, timestep, audio, cache=None):
                calls.append(kind)
                out = denoiser({"sample": sample, "timestep": timestep, "audio": audio})
                return {**out, "cache": torch.zeros(1)} if kind == "full" else out
            return fn
        from .standins import FnRunner
        models.runners["unet3d_caching"] = FnRunner("unet3d_caching", record("full"))
        models.runners["unet3d_shallow"] = FnRunner("unet3d_shallow", record("shallow"))
    run_standins(clip, tmp_path, setup=setup, deepcache=True)
    assert calls[:STEPS] == ["full", "shallow", "shallow"] and len(calls) == 4 * STEPS


def test_guidance_at_one_equals_the_batch_one_path(tiny_unet3d, monkeypatch):
    from latentmuse.graphs.wrappers import UNet3DGraph
    from latentmuse.runners.torch_runner import TorchRunner

    runners = {"unet3d": TorchRunner("unet3d", UNet3DGraph(tiny_unet3d)),
               "vae_encoder": None, "vae_decoder": None}
    generator = ls.LatentSyncGenerator(runners, ls.LatentSyncSettings(steps=3, guidance=1.0))
    g = torch.Generator().manual_seed(3)
    condition, audio = torch.randn(1, 9, 16, 32, 32, generator=g), torch.randn(1, 16, 50, 384, generator=g)
    batch_one = generator.sample(condition, audio)
    monkeypatch.setattr(ls, "uses_guidance", lambda guidance: True)  # force the CFG batch of two at g = 1
    batch_two = generator.sample(condition, audio)
    torch.testing.assert_close(batch_two, batch_one, rtol=1e-4, atol=1e-5)
    assert math.isfinite(batch_one.abs().max().item())


def test_resolution_512_uses_the_1_6_geometry(clip, tmp_path):
    report, out, denoiser, _ = run_standins(clip, tmp_path, resolution="512")
    assert report.resolution == 512 and report.frames_by_generator == {"latentsync": process_count(clip)}
    assert any("trained at 256 px" in w for w in report.warnings)  # 1.5 weights run at 512: said
    assert {c["shape"] for c in denoiser.calls} == {(2, 13, 16, 64, 64)}
    sample, frames, faces, _ = clip
    transform = al.smoothed_transforms([al.alignment_points(f.landmarks) if f else None for f in faces],
                                       al.face_template(512))[30]
    changed = np.argwhere((out[30] != frames[30]).any(axis=2))
    crop_xy = changed[:, ::-1] @ transform[:, :2].T + transform[:, 2]  # in the 420 x 560 crop
    assert crop_xy[:, 0].min() > -8 and crop_xy[:, 0].max() < 428 and crop_xy[:, 1].max() < 568


def test_ping_pong_reuses_each_input_frames_alignment(clip, tmp_path):
    """Audio longer than the video: the reversed pass shows input frames again, with the transforms
    computed once per input frame in input order (as the original), not re-smoothed backwards."""
    from latentmuse.runtime.datagen import ping_pong_schedule

    from .helpers import write_wav

    sample, frames, faces, transforms = clip
    models, _ = standin_models(STEPS)
    sink = media.MemorySink()
    audio = write_wav(tmp_path / "long.wav", 3.2)  # 80 output frames from the clip's input frames
    report = run(RunOptions.flat(video=sample.video, audio=audio, output=tmp_path / "o.mp4", face_detector="dlib",
                            generator="latentsync", steps=STEPS), sink=sink, models=models)
    schedule = ping_pong_schedule(report.frames_in, report.frames_out)
    assert report.frames_out == 80 and schedule[report.frames_in] == report.frames_in - 1  # the turn
    all_frames = list(media.iter_frames(sample.video))
    for j in (report.frames_in - 1, report.frames_in, report.frames_in + 5, 79):
        i = schedule[j]
        assert_frames_close(sink.frames[j], latentsync_expected(all_frames[i], transforms[i]), f"output {j} (input {i})")
