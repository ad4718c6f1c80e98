"""Clocks and memory gauges for one measurement, as the bench worker takes it (one item per process).

* Time: one warm-up call (allocations, kernel and algorithm selection, a TensorRT runner's CUDA-graph
  capture), then ``repeats`` timed calls, each bracketed by a CUDA synchronisation so that the clock
  reads finished work; the figures are the median (p50) and p90, never the mean.
* Host memory: the process's peak resident set (``ru_maxrss``). Every item runs in its own fresh
  process, so the figure is that item's, imports included (``base_rss_mb`` says how much of it was
  there before the item's runner opened).
* Device memory (CUDA): the larger of ``torch.cuda.max_memory_allocated`` (torch's own allocations) and
  the device's used memory read with ``torch.cuda.mem_get_info`` (which also sees ONNX Runtime's and
  TensorRT's allocators), minus what was used when the process started measuring. ``mem_get_info`` is
  sampled by a thread during the warm-up call and read between timed calls, never inside a timed
  one. Memory other processes allocate on the same GPU meanwhile would count too: bench on an idle GPU.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import torch

MB = 2**20


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


class DeviceMemory:
    """Peak device memory of this process's work on a CUDA device (see the module doc); inert on the CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.interval_s = interval_s
        self.base_used = 0
        self.peak_used = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.cuda:
            torch.cuda.init()
            self.base_used = self._used()  # this process's CUDA context and whatever others hold
            torch.cuda.reset_peak_memory_stats(device)

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def read(self) -> None:
        if self.cuda:
            self.peak_used = max(self.peak_used, self._used())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.read()

    def __enter__(self) -> DeviceMemory:
        """Sample continuously while the block runs (used around the warm-up call only)."""
        if self.cuda:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.read()

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        self.read()
        allocated = torch.cuda.max_memory_allocated(self.device)
        return round(max(allocated, self.peak_used - self.base_used) / MB, 1)

    def torch_peak_mb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated(self.device) / MB, 1) if self.cuda else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_calls(call: Callable[[], object], repeats: int, device: torch.device,
                memory: DeviceMemory) -> tuple[float, list[float]]:
    """Seconds of the warm-up call and of each of ``repeats`` timed calls (see the module doc)."""
    synchronize(device)
    with memory:
        tic = time.perf_counter()
        call()
        synchronize(device)
        warmup = time.perf_counter() - tic
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        call()
        synchronize(device)
        seconds.append(time.perf_counter() - tic)
        memory.read()
    return warmup, seconds


def summary(seconds: Sequence[float], frames_per_call: int, flops_per_frame: float | None) -> dict:
    """The figures of one timed series: frames/s at the median, p50 and p90, and TFLOP/s where counted."""
    p50 = statistics.median(seconds)
    return {
        "frames_per_s": round(frames_per_call / p50, 4) if p50 > 0 else None,
        "p50_s": round(p50, 6),
        "p90_s": round(percentile(seconds, 0.9), 6),
        "calls": len(seconds),
        "tflops": round(flops_per_frame * frames_per_call / p50 / 1e12, 4) if flops_per_frame and p50 > 0 else None,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(gpu: dict | None = None) -> dict:
    """What the numbers were measured on (numbers from different machines are not comparable).

    ``gpu`` comes from the bench worker's probe on CUDA runs, so that the bench command itself never
    opens a CUDA context (it would hold device memory during every other measurement).
    """
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    ort = _version("onnxruntime-gpu") and "onnxruntime-gpu " + _version("onnxruntime-gpu") or \
        (_version("onnxruntime") and "onnxruntime " + _version("onnxruntime"))
    return {
        "platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "memory_gib": memory, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "onnxruntime": ort, "tensorrt": _version("tensorrt"),
        "gpu": gpu,
    }
