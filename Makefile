# latentmuse: the two set-up commands are `make demo` and `make test`; both create the environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
# Debian packages the demo and the tests use: speech synthesis, dlib's 68-point landmark model, and the
# headless browser the service's web-page test drives.
APT_PACKAGES ?= espeak-ng libdlib-data chromium chromium-driver
OUT    ?= out
PYTEST_ARGS ?=
WEIGHTS ?= smoke

.PHONY: demo test test-slow test-gpu soak bench-scale bench-serve engines env system-deps clean gpu-wheels gpu-check

env: $(STAMP)

# torch first, pinned: an unpinned torch (or one pulled in by a dependency) is a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray,serve]"
	touch $(STAMP)

# Installs what is missing when run as root with apt; otherwise says what to install and goes on.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: Debian packages missing:$$missing (sudo apt-get install$$missing)"; fi; \
	fi

# The main job on the embedded default: a real face (skimage's astronaut, moving and zooming, with
# a 1 s cutaway) and espeak-ng speech, lip-synced with the dlib front end by the default generator:
# LatentSync's UNet3D with MuseTalk behind it (the table shows frames per generator). WEIGHTS=DIR uses
# real weights at LatentSync's 20 DDIM steps; without it, seeded random test-size weights (the run
# says so: mouth pixels are noise) at DEMO_STEPS steps, since their pixels do not improve with more.
DEMO_STEPS ?= 4

demo: $(STAMP) system-deps
	$(BIN)/latentmuse doctor --weights "$(if $(filter smoke,$(WEIGHTS)),weights,$(WEIGHTS))"
	$(BIN)/latentmuse sample $(OUT)/demo
	$(BIN)/latentmuse run $(OUT)/demo/sample.mp4 -o $(OUT)/demo/result.mp4 --weights "$(WEIGHTS)" \
	  --face-detector dlib --report $(OUT)/demo/report.json $(if $(filter smoke,$(WEIGHTS)),--steps $(DEMO_STEPS))
	@echo "demo video:  $(OUT)/demo/result.mp4"
	@echo "demo report: $(OUT)/demo/report.json"

# Export every graph to validated ONNX for WEIGHTS (a folder, or smoke), then build TensorRT plans:
# FLAVOR=auto takes standard TensorRT on a GPU machine that has it, else TensorRT for RTX, which builds
# ahead of time without a GPU (COMPUTE_CAPABILITY=8.6,8.9 picks its targets; default 8.0,8.6,8.9,12.0).
# With neither installed the plans are skipped with one line saying why, and make still succeeds.
ENGINES ?= engines
FLAVOR ?= auto
COMPUTE_CAPABILITY ?=
engines: $(STAMP)
	$(BIN)/latentmuse export --weights "$(WEIGHTS)" --out $(ENGINES)/onnx
	@reason=$$($(BIN)/python -c 'import sys; from latentmuse.engines import engines_unavailable_reason as r; print(r(sys.argv[1]) or "")' "$(FLAVOR)"); \
	if [ -n "$$reason" ]; then echo "$$reason"; \
	else $(BIN)/latentmuse build --onnx $(ENGINES)/onnx --out $(ENGINES) --flavor "$(FLAVOR)" \
	  $(if $(COMPUTE_CAPABILITY),--compute-capability "$(COMPUTE_CAPABILITY)"); fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

# Full-size numeric checks (minutes, several GB of RAM).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# On a GPU machine: every runner's parity on CUDA, the pipeline in fp16 on CUDA and the bench. Tests
# marked `cuda` skip themselves without a GPU (and print why).
test-gpu: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m cuda -rs $(PYTEST_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache

# Many clips (docs/SCALE.md): N runs vs one batch, cold vs cached face track, Ray with 1 vs 2 actors;
# writes $(OUT)/scale.json. WEIGHTS=DIR for full-size (random) weights.
bench-scale: $(STAMP) system-deps
	$(BIN)/python -m latentmuse.bench.scale --weights "$(WEIGHTS)" --folder $(OUT)/scale --json $(OUT)/scale.json

# The service vs batch (docs/SERVE.md): the same SERVE_JOBS jobs through `latentmuse serve --ray local` and
# `latentmuse batch --ray local`, SERVE_WORKERS CPU workers each, jobs per minute and status-call latency
# while they run; writes $(OUT)/serving.json (docs/BENCHMARKS.md). Only 127.0.0.1 is contacted.
SERVE_JOBS ?= 8
SERVE_WORKERS ?= 2
bench-serve: $(STAMP) system-deps
	$(BIN)/python -m latentmuse.bench.serving --weights "$(WEIGHTS)" --jobs $(SERVE_JOBS) --workers $(SERVE_WORKERS) \
	  --folder $(OUT)/serving --json $(OUT)/serving.json

# Soak (issue 10): a SOAK_MINUTES clip at 1080p runs to completion with every frame present and peak RSS
# within 20 % of a SOAK_BASELINE-minute clip's; writes $(OUT)/soak.json. Long on a CPU (docs/BENCHMARKS.md).
SOAK_MINUTES ?= 10
SOAK_BASELINE ?= 1
soak: $(STAMP) system-deps
	$(BIN)/python -m latentmuse.bench.soak --minutes $(SOAK_MINUTES) --baseline-minutes $(SOAK_BASELINE) \
	  --folder $(OUT)/soak --json $(OUT)/soak.json

# GPU check in one command (docs/GPU.md). `make gpu-wheels`, where pip reaches PyPI: the wheels that a
# GPU machine without a registry lacks, and a cut-down dlib predictor, into .whl/ (ignored; under 64 MiB
# with the tree). `make gpu-check`, on the GPU machine from the repository root with its own python3 (no
# venv; only .whl/ is installed, into GPU_SITE): the CUDA tests, the pipeline in fp16 on CUDA and the torch
# bench on CUDA (an estimated 5 to 6 minutes); results in GPU_OUT. Without a CUDA GPU it stops at once in
# one line; GPU_DEVICE=cpu rehearses the steps on the CPU (the run alone takes minutes: GPU_ARGS=--steps 1).
GPU_PYTHON ?= python3
GPU_OUT    ?= $(OUT)/gpu-check
GPU_DEVICE ?= cuda
GPU_SITE   ?= /tmp/site
GPU_ARGS   ?=

gpu-wheels:
	PYTHON="$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))" scripts/gpu_wheels.sh

gpu-check:
	@$(GPU_PYTHON) scripts/gpu_check.py --out "$(GPU_OUT)" --device "$(GPU_DEVICE)" --site "$(GPU_SITE)" $(GPU_ARGS)
