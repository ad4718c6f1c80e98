"""The benchmark suite: every graph a generator uses on every requested backend, then the pipeline end to end.

:func:`prepare` checks the options (cheap, before anything heavy) and plans the measurements;
:func:`run_bench` runs them, each (backend, item) in its own worker process
(:mod:`latentmuse.bench.worker`), and returns the result dict that ``latentmuse bench --json`` writes
(its schema is in docs/BENCHMARKS.md).

Work per call, so that frames/s compare across graphs: a frame-batched graph is called with its dynamic
batch dimension at ``--batch-size`` frames; the UNet3D does one DDIM step of a 16-frame window (so its
p50 is also the seconds per step); ``whisper_encoder`` encodes 30 s of audio, 750 frames at 25 fps.
With real SyncNet weights (the end-to-end run then scores lip sync, docs/QUALITY.md) its two graphs
are measured too, ``--batch-size`` windows a call (one window per scored frame), and the run's
``sync_score`` stage is rated per scored frame.

The ONNX Runtime backend needs validated ONNX files of these weights. When the engines folder lacks
them for some graph, the bench exports those graphs into a temporary folder (fp32, and fp16 too on
CUDA), links the ones the engines folder does have beside them, runs ONNX Runtime from there, and
removes the folder afterwards. The bench itself never opens a CUDA context: memory figures of one
worker are not inflated by another process of the bench.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

from ..artifacts.export_report import REPORT_NAME, REPORT_SCHEMA, read_report
from ..artifacts.onnx_files import external_data_files
from ..choices import GENERATORS, RUNNER_BACKENDS
from ..errors import LatentmuseError
from ..files import atomic_write, check_output_path
from ..graphs.registry import ALL_GRAPHS, GRAPHS, unet3d_graph
from ..models.layouts import LATENTSYNC_RESOLUTION
from ..models.smoke import SMOKE
from ..progress import Progress, SilentProgress
from ..runners.select import EngineStore, engines_dir
from ..runtime.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .worker import TAG

BACKENDS = RUNNER_BACKENDS  # what --backends may list, the reference first
FPS = 25
#: whisper_encoder takes 30 s of audio per call (mel (1, 80, 3000) at 100 mel frames per second).
WHISPER_FRAMES = 30 * FPS
#: One UNet3D call is one DDIM step of a 16-frame window.
UNET3D_FRAMES = 16


@dataclass
class BenchOptions:
    weights: str = SMOKE
    generator: str = "auto"
    backends: str | tuple[str, ...] = ("torch", "ort", "trt")
    frames: int = 50
    batch_size: int = 8
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    repeats: int = 5
    engines: Path | None = None
    device: str = "auto"
    end_to_end: bool = True
    json_out: Path | None = None
    plot: Path | None = None
    seed: int = 0  # the smoke weights' seed: the runtime's SMOKE_SEED and the export's default
    command: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What :func:`prepare` decided: the backends, the device, the generator and each graph's workload."""

    options: BenchOptions
    backends: tuple[str, ...]
    device: str
    generator: str
    resolution: int | None
    graphs: dict[str, dict]  # graph -> {"frames_per_call", "sizes"}
    unet3d: dict[str, str]  # "cfg_on"/"cfg_off" -> graph (LatentSync)
    unet3d_missing: str | None  # why the UNet3D graphs cannot be measured (no weights)
    pipeline_graphs: list[str]  # exported graphs the end-to-end run selects
    engines: Path


def parse_backends(value: str | tuple[str, ...]) -> tuple[str, ...]:
    names = [b.strip() for b in (value.split(",") if isinstance(value, str) else value) if b.strip()]
    if not names:
        raise LatentmuseError("--backends is empty.", "use e.g. --backends torch,ort,trt.")
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise LatentmuseError(f"--backends: {unknown[0]} is not a backend.", f"use some of {','.join(BACKENDS)}.")
    return tuple(dict.fromkeys(names))


