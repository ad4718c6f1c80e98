#!/usr/bin/env bash
# `make gpu-wheels`: what a GPU machine without a package registry lacks for `make gpu-check`, in .whl/
# (docs/GPU.md): the wheels below for CPython 3.12 on manylinux x86-64, and a cut-down dlib 68-point
# predictor (.whl/dlib/, made from Debian's libdlib-data by scripts/small_dlib_predictor.py). Run it from
# any machine whose pip reaches PyPI. It adds /.whl/ to .git/info/exclude, drops files of other versions,
# and fails when what would travel to the GPU machine (.whl/ plus the working tree) exceeds 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=.whl
LIMIT_MIB=64
# One version of each; within pyproject.toml's ranges, and for the GPU image's torch 2.11 / numpy 2.5 /
# huggingface_hub 1.33 / safetensors 0.8 (diffusers 0.42 needs huggingface_hub >= 1.32, safetensors >= 0.8).
WHEELS=(
  av==18.1.0                  # PyAV: every video read and write (FFmpeg inside)
  diffusers==0.42.1           # the VAE (AutoencoderKL) and the UNets' attention processors
  dlib-bin==20.0.1.post1      # the dlib face front end
  onnxconverter-common==1.16.0  # fp16 ONNX export (the bench's and the ONNX tests' export)
  polygraphy==0.53.6          # TensorRT builds (imported only there; small, so it travels for `latentmuse build`)
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
PREDICTOR_TREES=${PREDICTOR_TREES:-50}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"

mkdir -p "$DEST/dlib"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp ${PLATFORMS[@]/#/--platform } -d "$DEST" "${WHEELS[@]}"

# Keep exactly the pinned versions: two versions of one package stop the install on the GPU machine.
for file in "$DEST"/*.whl; do
  keep=
  for pin in "${WHEELS[@]}"; do
    name=${pin%%==*}; version=${pin##*==}
    case "$(basename "$file")" in "${name//-/_}-$version-"*) keep=1 ;; esac
  done
  [ -n "$keep" ] || { echo "removing $(basename "$file") (not pinned here)"; rm -f "$file"; }
done

small="$DEST/dlib/shape_predictor_68_face_landmarks.dat.xz"
if [ ! -s "$small" ]; then
  full=/usr/share/dlib/shape_predictor_68_face_landmarks.dat
  if [ ! -f "$full" ]; then
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    echo "no $full here: fetching Debian's libdlib-data (60 MiB) into $tmp"
    (cd "$tmp" && apt-get download libdlib-data >/dev/null && dpkg -x libdlib-data_*.deb root) \
      || { echo "gpu-wheels: cannot get libdlib-data (apt-get install libdlib-data, or run this on Debian/Ubuntu)" >&2; exit 1; }
    full="$tmp/root$full"
  fi
  "$PYTHON" scripts/small_dlib_predictor.py --trees "$PREDICTOR_TREES" "$full" "$small"
fi

# What travels: .whl/ (carried) plus the tracked and untracked-not-ignored files of the working tree.
tree=$(git ls-files -coz --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}')
ls -l "$DEST"/*.whl "$small" | awk '{printf "%8.1f MiB  %s\n", $5/1048576, $NF}'
carried=$(find "$DEST" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
awk -v c="$carried" -v t="$tree" -v l="$LIMIT_MIB" 'BEGIN {
  printf "%8.1f MiB  .whl/ in all\n%8.1f MiB  the working tree\n%8.1f MiB  travels with carry [\".whl\"] (limit %d MiB)\n",
         c/1048576, t/1048576, (c+t)/1048576, l
  if (c + t > l * 1048576) { print "gpu-wheels: over the limit: remove what is not needed from .whl/"; exit 1 }
}'
