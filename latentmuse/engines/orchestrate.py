"""Build every graph's engine: one subprocess per graph, incremental, in either TensorRT flavour.

The flavour (:func:`resolve_flavor`, ``latentmuse build --flavor auto|tensorrt|tensorrt-rtx``): standard
TensorRT builds on the GPU the plans will run on, with a persistent timing cache per GPU model and
version; TensorRT for RTX builds ahead of time on any machine, GPU or not, for a list of compute
capabilities (:data:`latentmuse.system.RTX_DEFAULT_TARGETS` unless told). Plans carry the flavour in
their names (``vae_encoder.plan``, ``vae_encoder.rtx.plan``), so both kinds share one engines folder.

A graph is skipped when its manifest entry for the flavour is current (same ONNX sha256, flavour
version, GPU name and compute capability or the same RTX targets, precision and profiles, plan
present). Each build runs in
``python -m latentmuse.engines.trt_build`` so that a builder that segfaults or aborts becomes a clean
:class:`LatentmuseError` naming the graph; the manifest is updated (atomically) after each success.

A builder that runs past ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`, an hour: a full-size UNet3D
takes minutes on a datacenter GPU) is killed with every process it started (it runs in a session of
its own), and so is one still running when the orchestrator is interrupted. The builder writes its
plan and the timing cache into a private folder inside the engines folder; only a build that
finished moves them into place, so a killed build leaves no partial plan or cache behind.

Only an ONNX file that the exporter's ``export_report.json`` lists, with this sha256, as validated
against PyTorch is built ("a wrong export is worse than none"); ``allow_unvalidated`` overrides that
and the manifest entry records ``validated: false``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..choices import ENGINE_PRECISIONS
from ..errors import LatentmuseError
from ..artifacts import manifest as mf
from ..artifacts.export_report import REPORT_NAME, entry_for_file, read_report, validated_entry
from ..artifacts.onnx_files import onnx_sha256
from ..files import slug
from ..system import (FLAVORS, RTX_COMPUTE_CAPABILITIES, RTX_DEFAULT_TARGETS, TENSORRT, TENSORRT_RTX, GpuInfo,
                      TrtFlavor, can_build, gpu_info, tensorrt_probe)


def resolve_flavor(requested: str = "auto", gpu: GpuInfo | None = None) -> tuple[TrtFlavor, str]:
    """The flavour a build uses and its version; a one-line :class:`LatentmuseError` when none can build here.

    ``auto``: standard TensorRT when it imports and a GPU is visible (plans tuned for this GPU), else
    TensorRT for RTX when it imports (ahead of time, no GPU needed), else an error saying what to install.
    """
    if requested not in ("auto", *FLAVORS):
        raise LatentmuseError(f"--flavor {requested} is not known.", f"use auto, {', '.join(FLAVORS)}.")
    candidates = list(FLAVORS.values()) if requested == "auto" else [FLAVORS[requested]]
    reasons = []
    for flavor in candidates:
        probe = tensorrt_probe(flavor)
        why = probe.detail if not probe.ok else can_build(flavor, gpu)
        if why is None:
            import importlib.util

            if importlib.util.find_spec("polygraphy") is None:
                why = f"polygraphy is not installed (install the '{flavor.extra}' extra)"
        if why is None:
            return flavor, probe.detail
        reasons.append(f"{flavor.label}: {why}")
    fix = ("pip install 'latentmuse[trt-rtx]' builds TensorRT for RTX plans on any machine; standard TensorRT "
           "(the 'gpu' extra, on the GPU that will run the plans) serves Hopper and B200")
    raise LatentmuseError(f"TensorRT engines not built: {'; '.join(reasons)}.", fix + ".")


def engines_unavailable_reason(flavor: str = "auto") -> str | None:
    """One line saying why engines cannot be built here (``make engines`` prints it and exits 0), or None."""
    try:
        resolve_flavor(flavor, gpu_info())
    except LatentmuseError as exc:
        return exc.message.rstrip(".")
    return None


def parse_compute_capabilities(value: str | Sequence[str] | None, flavor: TrtFlavor) -> tuple[str, ...]:
    """``--compute-capability 8.6,8.9``: the RTX targets, checked and sorted; the default set when None."""
    if flavor is not TENSORRT_RTX:
        if value:
            raise LatentmuseError("--compute-capability applies to TensorRT for RTX only.",
                                  "drop it, or build with --flavor tensorrt-rtx (standard TensorRT builds "
                                  "for the GPU it runs on).")
        return ()
    if not value:
        return RTX_DEFAULT_TARGETS
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [v for v in items if v not in RTX_COMPUTE_CAPABILITIES]
    if unknown or not items:
        raise LatentmuseError(f"compute capability {', '.join(unknown) or repr(value)} is not one TensorRT for RTX "
                              "targets.", f"use some of {', '.join(RTX_COMPUTE_CAPABILITIES)} (Hopper 9.0 and "
                              "B200 10.0 need standard TensorRT).")
    return tuple(sorted(set(items), key=lambda v: tuple(int(p) for p in v.split("."))))


@dataclass
class BuildResult:
    graph: str
    action: str  # "built", "skipped" or "failed"
    reason: str  # why it was (re)built or skipped, or the error
    plan: Path | None = None
    seconds: float = 0.0
    plan_bytes: int = 0
    peak_rss_bytes: int = 0  # the builder process's peak resident set


class BuildError(LatentmuseError):
    """Some graphs failed; ``results`` holds every graph's outcome (the others were built or skipped)."""

    def __init__(self, message: str, results: list[BuildResult]) -> None:
        super().__init__(message, "see the reasons above; `LATENTMUSE_DEBUG=1` keeps tracebacks.")
        self.results = results


