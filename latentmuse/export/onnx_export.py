"""PyTorch -> ONNX for one :class:`GraphSpec`: export, check, validate against PyTorch, and an fp16 copy.

``export_graph`` writes ``NAME.onnx`` (fp32; ``NAME.onnx.data`` beside it when the weights pass the
external-data threshold, 2 GB by default) and ``NAME.fp16.onnx`` (see :mod:`.fp16`), then validates
both on fresh seeded random inputs through ONNX Runtime CPU against the PyTorch fp32 wrapper (see
:mod:`.validate`). A graph the machine has not the memory to run on ONNX Runtime is recorded as
unvalidated with the numbers, instead of being killed halfway.

The exporter is the dynamo one (``torch.onnx.export(dynamo=True)``, opset 18); only if it fails does
the TorchScript exporter (``dynamo=False``, opset 17) take over, and the result records which ran.

Nothing already exported is lost on the way (see :mod:`.publish`): every file is written and validated
in a private staging folder inside ``out_dir``, and replaces the graph's files there only once the new
export validated (a failed re-export keeps the previous validated graph and its report entry). The
folder's ``export_report.json`` is updated for every graph on every outcome, interrupts included.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import LatentmuseError
from ..models.smoke import SMOKE, model_for, smoke_model
from . import validate as v
from .fp16 import convert_fp16
from ..artifacts.onnx_files import check_onnx, onnx_bytes, onnx_sha256, onnx_stat, save_onnx
from ..artifacts.export_report import FAIL, REPORT_NAME, ExportResult, Validation
from .publish import COMPLETE, FAILED, INTERRUPTED, NOT_REACHED, RunRecord, Staged, publish, record_run, staging
from ..graphs.spec import GraphSpec
from ..runners.compare import compare, cosine, max_abs_error, run_all
from ..runners.torch_runner import TorchRunner

#: Above this many bytes of parameters the weights go to one side file ``NAME.onnx.data``
#: (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2_000_000_000


#: ``progress(message)``: what the exporter is doing now (a phase of a possibly minutes-long graph).
Progress = Callable[[str], None]

__all__ = ["EXTERNAL_DATA_THRESHOLD", "REPORT_NAME", "SMOKE", "export_graph", "export_many", "load_graph_model",
           "smoke_model"]


# --------------------------------------------------------------------------------------------- models


def load_graph_model(spec: GraphSpec, weights: str | Path, seed: int = 0,
                     trust_torchscript: str | Path | None = None) -> nn.Module:
    """The model feeding ``spec``: from a weights folder, or ``"smoke"`` tiny seeded weights
    (``trust_torchscript``: a FAN TorchScript archive the user vouches for)."""
    return model_for(spec.model_key, weights, seed, trust_torchscript)


def _plain_attention(model: nn.Module) -> None:
    """Reset custom (xformers, ...) diffusers attention processors to the stock SDPA one."""
    if not hasattr(model, "attn_processors"):
        return
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if any(not isinstance(p, (AttnProcessor, AttnProcessor2_0)) for p in model.attn_processors.values()):
        model.set_attn_processor(AttnProcessor2_0())


def parameter_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


# --------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (warnings, and one log line per torchvision op it cannot find)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_dynamo(wrapper, spec, args, path, opset, external) -> None:
    from torch.export import Dim

    dims = {d.name: Dim(d.name, min=d.min, max=d.max) for d in spec.dynamic}
    dynamic_shapes = None
    if dims:
        dynamic_shapes = tuple(
            {i: dims[s] for i, s in enumerate(t.shape) if isinstance(s, str)} or None for t in spec.inputs
        )
    program = torch.onnx.export(
        wrapper, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
        input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
        verbose=False, report=False,
    )
    program.save(str(path), external_data=external)


def _export_torchscript(wrapper, spec, args, path, opset, external) -> None:
    dynamic_axes = {}
    for t in (*spec.inputs, *spec.outputs):
        axes = {i: s for i, s in enumerate(t.shape) if isinstance(s, str)}
        if axes:
            dynamic_axes[t.name] = axes
    # Past 2 GB the TorchScript exporter scatters one file per tensor beside its output: it writes into
    # a folder of its own (inside the staging folder), and the model is gathered into one side file.
    target = path.parent / "scattered" / path.name if external else path
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapper, args, str(target), dynamo=False, opset_version=opset, dynamic_axes=dynamic_axes or None,
        input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
    )
    if external:
        import onnx

        save_onnx(onnx.load(str(target)), path, external=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


class _NoDynamo(Exception):
    pass


def _export_file(wrapper, spec, args, folder: Path, opset, external, dynamo) -> tuple[Path, str, int, str]:
    """Write ``folder/<exporter>/NAME.onnx`` with the dynamo exporter, or the TorchScript one if that
    fails (or ``dynamo=False``). Each exporter writes into a folder of its own, so a failed attempt's
    partial files are never mistaken for, or mixed with, the other's."""
    def target(exporter: str) -> Path:
        (folder / exporter).mkdir()
        return folder / exporter / f"{spec.name}.onnx"

    try:
        if not dynamo:
            raise _NoDynamo
        path = target("dynamo")
        with _quiet_exporter():
            _export_dynamo(wrapper, spec, args, path, opset, external)
        return path, "dynamo", opset, ""
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back once
        if isinstance(exc, _NoDynamo):
            note = "dynamo=False requested"
        else:
            note = f"dynamo failed: {type(exc).__name__}: {_first_line(exc)}"
    path = target("torchscript")
    try:
        with _quiet_exporter():
            _export_torchscript(wrapper, spec, args, path, min(opset, 17), external)
    except Exception as exc:  # noqa: BLE001
        raise LatentmuseError(
            f"{spec.name}: export failed with both exporters ({note}; torchscript: {exc}).",
            "run with LATENTMUSE_DEBUG=1 for the traceback.",
        ) from exc
    return path, "torchscript", min(opset, 17), note


