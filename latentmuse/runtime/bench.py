"""Benchmarks: the pipeline end to end (per-stage seconds, frames/s, peak RSS) and the UNet3D per step.

Speed is measured here, never asserted in tests. Timings are wall-clock on this machine; the JSON
records the machine so numbers from different cards are never compared by accident.

``unet3d_step`` times one DDIM step of one 16-frame window as the LatentSync generator calls it:
CFG on (batch 2), CFG off (batch 1) and, for DeepCache, the shallow step. One warm-up call first,
then ``repeats`` timed calls (synchronised on CUDA); the median is the figure.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from .generators.latentsync import VAE_FACTOR, WINDOW
from .models import ModelSet, load_torch_models, resolve_device
from .pipeline import SMOKE_SEED, Progress, RunOptions, choose_generator, run

_ONCE_PER_RUN = {"validate", "load_models"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _timed(call: Callable[[], object], repeats: int, device: torch.device,
           tick: Callable[[], None] = lambda: None) -> list[float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()  # warm-up (allocations, kernel selection)
    sync()
    tick()
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        call()
        sync()
        seconds.append(time.perf_counter() - tic)
        tick()
    return seconds


def _summary(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 4), "min": round(min(seconds), 4),
            "max": round(max(seconds), 4), "calls": len(seconds)}


def unet3d_step(models: ModelSet, resolution: int, repeats: int = 3, deepcache: bool = True,
                progress: Progress | None = None) -> dict:
    """Seconds per DDIM step of one 16-frame window: CFG on and off (and DeepCache's shallow step)."""
    runner = models["unet3d"]
    shallow_too = deepcache and "unet3d_shallow" in models.runners
    if progress is not None:
        progress.start("unet3d", 2 * (repeats + 1) * (2 if shallow_too else 1) + (2 if shallow_too else 0))

    def tick() -> None:
        if progress is not None:
            progress.advance("unet3d")

    device = runner.device
    size = resolution // VAE_FACTOR
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict] = {}
    for label, batch in (("cfg_on", 2), ("cfg_off", 1)):
        inputs = {
            "sample": torch.randn((batch, 13, WINDOW, size, size), generator=generator),
            "timestep": torch.full((batch,), 501, dtype=torch.int64),
            "audio": torch.randn((batch, WINDOW, 50, 384), generator=generator),
        }
        seconds = _timed(lambda: runner(inputs), repeats, device, tick)
        results[label] = {"batch": batch, "seconds_per_step": _summary(seconds)}
        if shallow_too:
            cache = models["unet3d_caching"](inputs)["cache"]
            tick()
            shallow = models["unet3d_shallow"]
            seconds = _timed(lambda: shallow({**inputs, "cache": cache}), repeats, device, tick)
            results[f"{label}_deepcache_shallow"] = {"batch": batch, "seconds_per_step": _summary(seconds)}
    return {"resolution": resolution, "frames": WINDOW, "latent": [size, size], "runner": repr(runner),
            "steps": results}


def benchmark(video: Path | None, weights: str, *, backend: str = "torch", generator: str = "auto",
              batch_size: int = 8, face_detector: str = "dlib", device: str = "auto", steps: int = 20,
              guidance: float = 1.5, deepcache: bool = False, seconds: float = 5.0, unet3d_repeats: int = 3,
              end_to_end: bool = True, unet3d_timing: bool = True, progress: Progress | None = None) -> dict:
    """Run the pipeline once on ``video`` (default: the embedded demo sample, ``seconds`` long) and time
    every stage; for the LatentSync generator also time its UNet3D per step (:func:`unet3d_step`)."""
    with tempfile.TemporaryDirectory(prefix="latentmuse-bench-") as tmp:
        tmp_path = Path(tmp)
        sample_info = None
        if video is None:
            from ..samples import build_sample

            sample = build_sample(tmp_path / "sample", seconds=seconds)
            video = sample.video
            sample_info = f"embedded demo sample ({seconds:g} s: astronaut, 1 s cutaway, espeak-ng speech)"
        options = RunOptions(video=video, output=tmp_path / "bench.mp4", weights=weights, backend=backend,
                             generator=generator, batch_size=batch_size, face_detector=face_detector,
                             device=device, steps=steps, guidance=guidance, deepcache=deepcache)
        kind = choose_generator(options)
        tic = time.perf_counter()
        models = load_torch_models(weights, resolve_device(device), SMOKE_SEED, unet3d=kind == "latentsync")
        load_seconds = time.perf_counter() - tic
        result: dict = {"machine": machine(), "weights": str(weights), "generator": kind, "backend": "torch",
                        "load_seconds": round(load_seconds, 3)}
        if unet3d_timing and kind == "latentsync" and models.has_unet3d:
            result["unet3d"] = unet3d_step(models, models.native_resolution, unet3d_repeats, progress=progress)
        if end_to_end:
            tic = time.perf_counter()
            report = run(options, progress, models=models)
            total = time.perf_counter() - tic
            result.update(_end_to_end(report, total, video, sample_info, batch_size))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def _end_to_end(report, total: float, video: Path, sample_info: str | None, batch_size: int) -> dict:
    per_stage_frames = {"faces": report.frames_in if report.frames_out >= report.frames_in else report.frames_out}
    stages = {}
    for name, seconds in report.stages.items():
        if name in _ONCE_PER_RUN:  # not per-frame work: no rate
            stages[name] = {"seconds": seconds, "frames_per_s": None}
            continue
        frames = per_stage_frames.get(name, report.frames_out)
        if name.startswith("generate."):
            frames = report.frames_by_generator.get(name.split(".")[1], 0)
        stages[name] = {"seconds": seconds, "frames_per_s": round(frames / seconds, 2) if seconds > 0 and frames else None}
    return {
        "input": {"video": str(video) if sample_info is None else sample_info, "fps": report.fps,
                  "frames_in": report.frames_in, "frames_out": report.frames_out,
                  "frames_processed": report.frames_processed, "windows": report.windows},
        "device": report.device, "face_detector": report.face_detector, "batch_size": batch_size,
        "steps": report.steps, "guidance": report.guidance, "resolution": report.resolution,
        "stages": stages,
        "end_to_end": {"seconds": round(total, 3), "frames_per_s": round(report.frames_out / total, 3)},
        "report": asdict(report),
    }
