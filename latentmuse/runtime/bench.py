"""Benchmark the pipeline end to end: per-stage seconds and frames/s, peak RSS, written as JSON.

Speed is measured here, never asserted in tests. Timings are wall-clock on this machine; the JSON
records the machine so numbers from different cards are never compared by accident.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .pipeline import Progress, RunOptions, run


_ONCE_PER_RUN = {"validate", "load_models"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(video: Path | None, weights: str, *, backend: str = "torch", batch_size: int = 8,
              face_detector: str = "dlib", device: str = "auto", progress: Progress | None = None) -> dict:
    """Run the pipeline once on ``video`` (default: the embedded demo sample) and time every stage."""
    with tempfile.TemporaryDirectory(prefix="latentmuse-bench-") as tmp:
        tmp_path = Path(tmp)
        sample_info = None
        if video is None:
            from ..samples import build_sample

            sample = build_sample(tmp_path / "sample")
            video, sample_info = sample.video, "embedded demo sample (astronaut, 1 s cutaway, espeak-ng speech)"
        options = RunOptions(video=video, output=tmp_path / "bench.mp4", weights=weights, backend=backend,
                             batch_size=batch_size, face_detector=face_detector, device=device)
        tic = time.perf_counter()
        report = run(options, progress)
        total = time.perf_counter() - tic
    per_stage_frames = {"faces": report.frames_in if report.frames_out >= report.frames_in else report.frames_out}
    stages = {}
    for name, seconds in report.stages.items():
        if name in _ONCE_PER_RUN:  # not per-frame work: no rate
            stages[name] = {"seconds": seconds, "frames_per_s": None}
            continue
        frames = report.frames_processed if name.startswith("generate.") else per_stage_frames.get(name, report.frames_out)
        stages[name] = {"seconds": seconds, "frames_per_s": round(frames / seconds, 2) if seconds > 0 else None}
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "input": {"video": str(video) if sample_info is None else sample_info, "fps": report.fps,
                  "frames_in": report.frames_in, "frames_out": report.frames_out,
                  "frames_processed": report.frames_processed},
        "weights": str(weights), "backend": report.backend, "device": report.device,
        "face_detector": report.face_detector, "batch_size": batch_size,
        "stages": stages,
        "end_to_end": {"seconds": round(total, 3), "frames_per_s": round(report.frames_out / total, 2)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "report": asdict(report),
    }