def workload(graph: str, batch_size: int) -> dict:
    """Frames per call and the dynamic sizes of one bench call of ``graph`` (see the module doc)."""
    spec = ALL_GRAPHS[graph]
    if spec.model_key == "unet3d":
        return {"frames_per_call": UNET3D_FRAMES, "sizes": spec.sizes("opt")}
    if graph == "whisper_encoder":
        return {"frames_per_call": WHISPER_FRAMES, "sizes": {}}
    return {"frames_per_call": batch_size, "sizes": {d.name: batch_size for d in spec.dynamic}}


def prepare(options: BenchOptions) -> Plan:
    """Check every option (one-line errors, nothing heavy) and plan the measurements."""
    from ..runtime.options import LoadOptions
    from ..runtime.runner_set import SYNC_ROLES, resolve_device, run_graphs, unet3d_weights, weights_version
    from ..runtime.session import sync_wanted

    backends = parse_backends(options.backends)
    if options.frames < 1:
        raise LatentmuseError(f"--frames {options.frames} is not positive.", "use --frames 50 (2 s of the sample).")
    if options.repeats < 1:
        raise LatentmuseError(f"--repeats {options.repeats} is not positive.", "use --repeats 5.")
    batch_range = GRAPHS["vae_decoder"].dynamic[0]
    if not batch_range.min <= options.batch_size <= batch_range.max:
        raise LatentmuseError(f"--batch-size {options.batch_size} is outside {batch_range.min}..{batch_range.max} "
                              "(the graphs' batch range, the engines' profile).", "use --batch-size 8.")
    if not 1 <= options.steps <= 1000:
        raise LatentmuseError(f"--steps {options.steps} is outside 1..1000.", f"use --steps {DEFAULT_STEPS}.")
    if not options.guidance >= 1.0:  # also false for nan
        raise LatentmuseError(f"--guidance {options.guidance} is below 1.",
                              f"use --guidance 1 (no classifier-free guidance) or {DEFAULT_GUIDANCE}.")
    if options.generator not in GENERATORS:
        raise LatentmuseError(f"--generator {options.generator} is not known.", f"use one of {', '.join(GENERATORS)}.")
    if options.json_out is not None:
        check_output_path(options.json_out, flag="--json")
    if options.plot is not None:
        check_output_path(options.plot, extensions=[".png"], flag="--plot")
    if options.json_out is not None and options.plot is not None and options.json_out.resolve() == options.plot.resolve():
        raise LatentmuseError("--json and --plot name the same file.", "give them different paths.")
    if options.plot is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise LatentmuseError("--plot needs matplotlib, which is not installed.",
                                  "pip install 'latentmuse[bench]' (or pip install 'matplotlib>=3.8'), or drop --plot.")
    if str(options.weights) != SMOKE and not Path(options.weights).is_dir():
        raise LatentmuseError(f"weights folder {options.weights} does not exist.",
                              "run `latentmuse weights download --dir DIR`, or pass --weights smoke for a plumbing test.")
    device = str(resolve_device(options.device))

    unet3d_path = unet3d_weights(options.weights)
    kind = options.generator
    if kind == "auto":
        kind = "latentsync" if unet3d_path is not None else "musetalk"
    resolution, unet3d, missing = None, {}, None
    if kind == "latentsync":
        from ..runtime.generators.latentsync import LatentSyncGenerator, LatentSyncSettings

        resolution = LATENTSYNC_RESOLUTION[weights_version(options.weights)]
        unet3d = {"cfg_on": unet3d_graph(resolution, True), "cfg_off": unet3d_graph(resolution, False)}
        if unet3d_path is None:
            missing = f"no UNet3D weights in {options.weights}"
        declared = LatentSyncGenerator.graphs(LatentSyncSettings(resolution=resolution))
        # its own VAE pair (at 512 px: the *_latentsync roles, PyTorch only); MuseTalk's stays at 256
        vae = [declared.get(f"{role}_latentsync", declared[role]) for role in ("vae_encoder", "vae_decoder")]
        names = ["whisper_encoder", *vae, *unet3d.values()]
    else:
        from ..runtime.generators.musetalk import MuseTalkGenerator

        names = ["whisper_encoder", *MuseTalkGenerator.graphs().values()]
    # the lip-sync score, when the end-to-end run scores (real SyncNet weights: runtime/session.sync_wanted)
    scored = sync_wanted(LoadOptions(weights=options.weights))
    if scored:
        names += list(SYNC_ROLES.values())
    roles = run_graphs(kind, resolution=resolution or 256, guided=options.guidance > 1.0, face_detector="dlib",
                       sync=scored)
    pipeline_graphs = [g for g in roles.values() if g in GRAPHS and not (missing and ALL_GRAPHS[g].model_key == "unet3d")]
    return Plan(options, backends, device, kind, resolution, {g: workload(g, options.batch_size) for g in names},
                unet3d, missing, pipeline_graphs, engines_dir(options.engines))


