"""Shared fixtures: reference key lists and seeded tiny models. Nothing here touches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "reference"

# Wide tables: rich wraps cells at the terminal width, which would split the words tests look for.
os.environ["COLUMNS"] = "240"

# Deterministic, single-threaded numerics: tests compare values across runs and processes.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def reference(name: str) -> dict:
    """A reference key list recorded from the original projects (see its ``description``)."""
    return json.loads((REFERENCE / f"{name}.json").read_text())


def reference_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(shape)) for key, shape, _dtype in reference(name)["state_dict"]]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test's CLI runs (in process or as children) use a face-track cache of their own, never
    the user's ~/.cache/latentmuse."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LATENTMUSE_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """0.8 s at 25 fps, 200 x 200: 20 frames, 15 with a face, 5-9 a faceless cutaway (modules may define their own)."""
    from .standins import twenty_frame_sample

    return twenty_frame_sample(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def loads(monkeypatch):
    """Runs load stand-in models behind a counter: ``loads["n"]`` loads so far (tests/standins.py)."""
    from .standins import counted_standin_loads

    return counted_standin_loads(monkeypatch)


@pytest.fixture
def marker_pickle(tmp_path: Path) -> tuple[Path, Path]:
    """A pickle whose loading would create a marker file (through os.system), and that marker's path."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"conv_in.weight": torch.zeros(1), "payload": Exploit()}, path)
    assert not marker.exists()
    return path, marker


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the ``latentmuse`` command in-process; return (exit code, stdout, stderr)."""
    from latentmuse.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: without one they are skipped, saying so (``make test-gpu`` runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


#: The graphs a smoke run needs (both generators), exported once per session by ``engines``.
RUN_GRAPHS = ("whisper_encoder", "whisper_post_ln", "vae_encoder", "vae_decoder", "musetalk_unet", "bisenet",
              "unet3d_256")


@pytest.fixture(scope="session")
def engines(tmp_path_factory) -> Path:
    """An engines folder with the smoke ONNX (fp32, validated, seed 0 = the runtime's smoke seed) of
    every graph a run needs, no plans. Exported once per test session: the first xdist worker exports
    under a file lock, the others wait and reuse it. Tests must not change it (copy it first)."""
    import shutil

    from filelock import FileLock

    from latentmuse.export.onnx_export import export_many

    root = tmp_path_factory.getbasetemp().parent / "smoke_engines"
    with FileLock(str(root) + ".lock"):
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            results = export_many(list(RUN_GRAPHS), "smoke", root / "onnx", fp16=False, seed=0)
            assert all(r.status == "pass" for r in results), [r.to_dict() for r in results]
            (root / "done").write_text("ok\n")
    return root


@pytest.fixture(scope="session")
def smoke_onnx_fp16(tmp_path_factory) -> Path:
    """Every exported graph's smoke ONNX, fp32 and fp16 (validated, seed 0), for the real TensorRT for RTX
    builds. Exported once per test session under a file lock (see ``engines``); tests must not change it."""
    import shutil

    from filelock import FileLock

    from latentmuse.export.onnx_export import export_many
    from latentmuse.graphs.registry import GRAPHS

    root = tmp_path_factory.getbasetemp().parent / "smoke_onnx_fp16"
    with FileLock(str(root) + ".lock"):
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            results = export_many(list(GRAPHS), "smoke", root / "onnx", fp16=True, seed=0)
            assert all(r.status == "pass" and r.fp16_pass for r in results), [r.to_dict() for r in results]
            (root / "done").write_text("ok\n")
    return root / "onnx"


FAKE_TENSORRT = Path(__file__).parent / "fake_tensorrt"
FAKE_GPU_NAME, FAKE_GPU_CC = "NVIDIA H100 80GB HBM3", "9.0"


_TRT_MODULES = ("tensorrt", "tensorrt_rtx")


@pytest.fixture(autouse=True)
def _tensorrt_modules_restored():
    """Each test ends with ``tensorrt`` and ``tensorrt_rtx`` in ``sys.modules`` as it began: a double
    never outlives its test. (Autouse: torn down after every fixture the test asked for, ``monkeypatch``
    included, which would otherwise put back a double that a ``setitem(sys.modules, ...)`` displaced.)"""
    import sys

    before = {name: sys.modules[name] for name in _TRT_MODULES if name in sys.modules}
    yield
    for name in _TRT_MODULES:
        sys.modules.pop(name, None)
    sys.modules.update(before)


@pytest.fixture
def fake_trt(monkeypatch):
    """The TensorRT test doubles (tests/fake_tensorrt: ``tensorrt`` and ``tensorrt_rtx``) importable here
    and in builder subprocesses, shadowing any real install, with a GPU injected into the build
    orchestration; yields the ``tensorrt`` module. Real modules imported before are put back afterwards
    (``_tensorrt_modules_restored``)."""
    import importlib
    import sys

    from latentmuse.engines import orchestrate
    from latentmuse.runners import trt_support
    from latentmuse.system import GpuInfo

    root = Path(__file__).parent.parent
    monkeypatch.syspath_prepend(str(FAKE_TENSORRT))
    path = os.pathsep.join([str(FAKE_TENSORRT), str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    monkeypatch.setenv("PYTHONPATH", path)
    for var in ("FAKE_TENSORRT_CRASH", "FAKE_TENSORRT_VERSION", "FAKE_TENSORRT_RTX_VERSION"):
        monkeypatch.delenv(var, raising=False)
    for name in _TRT_MODULES:
        sys.modules.pop(name, None)
    monkeypatch.setattr(orchestrate, "gpu_info", lambda: GpuInfo(FAKE_GPU_NAME, FAKE_GPU_CC))
    monkeypatch.setattr(trt_support, "_LOGGERS", {})  # loggers belong to the modules popped above
    yield importlib.import_module("tensorrt")


@pytest.fixture
def fake_rtx(fake_trt):
    """The TensorRT for RTX double (with the standard one beside it, see ``fake_trt``)."""
    import importlib

    return importlib.import_module("tensorrt_rtx")
