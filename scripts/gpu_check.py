"""`make gpu-check`: the CUDA tests, the pipeline in fp16 on CUDA and the torch bench on CUDA, in one command.

    python3 scripts/gpu_check.py [--out DIR] [--device cuda] ...     (from the repository root)

Made for a GPU machine that has its own PyTorch with CUDA but no package registry (docs/GPU.md). It uses
the interpreter that runs it (no virtual environment) and, in this order:

1. stops at once, in one line, when torch is missing or sees no CUDA GPU;
2. checks that every module the package and its tests import is there; when some are not, installs the
   wheels carried in .whl/ (`make gpu-wheels`) into --site without a registry and checks again (one line
   naming what is still missing); puts the cut-down dlib predictor of .whl/dlib/ where the dlib front
   end looks when the machine has none (root), and scripts/standin/espeak-ng on PATH when espeak-ng is
   missing (synthetic audio for the sample);
3. pytest -m cuda (the tests of ONNX Runtime's CUDA provider, and of TensorRT, are deselected when the
   machine lacks that provider, or the tensorrt module: they would skip after a two-minute ONNX export;
   --all-tests keeps them);
4. `latentmuse sample`, then `latentmuse run` on it in fp16 on CUDA with the torch backend and dlib,
   and checks the report: status ok, on CUDA in fp16, frames generated, no fallback;
5. `latentmuse bench --backends torch` on CUDA, and checks every graph and the end-to-end run measured.

Every step runs (under a time limit) even when an earlier one failed; the exit status is 0 only when all
pass. The results folder (--out; default $GPU_OUT, else $OUT/gpu-check, else out/gpu-check) holds six
files: gpu-check.log (everything printed), summary.txt, pytest.xml, report.json, result.mp4, bench.json.
--device cpu rehearses the same steps on a machine without a GPU (the CUDA tests then skip).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
CARRIED_PREDICTOR = WHEELS / "dlib" / "shape_predictor_68_face_landmarks.dat.xz"
PREDICTOR = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")  # latentmuse.runtime.faces' default
STANDIN = ROOT / "scripts" / "standin"
#: Time limits of the steps on CUDA, seconds: with the set-up, under the device tool's 600 s per command.
LIMITS = {"tests": 330.0, "run": 90.0, "bench": 120.0}
#: What the results folder holds (the device tool brings back at most 8 files).
RESULTS = ("gpu-check.log", "summary.txt", "pytest.xml", "report.json", "result.mp4", "bench.json")

#: Modules the package, its CLI and the CUDA tests import, with the distribution that provides each.
MODULES = {
    "torch": "torch", "numpy": "numpy", "av": "av", "cv2": "opencv-python-headless", "dlib": "dlib-bin",
    "diffusers": "diffusers", "transformers": "transformers", "huggingface_hub": "huggingface_hub",
    "safetensors": "safetensors", "einops": "einops", "typer": "typer", "rich": "rich", "onnx": "onnx",
    "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "onnxconverter_common": "onnxconverter-common",
    "skimage": "scikit-image", "scipy": "scipy", "PIL": "pillow", "filelock": "filelock", "pytest": "pytest",
    "polygraphy": "polygraphy",
}

PREFLIGHT = """
import importlib, importlib.metadata, importlib.util, json, sys
modules, found, missing = json.loads(sys.argv[1]), {}, []
for name, dist in modules.items():
    try:
        module = importlib.import_module(name)
        try:
            found[dist] = importlib.metadata.version(dist)
        except Exception:
            found[dist] = getattr(module, "__version__", "?")
    except Exception as exc:
        missing.append(f"{dist} ({type(exc).__name__}: {exc})")
providers = []
if "onnxruntime" in found:
    import onnxruntime
    providers = onnxruntime.get_available_providers()