# ------------------------------------------------------------------------------------------ workers


class Workers:
    """Runs worker jobs one after another (never in parallel: they would share the cores)."""

    def __init__(self, folder: Path, progress: Progress) -> None:
        self.folder, self.progress = folder, progress
        self.count = 0

    def run(self, job: dict) -> dict:
        self.count += 1
        request = self.folder / f"job{self.count:03d}.request.json"
        result = self.folder / f"job{self.count:03d}.result.json"
        errors = self.folder / f"job{self.count:03d}.stderr"
        request.write_text(json.dumps(job, default=str))
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "latentmuse.bench.worker", str(request), str(result)]
        with open(errors, "w") as stderr:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            try:
                for line in process.stdout:
                    if line.startswith(TAG):
                        self.progress.status(line[len(TAG):].rstrip())
                code = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
        if code == 0 and result.is_file():
            return json.loads(result.read_text())
        return {"skipped": f"failed: {self._why(code, errors)}"}

    @staticmethod
    def _why(code: int, errors: Path) -> str:
        if code < 0:
            import signal

            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            hint = " (out of memory?)" if name == "SIGKILL" else ""
            return f"the worker was killed by {name}{hint}"
        lines = [line.strip() for line in errors.read_text(errors="replace").splitlines() if line.strip()]
        return f"the worker exited with {code}: {lines[-1][:300] if lines else 'no message'}"


# ----------------------------------------------------------------------------------- ONNX Runtime


def _usable_onnx(store: EngineStore, graph: str, cuda: bool) -> str | None:
    """None when ``store`` has a validated ONNX file of ``graph`` ONNX Runtime would take, else why not."""
    reasons = []
    for precision in (("fp16", "fp32") if cuda else ("fp32",)):
        path, why = store.onnx(graph, precision)
        if path is not None:
            return None
        reasons.append(why)
    return "; ".join(reasons)


def _link_validated(store: EngineStore, graphs: list[str], target: Path) -> list[str]:
    """Link ``graphs``' files from ``store`` into ``target`` and copy their report entries (weights stamp included)."""
    target.mkdir(parents=True, exist_ok=True)
    report = read_report(store.onnx_dir / REPORT_NAME)
    linked = []
    for graph in graphs:
        for name in (f"{graph}.onnx", f"{graph}.fp16.onnx"):
            source = store.onnx_dir / name
            if source.is_file():
                for path in (source, *external_data_files(source)):
                    (target / path.name).symlink_to(path.resolve())
        linked.append(graph)
    entries = {g: report[g] for g in linked if g in report}
    data = {"schema": REPORT_SCHEMA, "passed": all(e.get("status") == "pass" for e in entries.values()),
            "graphs": dict(sorted(entries.items()))}
    atomic_write(target / REPORT_NAME, (json.dumps(data, indent=2, default=str) + "\n").encode())
    return linked