ProfileMap = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def _profiles_of(spec) -> dict[str, list[list[int]]]:
    profiles = spec.profiles() if hasattr(spec, "profiles") else spec
    return {name: [list(map(int, s)) for s in shapes] for name, shapes in profiles.items()}


def _as_mapping(specs) -> dict[str, object]:
    if isinstance(specs, Mapping):
        return dict(specs)
    return {spec.name: spec for spec in specs}


def choose_onnx(onnx_dir: Path, graph: str, precision: str, report: Mapping[str, dict]) -> tuple[Path, str]:
    """``{graph}.fp16.onnx`` for fp16, ``{graph}.onnx`` for fp32. ``auto`` takes the fp16 graph when it
    was exported, unless its validation failed where the fp32 one passed (fp16 overflow): then fp32."""
    fp16, fp32 = onnx_dir / f"{graph}.fp16.onnx", onnx_dir / f"{graph}.onnx"
    if precision not in ENGINE_PRECISIONS:
        raise LatentmuseError(f"precision {precision!r} is not known.", f"use {', '.join(ENGINE_PRECISIONS)}.")
    if precision == "auto" and fp16.is_file():
        entry = report.get(graph, {})
        if not (entry.get("fp16_pass") is False and entry.get("fp32_pass") is True and fp32.is_file()):
            return fp16, "fp16"
    if precision == "fp16":
        if not fp16.is_file():
            raise LatentmuseError(f"{graph}: {fp16} does not exist.", "export the fp16 graphs first.")
        return fp16, "fp16"
    if not fp32.is_file():
        raise LatentmuseError(f"{graph}: no ONNX in {onnx_dir} ({fp32.name} or {fp16.name}).",
                              "run the export first.")
    return fp32, "fp32"


def timing_cache_path(out_dir: Path, gpu: GpuInfo, trt_version: str) -> Path:
    return out_dir / f"timing-{slug(f'{gpu.name}-sm{gpu.compute_capability}-trt{trt_version}')}.cache"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


#: Seconds a builder subprocess may run before it is killed (``latentmuse build --timeout``).
DEFAULT_TIMEOUT_S = 3600.0


