"""The bench worker: one measurement per process, JSON in and JSON out.

``python -m latentmuse.bench.worker REQUEST.json RESULT.json`` reads one job, runs it, and writes its
result atomically. Each (backend, item) runs in a fresh process so that its peak memory is its own
(:mod:`latentmuse.bench.measure`). Jobs:

* ``graph``: time one graph on one backend (the runner the per-graph selection gives for it; with
  ``flops`` and the torch backend on CUDA, also count its FLOPs per call);
* ``flops``: count one graph's FLOPs per call on its PyTorch wrapper (CUDA runs without the torch backend);
* ``pipeline``: run the whole pipeline once on one backend and report its stages;
* ``probe``: the GPU, and whether TensorRT and each graph's plan are usable here (CUDA runs only);
* ``export``: export graphs to validated ONNX (:func:`latentmuse.export.onnx_export.export_many`).

A job that cannot run for a reason the user can act on (a backend or engine missing: a
:class:`~latentmuse.errors.LatentmuseError`) writes ``{"skipped": reason}`` and exits 0. Anything else
is a traceback on stderr and exit code 1; the bench records the failure with its last line. Lines on
stdout starting with :data:`TAG` are progress for the bench's status line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TAG = "@@latentmuse-bench "

#: Stages that are no per-frame work: no frames/s.
ONCE_PER_RUN = ("validate", "load_models")


def say(text: str) -> None:
    print(f"{TAG}{text}", flush=True)


def _write(path: Path, payload: dict) -> None:
    from ..files import atomic_write

    atomic_write(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


# ------------------------------------------------------------------------------------------- jobs


def graph_job(req: dict) -> dict:
    import torch

    from ..graphs.registry import ALL_GRAPHS
    from ..runners.select import EngineStore, Selector, TorchModels
    from ..runners.torch_runner import torch_dtype
    from .measure import DeviceMemory, current_rss_mb, peak_rss_mb, summary, timed_calls

    device = torch.device(req["device"])
    backend, graph = req["backend"], req["graph"]
    spec = ALL_GRAPHS[graph]
    memory = DeviceMemory(device)
    base_rss = current_rss_mb()
    store = None if backend == "torch" else EngineStore(req["engines"], req["weights"], req["seed"])
    selector = Selector(backend, device, torch_dtype("auto", device), store, TorchModels(req["weights"], req["seed"]))
    say(f"{backend} {graph}: opening")
    tic = time.perf_counter()
    runner = selector.select(graph)
    runner.open()
    open_s = time.perf_counter() - tic
    choice = selector.choices[graph]
    if runner.backend != backend:
        runner.close()
        return {"skipped": f"{graph} runs on {runner.backend} only ({choice.reason})"}
    feeds = {k: v.to(device) for k, v in spec.random_feeds(req["sizes"], req["seed"]).items()}
    say(f"{backend} {graph}: warm-up and {req['repeats']} timed calls")
    warmup, seconds = timed_calls(lambda: runner(feeds), req["repeats"], device, memory)
    result = {
        **summary(seconds, req["frames_per_call"], None),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_device_mb": memory.peak_mb(),
        "peak_device_torch_mb": memory.torch_peak_mb(),
        "base_rss_mb": round(base_rss, 1),
        "open_s": round(open_s, 3),
        "warmup_s": round(warmup, 4),
        "seconds": [round(s, 6) for s in seconds],
        "runner": repr(runner),
        "reason": choice.reason,
        "torch_threads": torch.get_num_threads(),
        "flops_per_call": None,
    }
    if req.get("flops") and backend == "torch" and device.type == "cuda":
        say(f"{backend} {graph}: counting FLOPs")
        result["flops_per_call"] = count_flops(runner, feeds)
    runner.close()
    return result


def count_flops(runner, feeds) -> int:
    """FLOPs of one call of a PyTorch runner, counted by torch's dispatcher-level FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        runner(feeds)
    return int(counter.get_total_flops())


def flops_job(req: dict) -> dict:
    import torch

    from ..graphs.registry import ALL_GRAPHS
    from ..runners.select import TorchModels
    from ..runners.torch_runner import torch_dtype

    device = torch.device(req["device"])
    spec = ALL_GRAPHS[req["graph"]]
    say(f"{req['graph']}: counting FLOPs on PyTorch")
    runner = TorchModels(req["weights"], req["seed"]).runner(spec, device, torch_dtype("auto", device)).open()
    feeds = {k: v.to(device) for k, v in spec.random_feeds(req["sizes"], req["seed"]).items()}
    flops = count_flops(runner, feeds)
    runner.close()
    return {"flops_per_call": flops}