def ensure_onnx(plan: Plan, workers: Workers, tmp: Path, progress: Progress) -> tuple[Path, dict | None]:
    """The engines folder ONNX Runtime runs from, and what was exported into a temporary one (None: nothing)."""
    options = plan.options
    needed = [g for g in dict.fromkeys([*plan.graphs, *(plan.pipeline_graphs if options.end_to_end else [])])
              if g in GRAPHS and not (plan.unet3d_missing and ALL_GRAPHS[g].model_key == "unet3d")]
    cuda = plan.device.startswith("cuda")
    store = EngineStore(plan.engines, options.weights, options.seed)
    lacking = [g for g in needed if _usable_onnx(store, g, cuda) is not None]
    if not lacking:
        return plan.engines, None
    root = tmp / "engines"
    onnx_dir = root / "onnx"
    precisions = "fp32 + fp16" if cuda else "fp32"
    progress.note(f"ort: {plan.engines}{os.sep} has no validated ONNX of these weights for {', '.join(lacking)}: "
                  f"exporting them ({precisions}) into {onnx_dir}, removed afterwards")
    reused = _link_validated(store, [g for g in needed if g not in lacking], onnx_dir)
    progress.start("export", None)
    tic = time.perf_counter()
    outcome = workers.run({"job": "export", "graphs": lacking, "weights": str(options.weights),
                           "out_dir": str(onnx_dir), "fp16": cuda, "seed": options.seed})
    progress.advance("export")
    export = {"folder": str(onnx_dir), "graphs": lacking, "reused": reused, "fp16": cuda,
              "seconds": round(time.perf_counter() - tic, 2), "results": outcome.get("results", {}),
              "error": outcome.get("skipped"), "removed": False}
    return root, export


# ------------------------------------------------------------------------------------------- suite


def _ratio(value: float | None, reference: float | None) -> float | None:
    return round(value / reference, 3) if value and reference else None


def ratios(result: dict) -> dict:
    """frames/s of each backend over PyTorch's, per graph and end to end (where both ran)."""
    out: dict[str, dict] = {}
    items = {**{g: entry for g, entry in result["graphs"].items()}, "end_to_end": result["end_to_end"]}
    for item, entry in items.items():
        torch_fps = (entry.get("torch") or {}).get("frames_per_s")
        out[item] = {}
        for backend in result["backends"]:
            if backend == "torch":
                continue
            ratio = _ratio((entry.get(backend) or {}).get("frames_per_s"), torch_fps)
            if ratio is not None:
                out[item][f"{backend}/torch"] = ratio
    return out


def _notice(progress: Progress, said: set, backend: str, reason: str, what: str) -> None:
    key = (backend, reason)
    if key not in said:
        said.add(key)
        progress.note(f"{backend} skipped for {what}: {reason}")


