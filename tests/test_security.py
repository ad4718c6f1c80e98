"""What the package loads and runs: only the pinned FAN TorchScript archive (or the one file the user
trusts), every other checkpoint as data (``weights_only`` pickles, safetensors), no shell strings, and
no network at run time.

The source scans parse every module of the package (ast), so a new ``torch.load`` without
``weights_only=True``, a second ``torch.jit.load`` or a ``shell=True`` fails here; each scanner is
first shown to catch the pattern it looks for, so a scan that finds nothing is a real result.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import socket
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

from latentmuse.errors import CheckpointError, LatentmuseError
from latentmuse.models import fan
from latentmuse.models.layouts import layout
from latentmuse.models.random_weights import write_random_weights
from latentmuse.samples import build_sample

from .conftest import run_cli

PACKAGE = Path(__file__).parent.parent / "latentmuse"
RELEASE = "2DFAN4-cd938726ad.zip"


# ------------------------------------------------------------------------------------ FAN TorchScript


class _Holder(nn.Module):
    """A TorchScript archive holding a FAN's weights under ``fan.`` (tracing FAN itself takes seconds)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.fan = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[nn.Module, Path]:
    """A tiny FAN and a TorchScript archive of its weights at the release's file name (not the release)."""
    torch.manual_seed(0)
    model = fan.build(fan.tiny_config()).eval()
    path = tmp_path_factory.mktemp("ts") / RELEASE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; old archives are not
        torch.jit.save(torch.jit.trace(_Holder(model), torch.zeros(1), check_trace=False), str(path))
    return model, path


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_pin_is_the_released_archive_digest():
    # The release's name carries the first 10 hex digits of its sha256 (torch.hub's convention); the
    # full digest is the one published with the download scripts and the hub mirror (see fan.py).
    assert len(fan.TORCHSCRIPT_SHA256) == 64 and int(fan.TORCHSCRIPT_SHA256, 16) >= 0
    assert fan.TORCHSCRIPT_SHA256.startswith(RELEASE.split("-")[1].split(".")[0])
    (hub,) = [f for f in layout("fan68").files if f.local.endswith(RELEASE)]
    assert hub.sha256 == fan.TORCHSCRIPT_SHA256  # the downloader checks the same value


def test_unpinned_archive_is_refused_without_being_opened(archive, monkeypatch):
    _model, path = archive
    opened: list[str] = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append(str(a[0])))
    with pytest.raises(CheckpointError) as info:
        fan.load(path, fan.tiny_config())
    message = str(info.value)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert "refusing to load" in message and digest[:16] in message and fan.TORCHSCRIPT_SHA256[:16] in message
    assert f"--trust-torchscript {path}" in message and "latentmuse weights convert" in message
    assert "\n" not in message and opened == []
    other = path.with_name("other.zip")
    shutil.copy(path, other)
    with pytest.raises(CheckpointError, match="names .*other.zip, a different file"):
        fan.load(path, fan.tiny_config(), trust_torchscript=other)  # trust is for one file, not its copies
    assert opened == []