# ----------------------------------------------------------------------------------------- validation


class _References:
    """PyTorch fp32 outputs on the fresh validation inputs, computed once and shared by fp32 and fp16."""

    def __init__(self, spec: GraphSpec, wrapper: nn.Module, seed: int) -> None:
        self.spec, self.wrapper, self.seed = spec, wrapper, seed
        self.runner = TorchRunner(spec.name, wrapper, "cpu", torch.float32, spec)
        self._cache: dict[int, tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]] = {}

    def __call__(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        if index not in self._cache:
            sizes = v.validation_sizes(self.spec)[index]
            feeds = self.spec.random_feeds(sizes, self.seed + 1000 + index)
            self._cache[index] = (feeds, run_all([self.runner], feeds)[0])
        return self._cache[index]


def _validate_fp32(result: ExportResult, spec: GraphSpec, path: Path, refs: _References,
                   available_bytes: int | None, say: Progress) -> None:
    sizes = v.validation_sizes(spec)
    need, shortfall = v.memory_shortfall(path, sizes, available_bytes)
    result.memory_bytes = need.total_bytes
    if shortfall:
        result.skipped.append(f"fp32 validation: {shortfall}")
        return
    with v.ort_runner(spec, path) as onnx_runner:
        for i, vs in enumerate(sizes):
            say(f"validating fp32 on ONNX Runtime{_sizes_text(vs)}")
            feeds, ref = refs(i)
            max_abs, rel, ok = compare(run_all([onnx_runner], feeds)[0], ref, spec.atol, spec.rtol)
            result.validations.append(Validation(vs, max_abs, rel, ok))
    result.fp32_max_abs = max(x.max_abs for x in result.validations)
    result.fp32_rel = max(x.rel for x in result.validations)
    result.fp32_pass = all(x.passed for x in result.validations)


def _validate_fp16(result: ExportResult, spec: GraphSpec, half: Path, refs: _References,
                   available_bytes: int | None, say: Progress) -> None:
    sizes = v.validation_sizes(spec)[:1]
    _need, shortfall = v.memory_shortfall(half, sizes, available_bytes)
    if shortfall:
        result.skipped.append(f"fp16 validation: {shortfall}")
        return
    say(f"validating fp16 on ONNX Runtime{_sizes_text(sizes[0])}")
    feeds, ref = refs(0)
    with v.ort_runner(spec, half) as onnx_runner:
        got = run_all([onnx_runner], feeds)[0]
    result.fp16_cosine = cosine(got, ref)
    result.fp16_max_abs = max_abs_error(got, ref)
    result.fp16_pass = bool(np.isfinite(result.fp16_cosine) and result.fp16_cosine >= spec.min_cosine_fp16)


class _Stopwatch:
    """Adds up the time spent inside ``with`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


def _sizes_text(sizes: Mapping[str, int]) -> str:
    return f" ({', '.join(f'{k}={n}' for k, n in sizes.items())})" if sizes else ""


# ---------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class _Options:
    """How to export and validate one graph (``export_graph``'s keyword arguments)."""

    opset: int
    fp16: bool
    seed: int
    external_data_threshold_bytes: int
    dynamo: bool
    available_bytes: int | None


def export_graph(
    spec: GraphSpec,
    model: nn.Module,
    out_dir: str | Path,
    *,
    sizes: Mapping[str, int] | None = None,
    opset: int = 18,
    fp16: bool = True,
    seed: int = 0,
    external_data_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD,
    dynamo: bool = True,
    available_bytes: int | None = None,
    progress: Progress | None = None,
    meta: Mapping[str, object] | None = None,
    also_report: str | Path | None = None,
    run: RunRecord | None = None,
) -> ExportResult:
    """Export ``spec``'s graph of ``model`` into ``out_dir``, validate it, and put it in place (see the
    module doc); ``out_dir/export_report.json`` (and ``also_report``) get its entry, stamped with
    ``meta`` (weights, seed; the torch version by default).

    ``available_bytes`` replaces the machine's available memory in the decision whether ONNX Runtime
    can run a graph (tests use it); ``progress`` hears each phase. An exception leaves ``out_dir`` as
    it was. The result's ``kept_previous`` is true when the export was not installed because the
    folder holds a validated earlier one (the result then describes the discarded attempt).
    """
    say = progress or (lambda _message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().requires_grad_(False)
    _plain_attention(model)
    wrapper = spec.make_wrapper(model).eval()
    traced = dict(v.trace_sizes(spec))
    traced.update(sizes or {})
    small = [name for name, n in traced.items() if n < 2]
    if small:
        raise LatentmuseError(f"{spec.name}: dynamic dims {small} traced below 2.", "trace at size 2 or more.")
    options = _Options(opset, fp16, seed, external_data_threshold_bytes, dynamo, available_bytes)
    with staging(out_dir, spec.name) as stage:
        result, staged = _export_staged(spec, model, wrapper, traced, stage, options, say)
        publish(result, staged, out_dir, meta=meta if meta is not None else {"torch": torch.__version__},
                also=[Path(also_report)] if also_report else [], run=run)
    return result


def _export_staged(spec: GraphSpec, model: nn.Module, wrapper: nn.Module, traced: Mapping[str, int], stage: Path,
                   options: _Options, say: Progress) -> tuple[ExportResult, Staged]:
    """Export, check, convert and validate inside the staging folder ``stage``."""
    args = tuple(spec.random_feeds(traced, options.seed).values())
    weight_bytes = parameter_bytes(model)
    threshold = options.external_data_threshold_bytes

    say("exporting to ONNX")
    exporting = _Stopwatch()
    with exporting:
        path, exporter, used_opset, note = _export_file(wrapper, spec, args, stage, options.opset,
                                                        weight_bytes > threshold, options.dynamo)
        say("checking the ONNX graph")
        check_onnx(path)
    result = ExportResult(
        name=spec.name, file=str(path), bytes=onnx_bytes(path),
        external_data=path.with_name(path.name + ".data").is_file(), exporter=exporter, opset=used_opset,
        seconds=round(exporting.seconds, 2), sha256=onnx_sha256(path), stat=onnx_stat(path), atol=spec.atol,
        rtol=spec.rtol, exporter_note=note,
    )
    staged = Staged(path)

    clock = _Stopwatch()
    refs = _References(spec, wrapper, options.seed)
    with clock:
        _validate_fp32(result, spec, path, refs, options.available_bytes, say)
    if options.fp16:
        (stage / "fp16").mkdir()
        half = stage / "fp16" / f"{spec.name}.fp16.onnx"
        say("converting to fp16")
        gc.collect()
        conversion = _Stopwatch()
        try:
            with conversion:
                convert_fp16(path, half, external=weight_bytes // 2 > threshold)
        except Exception as exc:  # noqa: BLE001 - reported as a failed fp16 graph, the fp32 one stands
            result.fp16_pass = False
            result.exporter_note = "; ".join(filter(None, [
                result.exporter_note, f"fp16 conversion failed: {type(exc).__name__}: {str(exc)[:200]}"]))
        else:
            result.fp16_seconds = round(conversion.seconds, 2)
            result.fp16_file, result.fp16_bytes, result.fp16_sha256 = str(half), onnx_bytes(half), onnx_sha256(half)
            result.fp16_stat = onnx_stat(half)
            result.min_cosine_fp16 = spec.min_cosine_fp16
            staged.fp16 = half
            with clock:
                _validate_fp16(result, spec, half, refs, options.available_bytes, say)
    result.validation_seconds = round(clock.seconds, 2)
    return result, staged


def export_many(
    names: Sequence[str],
    weights: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool = True,
    seed: int = 0,
    also_report: str | Path | None = None,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[ExportResult], None] | None = None,
    progress: Progress | None = None,
    trust_torchscript: str | Path | None = None,
) -> list[ExportResult]:
    """Export several graphs from one weights source, one model in memory at a time.

    A graph whose export raises is recorded as failed (with the error's first line) and the others go on;
    ``LATENTMUSE_DEBUG=1`` re-raises unexpected errors with their traceback (after recording them).
    The report ``out_dir/export_report.json`` (and ``also_report`` when given) is merged after each
    graph, stamped with the weights, seed and torch version, and its ``last_run`` says what this export
    did to each graph: written when it starts, after each graph, and when it ends, fails or is
    interrupted (the interrupt is re-raised once recorded).
    """
    from ..graphs.registry import GRAPHS

    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise LatentmuseError(f"unknown graph {unknown[0]!r}.", f"use some of {', '.join(GRAPHS)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    also = [Path(also_report)] if also_report else []
    meta = {"weights": str(weights), "seed": seed, "torch": torch.__version__}
    run = RunRecord.start(names, str(weights), seed)
    record_run(run, out_dir, also)
    loaded: tuple[str, nn.Module] | None = None
    results = []
    for name in names:
        spec = GRAPHS[name]
        if on_start:
            on_start(name)
        try:
            if loaded is None or loaded[0] != spec.model_key:
                loaded = None  # release the previous model before loading the next
                gc.collect()
                if progress:
                    progress(f"loading {spec.model_key} weights")
                loaded = (spec.model_key, load_graph_model(spec, weights, seed, trust_torchscript))
            result = export_graph(spec, loaded[1], out_dir, fp16=fp16, seed=seed, progress=progress, meta=meta,
                                  also_report=also_report, run=run)
        except Exception as exc:  # noqa: BLE001 - one graph's failure (ORT, exporter, memory) is not the run's
            text = str(exc) if isinstance(exc, LatentmuseError) else f"{type(exc).__name__}: {_first_line(exc)}"
            result = ExportResult(name=name, file=str(out_dir / f"{name}.onnx"), error=text)
            debug = os.environ.get("LATENTMUSE_DEBUG") and not isinstance(exc, LatentmuseError)
            if debug:
                run.finish(FAILED)
            publish(result, None, out_dir, meta=meta, also=also, run=run)
            if debug:
                raise
        except BaseException:  # KeyboardInterrupt, Interrupted (SIGINT/SIGTERM), SystemExit
            run.finish(INTERRUPTED)
            if run.graphs[name]["status"] == NOT_REACHED:  # stopped before this graph was put in place
                interrupted = ExportResult(name=name, file=str(out_dir / f"{name}.onnx"), error=INTERRUPTED)
                publish(interrupted, None, out_dir, meta=meta, also=also, run=run, interrupted=True)
            else:  # a signal held while its files were swapped in: the graph is done, the run stops
                record_run(run, out_dir, also)
            raise
        results.append(result)
        gc.collect()
        if on_done:
            on_done(result)
    run.finish(FAILED if any(r.status == FAIL for r in results) else COMPLETE)
    record_run(run, out_dir, also)
    return results