def run_bench(options: BenchOptions, progress: Progress | None = None, plan: Plan | None = None) -> dict:
    """Measure (see the module doc); the result dict of ``--json``. Raises if no backend ran at all."""
    from .measure import machine

    progress = progress or SilentProgress()
    plan = plan or prepare(options)
    cuda = plan.device.startswith("cuda")
    if str(options.weights) == SMOKE:
        progress.note("smoke weights: seeded tiny configurations of the real architectures; "
                      "the speed is theirs, not the full-size models'")
    tmp = Path(tempfile.mkdtemp(prefix="latentmuse-bench-"))
    result: dict = {
        "machine": None, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(options.command), "weights": str(options.weights), "generator": plan.generator,
        "device": plan.device, "batch_size": options.batch_size, "repeats": options.repeats,
        "backends": list(plan.backends), "engines": str(plan.engines), "resolution": plan.resolution,
        "steps": options.steps if plan.generator == "latentsync" else None,
        "guidance": options.guidance if plan.generator == "latentsync" else None,
        "frames": options.frames if options.end_to_end else None,
        "onnx_export": None, "graphs": {}, "unet3d": None, "end_to_end": {}, "ratios": {},
    }
    export = None
    try:
        workers = Workers(tmp, progress)
        said: set = set()
        skip: dict[tuple[str, str], str] = {}  # (backend, graph or "end_to_end") -> reason, known up front
        gpu = None
        if cuda:
            progress.status("probing the GPU")
            probe = workers.run({"job": "probe", "device": plan.device, "backends": plan.backends,
                                 "engines": str(plan.engines), "weights": str(options.weights), "seed": options.seed,
                                 "graphs": [g for g in dict.fromkeys([*plan.graphs, *plan.pipeline_graphs])
                                            if g in GRAPHS]})
            if "skipped" in probe:
                raise LatentmuseError(f"the GPU probe failed: {probe['skipped']}")
            gpu = probe["gpu"]
            trt = probe["trt"]
        result["machine"] = machine(gpu)

        if "trt" in plan.backends:
            if not cuda:
                reason = "TensorRT needs a CUDA device (this run is on the CPU)"
                skip.update({("trt", g): reason for g in [*plan.graphs, "end_to_end"]})
            elif trt["unavailable"]:
                skip.update({("trt", g): trt["unavailable"] for g in [*plan.graphs, "end_to_end"]})
            else:
                skip.update({("trt", g): why for g, why in trt["graphs"].items() if why and g in plan.graphs})
                missing = [f"{g}: {why}" for g in plan.pipeline_graphs if (why := trt["graphs"].get(g))]
                if missing:
                    skip[("trt", "end_to_end")] = "; ".join(missing)
        if plan.unet3d_missing:
            skip.update({(b, g): plan.unet3d_missing for b in plan.backends for g in plan.unet3d.values()})
        for graph in plan.graphs:  # e.g. the VAE pair at 512 px: not exported, no engine runs it
            if graph not in GRAPHS:
                skip.update({(b, graph): f"{graph} runs on PyTorch only (not exported)"
                             for b in plan.backends if b != "torch" and (b, graph) not in skip})

        ort_root = plan.engines
        if "ort" in plan.backends:
            ort_root, export = ensure_onnx(plan, workers, tmp, progress)
            result["onnx_export"] = export
            store = EngineStore(ort_root, options.weights, options.seed)
            for graph in plan.graphs:
                if ("ort", graph) not in skip and graph in GRAPHS and (why := _usable_onnx(store, graph, cuda)):
                    skip[("ort", graph)] = f"no usable ONNX: {why}"
            missing = [f"{g}: {why}" for g in plan.pipeline_graphs if (why := _usable_onnx(store, g, cuda))]
            if missing and options.end_to_end:
                skip[("ort", "end_to_end")] = "the pipeline needs ONNX of every graph it runs; " + "; ".join(missing)
        roots = {"torch": None, "ort": ort_root, "trt": plan.engines}

        jobs = [(b, g) for g in plan.graphs for b in plan.backends if (b, g) not in skip]
        # FLOPs are counted on PyTorch (CUDA only): by the torch measurement, else by a job of their own
        flops_jobs = [g for g in plan.graphs if cuda and ("torch" not in plan.backends or ("torch", g) in skip)
                      and not (plan.unet3d_missing and g in plan.unet3d.values())]
        e2e = [b for b in plan.backends if (b, "end_to_end") not in skip] if options.end_to_end else []
        progress.start("measure", len(jobs) + len(flops_jobs) + len(e2e))

        for graph, work in plan.graphs.items():
            entry = result["graphs"][graph] = {**work, "flops_per_frame": None}
            flops = None
            for backend in plan.backends:
                if (backend, graph) in skip:
                    entry[backend] = {"skipped": skip[(backend, graph)]}
                    _notice(progress, said, backend, skip[(backend, graph)],
                            "every graph" if backend == "trt" and not cuda else graph)
                    continue
                progress.status(f"{backend} {graph}")
                measured = workers.run({"job": "graph", "backend": backend, "graph": graph, "device": plan.device,
                                        "weights": str(options.weights), "seed": options.seed,
                                        "engines": str(roots[backend]) if roots[backend] else None,
                                        "sizes": work["sizes"], "frames_per_call": work["frames_per_call"],
                                        "repeats": options.repeats, "flops": cuda})
                progress.advance("measure")
                if "skipped" in measured:
                    _notice(progress, said, backend, measured["skipped"], graph)
                flops = flops or measured.pop("flops_per_call", None)
                entry[backend] = measured
            if graph in flops_jobs:
                progress.status(f"FLOPs of {graph}")
                counted = workers.run({"job": "flops", "graph": graph, "device": plan.device, "sizes": work["sizes"],
                                       "weights": str(options.weights), "seed": options.seed})
                progress.advance("measure")
                flops = counted.get("flops_per_call")
            if flops:
                entry["flops_per_frame"] = round(flops / work["frames_per_call"])
                for backend in plan.backends:
                    measured = entry[backend]
                    if "skipped" not in measured and measured.get("p50_s"):
                        measured["tflops"] = round(flops / measured["p50_s"] / 1e12, 4)
            if graph in plan.unet3d.values():
                for backend in plan.backends:
                    if "skipped" not in entry[backend]:
                        entry[backend]["seconds_per_step"] = entry[backend]["p50_s"]

        if plan.unet3d:
            result["unet3d"] = {
                "resolution": plan.resolution, "frames": UNET3D_FRAMES,
                "steps": {label: {"graph": graph, "batch": ALL_GRAPHS[graph].inputs[0].shape[0],
                                  "seconds_per_step": {b: result["graphs"][graph][b].get("seconds_per_step")
                                                       for b in plan.backends}}
                          for label, graph in plan.unet3d.items()},
            }

        if options.end_to_end:
            from ..samples import build_sample

            progress.status(f"building the {options.frames}-frame sample clip")
            seconds = Fraction(options.frames, FPS)
            cutaway = None if options.frames >= 2 * FPS else (0, 0)  # a face-free middle second, when there is room
            sample = build_sample(tmp / "sample", seconds=seconds, **({"cutaway": cutaway} if cutaway else {}))
            for backend in plan.backends:
                if (backend, "end_to_end") in skip:
                    reason = skip[(backend, "end_to_end")]
                    result["end_to_end"][backend] = {"skipped": reason}
                    _notice(progress, said, backend, reason, "the end-to-end run")
                    continue
                progress.status(f"{backend} end to end")
                ran = workers.run({"job": "pipeline", "backend": backend, "device": plan.device,
                                   "weights": str(options.weights), "video": str(sample.video),
                                   "output": str(tmp / f"end_to_end_{backend}.mp4"),
                                   "engines": str(roots[backend]) if roots[backend] else None,
                                   "generator": plan.generator, "steps": options.steps, "guidance": options.guidance,
                                   "batch_size": options.batch_size})
                progress.advance("measure")
                if "skipped" in ran:
                    _notice(progress, said, backend, ran["skipped"], "the end-to-end run")
                result["end_to_end"][backend] = ran
        else:
            result["end_to_end"] = {b: {"skipped": "--no-end-to-end"} for b in plan.backends}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if export is not None:
            export["removed"] = not Path(export["folder"]).exists()
    result["ratios"] = ratios(result)
    ran = [b for b in plan.backends
           if any("skipped" not in e.get(b, {"skipped": 1}) for e in [*result["graphs"].values(), result["end_to_end"]])]
    result["ran"] = ran
    return result


def no_backend_ran(result: dict) -> LatentmuseError | None:
    """The error to raise (after writing the JSON) when no backend measured anything."""
    if result["ran"]:
        return None
    reasons = {e[b]["skipped"] for e in [*result["graphs"].values(), result["end_to_end"]] for b in result["backends"]
               if "skipped" in e.get(b, {})}
    return LatentmuseError(f"no backend ran ({'; '.join(sorted(reasons))[:500]}).",
                           "add --backends torch, or fix the reasons above.")


def write_json(result: dict, path: Path) -> None:
    atomic_write(path, (json.dumps(result, indent=2, default=str) + "\n").encode())