def test_pinned_or_trusted_archive_loads(archive, monkeypatch):
    model, path = archive
    trusted = fan.load(path, fan.tiny_config(), trust_torchscript=path)
    assert _same_weights(model, trusted)
    # the released file needs no flag: an archive whose digest is the pin loads as the release would
    monkeypatch.setattr(fan, "TORCHSCRIPT_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    assert _same_weights(model, fan.load(path, fan.tiny_config()))


@pytest.fixture
def fan_folder(archive, tmp_path) -> Path:
    """A weights folder whose FAN is the (unpinned) TorchScript archive at the release's name."""
    root = tmp_path / "weights"
    write_random_weights(root, models=["fan68"])
    for target in layout("fan68").targets:
        (root / target).unlink(missing_ok=True)
    shutil.copy(archive[1], root / "face-detection" / RELEASE)
    return root


def test_trust_reaches_the_runtime_loaders(archive, fan_folder):
    from latentmuse.runtime.faces import S3FDFanFrontEnd
    from latentmuse.runtime.runner_set import load_models

    model, _ = archive
    zipped = fan_folder / "face-detection" / RELEASE
    roles = {"fan68": "fan68"}
    refused = load_models(fan_folder, torch.device("cpu"), roles)["fan68"]  # PyTorch runners load lazily
    with pytest.raises(LatentmuseError, match="--trust-torchscript"):  # the runner's error, naming the flag
        refused.open()
    runner = load_models(fan_folder, torch.device("cpu"), roles, trust_torchscript=zipped)["fan68"]
    runner.open()
    assert _same_weights(model, runner.graph.fan)
    write_random_weights(fan_folder, models=["s3fd"])
    with pytest.raises(CheckpointError, match="--trust-torchscript"):
        S3FDFanFrontEnd.from_weights(fan_folder)
    assert _same_weights(model, S3FDFanFrontEnd.from_weights(fan_folder, trust_torchscript=zipped).fan.graph.fan)


def test_weights_convert_with_trust_ends_the_need_for_it(archive, fan_folder, capsys):
    from latentmuse.models.folder import load_model

    model, _ = archive
    zipped = fan_folder / "face-detection" / RELEASE
    code, out, err = run_cli(capsys, "weights", "convert", str(fan_folder), "-m", "fan68")
    assert code == 1 and "--trust-torchscript" in err and "Traceback" not in out + err
    code, out, err = run_cli(capsys, "weights", "convert", str(fan_folder), "-m", "fan68",
                             "--trust-torchscript", str(zipped))
    assert code == 0, out + err
    converted = fan_folder / "face-detection" / "2DFAN4-cd938726ad.safetensors"
    assert converted.is_file() and _same_weights(model, load_model(fan_folder, "fan68"))  # no trust needed now
    code, out, err = run_cli(capsys, "run", "v.mp4", "-o", "o.mp4", "--trust-torchscript", str(fan_folder / "nope.zip"))
    assert code == 2 and "nope.zip" in err and "does not exist" in err


# ------------------------------------------------------------------------------------ source scans


def _modules() -> list[tuple[str, ast.Module]]:
    found = [(str(p.relative_to(PACKAGE.parent)), ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]
    assert len(found) > 50  # the whole package, not an empty glob
    return found


def _dotted(node: ast.AST) -> str:
    """``torch.jit.load`` for the expression ``torch.jit.load`` (empty when not a plain dotted name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return ""


def _functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node -> the name of the function it is in (for the allowed ``torch.jit.load``)."""
    owner: dict[ast.AST, str] = {}
    for fn in ast.walk(tree):  # outer functions come first: an inner one overwrites, the innermost wins
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                owner[node] = fn.name
    return owner


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def checkpoint_violations(where: str, tree: ast.Module) -> list[str]:
    """Loads that could run code: torch.load without weights_only=True, torch.jit.load outside the
    pinned FAN reader, pickle loading, numpy pickles, ``from torch import load``."""
    owner, out = _functions(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.jit", "pickle") and any(
                a.name in ("load", "loads") for a in node.names):
            out.append(f"{where}:{node.lineno} imports {node.module}.load")
        if not isinstance(node, ast.Call):
            continue
        name, kwargs = _dotted(node.func), {k.arg: k.value for k in node.keywords}
        if name == "torch.load" and not _is_true(kwargs.get("weights_only")):
            out.append(f"{where}:{node.lineno} torch.load without weights_only=True")
        if name.endswith("jit.load") and (where, owner.get(node)) != ("latentmuse/models/fan.py", "read_torchscript_state_dict"):
            out.append(f"{where}:{node.lineno} torch.jit.load outside the pinned FAN reader")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
            out.append(f"{where}:{node.lineno} {name}")
        if name in ("np.load", "numpy.load") and _is_true(kwargs.get("allow_pickle")):
            out.append(f"{where}:{node.lineno} {name}(allow_pickle=True)")
    return out


_STRING_COMMAND = (ast.Constant, ast.JoinedStr, ast.BinOp)
_SUBPROCESS = {f"subprocess.{n}" for n in ("run", "Popen", "call", "check_call", "check_output")}
_SHELLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
           "asyncio.create_subprocess_shell", "os.execl", "os.execlp", "os.spawnl", "os.spawnlp", "commands.getoutput"}


def shell_violations(where: str, tree: ast.Module) -> list[str]:
    """Commands handed to a shell: shell=True, os.system/os.popen and kin, a string as a subprocess's command."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess") and any(
                f"{node.module}.{a.name}" in _SHELLS | _SUBPROCESS for a in node.names):
            out.append(f"{where}:{node.lineno} imports {node.module} functions by name (the scan could not see them)")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                out.append(f"{where}:{node.lineno} shell={ast.unparse(keyword.value)}")
        if name in _SHELLS:
            out.append(f"{where}:{node.lineno} {name}")
        if name in _SUBPROCESS:
            command = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "args"), None)
            if isinstance(command, _STRING_COMMAND) and not (isinstance(command, ast.Constant) and not isinstance(command.value, str)):
                out.append(f"{where}:{node.lineno} {name} with a string command")
    return out


BAD_LOADS = """
import torch, pickle, numpy as np
from torch import load
torch.load(p)
torch.load(p, weights_only=False)
torch.jit.load(p)
pickle.loads(b)
np.load(p, allow_pickle=True)
torch.load(p, weights_only=True)  # fine
"""

BAD_SHELLS = """
import os, subprocess
from subprocess import run
os.system("ls")
os.popen("ls")
subprocess.run("ls -l")
subprocess.check_output(f"ffmpeg -i {x}")
subprocess.Popen(["ls"], shell=True)
subprocess.call(args="ls " + d)
subprocess.run(["ls", "-l"])  # fine
"""


def test_the_scanners_catch_what_they_look_for():
    loads = checkpoint_violations("x.py", ast.parse(BAD_LOADS))
    assert len(loads) == 6, loads
    shells = shell_violations("x.py", ast.parse(BAD_SHELLS))
    assert len(shells) == 7, shells


def test_every_checkpoint_load_is_data_only():
    """torch.load always weights_only=True; torch.jit.load only in the pinned FAN reader, after the pin."""
    violations = [v for where, tree in _modules() for v in checkpoint_violations(where, tree)]
    assert violations == []
    tree = dict(_modules())["latentmuse/models/fan.py"]
    (reader,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "read_torchscript_state_dict"]
    first = next(s for s in reader.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)))
    assert isinstance(first, ast.Expr) and _dotted(first.value.func) == "check_torchscript_trust"  # pin first


def test_no_shell_strings():
    violations = [v for where, tree in _modules() for v in shell_violations(where, tree)]
    assert violations == []


# ------------------------------------------------------------------------------------ no network


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a network connection raises (and is counted).

    urllib3 (imported with diffusers through huggingface_hub) opens an IPv6 socket on ``::1`` at import
    to learn whether the host has IPv6: a local probe, no traffic. It is imported first, so that what
    is counted is what the run itself tries."""
    try:
        import urllib3.util.connection  # noqa: F401
    except ImportError:
        pass
    attempts: list[str] = []

    def refuse(what):
        def deny(*args, **kwargs):
            attempts.append(f"{what}{args[:2]}")
            raise OSError(f"network disabled in this test ({what})")
        return deny

    monkeypatch.setattr(socket, "socket", refuse("socket.socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("socket.gethostbyname"))
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("example.com", 80))
    attempts.clear()
    return attempts


def test_run_needs_no_network(no_network, tmp_path, capsys):
    # 16 frames (one LatentSync window), the last 2 a cutaway: every stage runs, with the smoke UNet3D
    sample = build_sample(tmp_path / "in", seconds=0.64, cutaway=(0.56, 0.64), fps=Fraction(25))
    output = tmp_path / "out.mp4"
    code, out, err = run_cli(capsys, "run", str(sample.video), "-o", str(output), "--weights", "smoke",
                             "--face-detector", "dlib", "--steps", "1", "--report", str(tmp_path / "r.json"))
    assert code == 0, out + err
    assert output.is_file() and output.stat().st_size > 0
    assert no_network == []  # nothing even tried