def builder_command(onnx: Path, plan: Path, profiles: Mapping, timing_cache: Path | None,
                    workspace_bytes: int | None, flavor: TrtFlavor = TENSORRT,
                    compute_capabilities: Sequence[str] = (), smoke_load: bool = True) -> list[str]:
    """The builder subprocess's argument list (never a shell string)."""
    command = [sys.executable, "-m", "latentmuse.engines.trt_build", "--onnx", str(onnx), "--plan", str(plan),
               "--profiles", json.dumps(profiles), "--flavor", flavor.name]
    if timing_cache is not None:
        command += ["--timing-cache", str(timing_cache)]
    if compute_capabilities:
        command += ["--compute-capabilities", ",".join(compute_capabilities)]
    if not smoke_load:
        command.append("--no-smoke-load")
    if workspace_bytes:
        command += ["--workspace-bytes", str(int(workspace_bytes))]
    return command


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the builder's whole session (TensorRT may have started helpers), then reap the builder.

    The builder is not yet reaped here, so its pid (the session's group id) cannot have been reused."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def run_builder(command: Sequence[str], timeout_s: float | None, graph: str) -> subprocess.CompletedProcess:
    """Run one builder in a session of its own; past ``timeout_s`` (or on an interrupt) it and every
    process it started are killed. A timeout is a LatentmuseError naming the graph."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise LatentmuseError(f"builder for graph {graph} timed out after {timeout_s:g} s and was stopped.",
                              f"give it longer with --timeout SECONDS, or build it alone (--graphs {graph}).") from None
    except BaseException:  # KeyboardInterrupt: the builder, in a session of its own, did not get the signal
        _kill_group(process)
        raise
    return subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr)


def _result_line(stdout: str) -> dict | None:
    """The builder's JSON result: the last stdout line that parses as one (TensorRT may log around it)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "plan_bytes" in data:
            return data
    return None


@dataclass(frozen=True)
class _Build:
    """What every graph's build shares in one ``build_all`` call."""

    onnx_dir: Path
    out_dir: Path
    precision: str
    force: bool
    allow_unvalidated: bool
    flavor: TrtFlavor
    target: mf.Target
    gpu: GpuInfo | None  # the GPU this machine has (required by standard TensorRT, optional for RTX)
    timing_cache: Path | None  # standard TensorRT only
    timeout_s: float | None
    workspace_bytes: int | None
    say: Callable[[str], None]
    export_report: Mapping[str, dict]  # the exporter's record of each graph (read once per call)

    @property
    def smoke_load(self) -> bool:
        """Deserialise each new plan in the builder: only where a GPU it targets is here to do it."""
        return self.gpu is not None and self.gpu.compute_capability in self.target.compute_capabilities


def build_all(
    onnx_dir: str | Path,
    out_dir: str | Path,
    specs: Mapping[str, object] | Iterable[object],
    *,
    force: bool = False,
    graphs: Iterable[str] | None = None,
    precision: str = "auto",
    allow_unvalidated: bool = False,
    report: Callable[[str], None] | None = None,
    gpu: GpuInfo | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    workspace_bytes: int | None = None,
    flavor: str = "auto",
    compute_capabilities: str | Sequence[str] | None = None,
) -> list[BuildResult]:
    """Build (or skip) every graph's engine into ``out_dir``; ``specs`` maps names to GraphSpecs or to
    profile dicts ``{input: (min, opt, max)}``. Only ONNX files that ``export_report.json`` lists as
    validated against PyTorch are built, unless ``allow_unvalidated``. Each builder is killed after
    ``timeout_s`` seconds (None: no limit). ``flavor``: see :func:`resolve_flavor`;
    ``compute_capabilities``: TensorRT for RTX's targets. Raises :class:`BuildError` after trying every
    graph if any failed (the manifest keeps every success)."""
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    gpu = gpu or gpu_info()
    chosen, version = resolve_flavor(flavor, gpu)
    targets = parse_compute_capabilities(compute_capabilities, chosen)
    if chosen is TENSORRT:
        target = mf.Target(chosen.name, version, gpu.name, (gpu.compute_capability,))
        timing_cache = timing_cache_path(out_dir, gpu, version)
    else:
        target, timing_cache = mf.Target(chosen.name, version, "", targets), None
    table = _as_mapping(specs)
    wanted = list(graphs) if graphs else list(table)
    unknown = [g for g in wanted if g not in table]
    if unknown:
        raise LatentmuseError(f"unknown graph(s): {', '.join(unknown)}.", f"choose from {', '.join(table)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Build(onnx_dir, out_dir, precision, force, allow_unvalidated, chosen, target, gpu, timing_cache,
                 timeout_s, workspace_bytes, report or (lambda _line: None), read_report(onnx_dir / REPORT_NAME))
    where = (f"for {gpu.name}" if chosen is TENSORRT else
             f"ahead of time for compute capabilities {', '.join(targets)}")
    ctx.say(f"building with {chosen.label} {version} {where}")
    results: list[BuildResult] = []
    for graph in wanted:
        try:
            results.append(_build_one(graph, table[graph], ctx))
        except LatentmuseError as exc:
            ctx.say(f"{graph}: failed: {exc}")
            results.append(BuildResult(graph, "failed", exc.message))
    failed = [r for r in results if r.action == "failed"]
    if failed:
        detail = "; ".join(f"{r.graph}: {r.reason}" for r in failed)
        raise BuildError(f"{len(failed)} of {len(results)} engine build(s) failed: {detail}", results)
    return results


@contextlib.contextmanager
def _build_folder(out_dir: Path, graph: str) -> Iterator[Path]:
    """A private folder in the engines folder for one build's plan and timing cache, removed afterwards
    with whatever the builder left in it (nothing else is ever in it)."""
    path = Path(tempfile.mkdtemp(prefix=f".{graph}.build-", dir=out_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _up_to_date(entry: mf.EngineEntry | None, digest: str, chosen: str, profiles: dict, ctx: _Build) -> tuple[bool, str]:
    current, reason = mf.entry_is_current(entry, digest, ctx.target)
    if not current:
        return False, reason
    if entry.precision != chosen:
        return False, f"precision changed ({entry.precision} -> {chosen})"
    if entry.profiles != profiles:
        return False, "profiles changed"
    plan = ctx.out_dir / entry.plan
    if not plan.is_file() or plan.stat().st_size != entry.plan_bytes:
        return False, "plan file missing or changed"
    return True, "up to date"


def _build_one(graph: str, spec, ctx: _Build) -> BuildResult:
    export_report = ctx.export_report
    onnx, chosen = choose_onnx(ctx.onnx_dir, graph, ctx.precision, export_report)
    profiles = _profiles_of(spec)
    digest = onnx_sha256(onnx)
    plan = ctx.out_dir / f"{graph}{ctx.flavor.plan_suffix}"
    entry = mf.load(ctx.out_dir).get(graph, ctx.flavor.name)
    current, reason = _up_to_date(entry, digest, chosen, profiles, ctx)
    if current and not ctx.force:
        ctx.say(f"{graph}: up to date")
        return BuildResult(graph, "skipped", "up to date", ctx.out_dir / entry.plan)
    validated, why = validated_entry(export_report, graph, chosen, digest)
    if validated is None and not ctx.allow_unvalidated:
        raise LatentmuseError(
            f"{onnx.name} is not built because {why}.",
            f"re-export it (`latentmuse export --graphs {graph}`), or build it anyway with --unvalidated.",
        )
    reason = "forced" if ctx.force else reason
    ctx.say(f"{graph}: building {onnx.name} ({chosen}; {reason})"
            + ("" if validated else f" [UNVALIDATED: {why}]"))
    with _build_folder(ctx.out_dir, graph) as private:
        cache = None if ctx.timing_cache is None else private / ctx.timing_cache.name
        if cache is not None and ctx.timing_cache.is_file():
            shutil.copy2(ctx.timing_cache, cache)
        staged = private / plan.name
        command = builder_command(onnx, staged, profiles, cache, ctx.workspace_bytes, ctx.flavor,
                                  ctx.target.compute_capabilities if ctx.flavor is TENSORRT_RTX else (),
                                  ctx.smoke_load)
        done = run_builder(command, ctx.timeout_s, graph)
        if done.returncode < 0:
            raise LatentmuseError(f"builder for graph {graph} crashed ({_signal_name(done.returncode)}).")
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise LatentmuseError(f"builder for graph {graph} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
        result = _result_line(done.stdout)
        if result is None or not staged.is_file():
            raise LatentmuseError(f"builder for graph {graph} printed no result.")
        os.replace(staged, plan)
        if cache is not None and cache.is_file():
            os.replace(cache, ctx.timing_cache)
    gpu = ctx.gpu if ctx.flavor is TENSORRT else None  # an RTX build uses no GPU, whatever this machine has
    new = mf.EngineEntry(
        graph=graph, onnx=str(onnx.resolve()), onnx_sha256=digest, precision=chosen, profiles=profiles,
        tensorrt_version=str(result["tensorrt_version"]), gpu_name=gpu.name if gpu else "",
        compute_capability=gpu.compute_capability if gpu else "", plan=plan.name,
        plan_bytes=int(result["plan_bytes"]), build_seconds=float(result["build_seconds"]),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        validated=validated is not None,
        export=_export_record(entry_for_file(export_report, graph, chosen, digest) or {}),
        flavor=ctx.flavor.name, compute_capabilities=list(ctx.target.compute_capabilities),
        builder_peak_rss_bytes=int(result.get("peak_rss_bytes", 0)), inputs=result.get("inputs", {}),
    )
    manifest = mf.load(ctx.out_dir)  # re-read: only this graph's entry for this flavour changes
    manifest.put(new)
    mf.save(manifest, ctx.out_dir)
    ctx.say(f"{graph}: built {plan.name} ({new.plan_bytes / 1e6:.1f} MB, {new.build_seconds:.1f} s, "
            f"builder peak RSS {new.builder_peak_rss_bytes / 2**30:.2f} GiB)")
    return BuildResult(graph, "built", reason, plan, new.build_seconds, new.plan_bytes, new.builder_peak_rss_bytes)


#: What the manifest keeps of a graph's export report entry: how it was exported and how it validated.
_EXPORT_KEYS = ("weights", "seed", "torch", "exporter", "opset", "external_data", "sha256", "fp16_sha256", "atol",
                "rtol", "fp32_max_abs", "fp32_rel", "fp32_pass", "fp16_cosine", "fp16_max_abs", "fp16_pass",
                "min_cosine_fp16", "status", "skipped")


def _export_record(entry: Mapping) -> dict:
    return {k: entry[k] for k in _EXPORT_KEYS if k in entry}