class _ForwardedProgress:
    """The pipeline's progress as status lines for the bench."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.totals: dict[str, int | None] = {}
        self.done: dict[str, int] = {}

    def start(self, stage: str, total: int | None) -> None:
        self.totals[stage], self.done[stage] = total, 0
        say(f"{self.backend} end to end: {stage}")

    def advance(self, stage: str, amount: int = 1) -> None:
        self.done[stage] = self.done.get(stage, 0) + amount
        total = self.totals.get(stage)
        say(f"{self.backend} end to end: {stage} {self.done[stage]}" + (f"/{total}" if total else ""))

    def status(self, text: str) -> None:
        say(f"{self.backend} end to end: {text}")

    def note(self, message: str) -> None:
        pass


def stage_rates(report) -> dict:
    """Seconds and frames/s per pipeline stage (frames/s null for once-per-run stages)."""
    frames_for = {"faces": min(report.frames_in, report.frames_out),
                  "sync_score": (report.sync or {}).get("frames_scored", 0)}
    stages = {}
    for name, seconds in report.stages.items():
        if name in ONCE_PER_RUN:
            stages[name] = {"seconds": seconds, "frames_per_s": None}
            continue
        frames = frames_for.get(name, report.frames_out)
        if name.startswith("generate."):
            frames = report.frames_by_generator.get(name.split(".")[1], 0)
        stages[name] = {"seconds": seconds,
                        "frames_per_s": round(frames / seconds, 3) if seconds > 0 and frames else None}
    return stages


def pipeline_job(req: dict) -> dict:
    import torch

    from ..runtime.lipsync import run
    from ..runtime.options import RunOptions
    from .measure import DeviceMemory, peak_rss_mb

    device = torch.device(req["device"])
    memory = DeviceMemory(device, interval_s=0.01)
    options = RunOptions.flat(
        Path(req["video"]), Path(req["output"]), weights=req["weights"], backend=req["backend"],
        engines=Path(req["engines"]) if req.get("engines") else None, generator=req["generator"],
        steps=req["steps"], guidance=req["guidance"], batch_size=req["batch_size"], face_detector="dlib",
        device=req["device"],
    )
    with memory:
        tic = time.perf_counter()
        report = run(options, _ForwardedProgress(req["backend"]))
        seconds = time.perf_counter() - tic
    return {
        "frames": report.frames_out,
        "seconds": round(seconds, 3),
        "frames_per_s": round(report.frames_out / seconds, 3) if seconds > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_device_mb": memory.peak_mb(),
        "first_frame_seconds": report.first_frame_seconds,
        "stages": stage_rates(report),
        "runners": report.runners,
        "frames_processed": report.frames_processed,
        "frames_by_generator": report.frames_by_generator,
        "generator": report.generator,
        "backend": report.backend,
        "precision": report.precision,
        "fallbacks": report.fallbacks,
        "sync": report.sync,
        "torch_threads": torch.get_num_threads(),
    }


def probe_job(req: dict) -> dict:
    import torch

    from ..runners.select import EngineStore
    from ..runners.trt_support import import_tensorrt, module_version
    from ..errors import LatentmuseError
    from ..system import FLAVORS, GpuInfo

    device = torch.device(req["device"])
    props = torch.cuda.get_device_properties(device)
    gpu = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
           "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version()}
    trt: dict = {"unavailable": None, "graphs": {}}
    if "trt" in req.get("backends", ()):
        here = GpuInfo(props.name, gpu["compute_capability"])
        versions, reasons = {}, []
        for flavor in FLAVORS.values():
            try:
                versions[flavor] = module_version(import_tensorrt(flavor))
            except LatentmuseError as exc:
                reasons.append(exc.message)
        if not versions:
            trt["unavailable"] = "; ".join(reasons)
        else:
            store = EngineStore(req["engines"], req["weights"], req["seed"])
            if not store.exists:
                trt["unavailable"] = f"no engines folder {store.root} (run `make engines`, or pass --engines DIR)"
            for graph in req["graphs"]:
                whys = []
                for flavor, version in versions.items():
                    plan, why = store.plan(graph, flavor, version, here)
                    if plan is not None:
                        whys = None
                        break
                    whys.append(f"{flavor.label}: {why}")
                trt["graphs"][graph] = None if whys is None else "; ".join(whys)
    return {"gpu": gpu, "trt": trt}


def export_job(req: dict) -> dict:
    from ..export.onnx_export import export_many

    current = {"name": ""}

    def started(name: str) -> None:
        current["name"] = name
        say(f"exporting {name}")

    results = export_many(req["graphs"], req["weights"], req["out_dir"], fp16=req["fp16"], seed=req["seed"],
                          on_start=started, progress=lambda phase: say(f"exporting {current['name']}: {phase}"))
    return {"results": {r.name: {"status": r.status, "error": r.error, "seconds": r.seconds,
                                 "validation_seconds": r.validation_seconds} for r in results}}


JOBS = {"graph": graph_job, "flops": flops_job, "pipeline": pipeline_job, "probe": probe_job, "export": export_job}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m latentmuse.bench.worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    from ..errors import LatentmuseError

    request = json.loads(Path(args[0]).read_text())
    try:
        result = JOBS[request["job"]](request)
    except LatentmuseError as exc:
        if os.environ.get("LATENTMUSE_DEBUG"):
            raise
        result = {"skipped": str(exc)}
    _write(Path(args[1]), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