trt = importlib.util.find_spec("tensorrt") is not None
print(json.dumps({"found": found, "missing": missing, "ort_providers": providers, "tensorrt": trt}))
"""


class Check:
    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for stale in RESULTS:
            (out / stale).unlink(missing_ok=True)
        self.out = out
        self.log = open(out / "gpu-check.log", "w", buffering=1)
        self.lines: list[str] = []
        self.failed = False

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def result(self, step: str, ok: bool, text: str) -> None:
        line = f"  {step:<6} {'PASS' if ok else 'FAIL'}  {text}"
        self.lines.append(line)
        self.failed |= not ok
        self.say(f"gpu-check: {step}: {'PASS' if ok else 'FAIL'}: {text}")

    def run(self, argv: list[str], env: dict, limit: float | None) -> tuple[int, float]:
        """Run ``argv``, its output to the console and the log; kill its process group after ``limit`` s."""
        self.say("$ " + " ".join(argv))
        tic = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timer = None
        if limit:
            timer = threading.Timer(limit, _kill_group, (proc.pid,))
            timer.start()
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            self.log.write(chunk.decode("utf-8", "replace"))
        code = proc.wait()
        if timer is not None:
            timer.cancel()
        seconds = time.monotonic() - tic
        if limit and code == -signal.SIGKILL and seconds >= limit:
            self.say(f"gpu-check: stopped after its {limit:.0f} s limit")
            code = 124
        return code, seconds


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def fail(message: str) -> int:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)
    return 1


def torch_line(device: str) -> str | None:
    """'torch ..., CUDA ..., GPU' or None, after printing why this machine cannot run the check."""
    try:
        import torch
    except ImportError as exc:
        fail(f"{sys.executable} has no torch ({exc}); run with the GPU machine's own python3 (GPU_PYTHON=...)")
        return None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            fail(f"needs a CUDA GPU, and torch {torch.__version__} ({build}) sees none here; "
                 "run it on a GPU machine (docs/GPU.md)")
            return None
        index = int(device.split(":")[1]) if ":" in device else 0
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        return f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name} (sm_{major}{minor})"
    return f"torch {torch.__version__}, on the CPU (a rehearsal: the CUDA tests skip)"


def preflight(check: Check, env: dict) -> dict | None:
    """{found: {dist: version}, missing: [...], ort_providers: [...], tensorrt: bool} in ``env``, or None."""
    probe = subprocess.run([sys.executable, "-c", PREFLIGHT, json.dumps(MODULES)], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    try:
        return json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        check.say(f"gpu-check: the import check failed: {probe.stderr.strip()[-2000:]}")
        return None


def install_wheels(check: Check, site: Path, env: dict) -> bool:
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        check.say("gpu-check: .whl/ holds no wheels (`make gpu-wheels` where pip works, then carry .whl/)")
        return True
    check.say(f"gpu-check: installing {len(wheels)} carried wheels into {site} (no index)")
    code, _ = check.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                         "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(site),
                         *map(str, wheels)], env, 300)
    if code != 0:
        check.say("gpu-check: installing the wheels failed (one version of each? `make gpu-wheels` refreshes .whl/)")
    return code == 0


def dlib_predictor(check: Check) -> bool:
    if PREDICTOR.is_file():
        return True
    if not CARRIED_PREDICTOR.is_file():
        check.say(f"gpu-check: {PREDICTOR} is missing and no .whl/dlib/{CARRIED_PREDICTOR.name} was carried: "
                  "apt-get install libdlib-data, or `make gpu-wheels` on a machine with pip and carry .whl/")
        return False
    try:
        PREDICTOR.parent.mkdir(parents=True, exist_ok=True)
        partial = PREDICTOR.with_name(PREDICTOR.name + ".partial")
        with lzma.open(CARRIED_PREDICTOR) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(PREDICTOR)
    except (OSError, lzma.LZMAError) as exc:
        check.say(f"gpu-check: cannot install the carried dlib predictor at {PREDICTOR} ({exc}); run as root, "
                  "or apt-get install libdlib-data")
        return False
    check.say(f"gpu-check: no dlib predictor here: installed the carried cut-down one at {PREDICTOR} "
              "(scripts/small_dlib_predictor.py)")
    return True


def tests_step(check: Check, args, env: dict, deselect: list[str], xml: Path) -> None:
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rfEs", "-p", "no:cacheprovider",
            f"--junitxml={xml}", *args.tests]
    if deselect:
        argv += ["-k", " and ".join(f"not {name}" for name in deselect)]
    code, seconds = check.run(argv, env, args.tests_timeout)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    except (OSError, ET.ParseError, AttributeError):
        pass
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = (f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
            f"{', deselected: ' + ', '.join(deselect) if deselect else ''}; {seconds:.0f} s (exit {code})")
    # pytest exits 5 when every test was deselected or skipped: only a real run of them passes on a GPU
    ok = code == 0 and (passed > 0 or not args.device.startswith("cuda"))
    check.result("tests", ok, text)


def run_step(check: Check, args, env: dict, work: Path) -> None:
    report, result = check.out / "report.json", check.out / "result.mp4"
    cli = [sys.executable, "-m", "latentmuse"]
    code, seconds = check.run([*cli, "sample", str(work)], env, 60)
    if code != 0:
        check.result("run", False, f"`latentmuse sample` failed (exit {code})")
        return
    precision = "fp16" if args.device.startswith("cuda") else "fp32"
    code, seconds = check.run([*cli, "run", str(work / "sample.mp4"), "-o", str(result), "--weights", "smoke",
                               "--device", args.device, "--precision", precision, "--backend", "torch",
                               "--face-detector", "dlib", "--report", str(report), "--steps", str(args.steps),
                               "--no-cache"], env, args.run_timeout)
    try:
        r = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        check.result("run", False, f"exit {code}, no report ({exc})")
        return
    problems = [what for what, bad in [
        (f"status {r.get('status')}", r.get("status") != "ok"),
        (f"device {r.get('device')}", not str(r.get("device", "")).startswith(args.device.split(":")[0])),
        (f"precision {r.get('precision')}", r.get("precision") != precision),
        ("no frame generated", not r.get("frames_processed")),
        (f"{r.get('frames_failed')} frames failed", bool(r.get("frames_failed"))),
        (f"fallbacks {r.get('fallbacks')}", bool(r.get("fallbacks"))),
    ] if bad]
    gens = ", ".join(f"{g} {n}" for g, n in (r.get("frames_by_generator") or {}).items())
    text = (f"status {r.get('status')}, {r.get('device')} {r.get('precision')}, {r.get('frames_out')} frames "
            f"({gens}; {r.get('frames_passthrough')} passthrough), {seconds:.0f} s (exit {code})")
    check.result("run", code == 0 and not problems, text + ("; " + "; ".join(problems) if problems else ""))


def bench_step(check: Check, args, env: dict) -> None:
    out = check.out / "bench.json"
    code, seconds = check.run([sys.executable, "-m", "latentmuse", "bench", "--weights", "smoke", "--backends",
                               "torch", "--device", args.device, "--frames", str(args.bench_frames), "--repeats",
                               str(args.bench_repeats), "--steps", str(args.steps), "--json", str(out)],
                              env, args.bench_timeout)
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        check.result("bench", False, f"exit {code}, no JSON ({exc})")
        return
    cuda = args.device.startswith("cuda")
    graphs = {g: e.get("torch", {}) for g, e in data.get("graphs", {}).items()}
    problems = [f"{g}: {e.get('skipped') or e.get('error') or 'not measured'}" for g, e in graphs.items()
                if not e.get("frames_per_s")]
    if cuda:
        problems += [f"device {data.get('device')}"] if not str(data.get("device", "")).startswith("cuda") else []
        problems += [f"{g}: no device memory" for g, e in graphs.items() if e.get("frames_per_s")
                     and not (e.get("peak_device_mb") or 0) > 0]
    e2e = data.get("end_to_end", {}).get("torch", {})
    if not e2e.get("frames_per_s"):
        problems.append(f"end to end: {e2e.get('skipped') or e2e.get('error') or 'not measured'}")
    fastest = ", ".join(f"{g} {e['frames_per_s']:.0f}" for g, e in graphs.items() if e.get("frames_per_s"))
    memory = f", peak device {e2e['peak_device_mb']:.0f} MB" if e2e.get("peak_device_mb") else ""
    text = (f"{data.get('generator')} on {data.get('device')}: frames/s {fastest}; end to end "
            f"{e2e.get('frames_per_s')} frames/s{memory}; {seconds:.0f} s (exit {code})")
    check.result("bench", code == 0 and not problems, text + ("; " + "; ".join(problems) if problems else ""))


def main(argv: list[str] | None = None) -> int:
    env_out = os.environ.get("GPU_OUT") or (Path(os.environ["OUT"]) / "gpu-check" if os.environ.get("OUT") else None)
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(env_out or ROOT / "out" / "gpu-check"),
                        help="results folder (default: $GPU_OUT, else $OUT/gpu-check, else out/gpu-check)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a rehearsal without a GPU")
    parser.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where the .whl/ wheels go")
    parser.add_argument("--tests", nargs="*", default=["tests"], help="pytest paths (default: tests)")
    parser.add_argument("--all-tests", action="store_true",
                        help="keep the ONNX Runtime CUDA and TensorRT tests even when the machine lacks both")
    parser.add_argument("--steps", type=int, default=4, help="LatentSync DDIM steps of the run and the bench")
    parser.add_argument("--bench-frames", type=int, default=25)
    parser.add_argument("--bench-repeats", type=int, default=3)
    for step, limit in LIMITS.items():
        parser.add_argument(f"--{step}-timeout", type=float, default=None,
                            help=f"seconds (0: none; default {limit:.0f} on CUDA, none on the CPU)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tests", "run", "bench"], help="steps to leave out")
    args = parser.parse_args(argv)
    for step, limit in LIMITS.items():
        if getattr(args, f"{step}_timeout") is None:
            setattr(args, f"{step}_timeout", limit if args.device.startswith("cuda") else 0)

    tic = time.monotonic()
    gpu = torch_line(args.device)
    if gpu is None:
        return 1
    check = Check(args.out.resolve())
    check.say(f"gpu-check: {gpu}; python {sys.version.split()[0]} at {sys.executable}; results in {check.out}")

    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS=os.environ.get("COLUMNS", "160"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(args.site), os.environ.get("PYTHONPATH")]))
    found = preflight(check, env)
    if found is not None and found["missing"] and WHEELS.is_dir():
        check.say(f"gpu-check: not importable here: {'; '.join(found['missing'])}")
        found = preflight(check, env) if install_wheels(check, args.site, env) else None
    if found is None or not dlib_predictor(check):
        return 1
    if found["missing"]:
        check.say(f"gpu-check: missing Python packages: {'; '.join(found['missing'])} (bring them as wheels: "
                  "`make gpu-wheels` where pip works, carry .whl/; docs/GPU.md)")
        return 1
    check.say("gpu-check: " + ", ".join(f"{d} {v}" for d, v in found["found"].items()))
    work = Path(tempfile.mkdtemp(prefix="latentmuse-gpu-check-"))
    if shutil.which("espeak-ng", path=env.get("PATH")) is None:
        standin = work / "bin" / "espeak-ng"  # run by this interpreter, whatever PATH holds
        standin.parent.mkdir()
        standin.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN / "espeak-ng"}" "$@"\n')
        standin.chmod(0o755)
        env["PATH"] = os.pathsep.join(filter(None, [str(standin.parent), env.get("PATH")]))
        check.say("gpu-check: espeak-ng is not installed: the sample's audio comes from scripts/standin/espeak-ng "
                  "(synthetic voiced audio, not speech)")

    deselect = []
    if not args.all_tests and args.device.startswith("cuda"):
        if "CUDAExecutionProvider" not in found["ort_providers"]:
            deselect.append("onnx_runtime_cuda")
            check.say(f"gpu-check: onnxruntime has no CUDA provider ({', '.join(found['ort_providers'])}): its "
                      "CUDA tests are deselected")
        if not found["tensorrt"]:
            deselect.append("tensorrt_runner")
            check.say("gpu-check: no tensorrt module: the TensorRT CUDA-graph test is deselected")

    try:
        if "tests" not in args.skip:
            tests_step(check, args, env, deselect, check.out / "pytest.xml")
        if "run" not in args.skip:
            run_step(check, args, env, work / "sample")
        if "bench" not in args.skip:
            bench_step(check, args, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    verdict = "FAIL" if check.failed else "PASS"
    summary = [f"gpu-check {verdict} in {time.monotonic() - tic:.0f} s: {gpu}", *check.lines, f"results: {check.out}"]
    (check.out / "summary.txt").write_text("\n".join(summary) + "\n")
    check.say("\n".join(summary))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
