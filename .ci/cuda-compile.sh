#!/usr/bin/env bash
# CI step: compile the CUDA kernels (csrc/cuda/*.cu) against a CUDA build of
# torch. Nothing is run (no GPU needed); this only proves the sources build.
#
# Skips (exit 0) when nvcc is not on PATH. Otherwise it creates, or reuses if
# already complete, a venv outside the repository holding the CUDA torch wheel
# plus the build tools, then configures and builds the extension with that
# venv's python and cmake (>= 3.26, needed to pass C++20 to nvcc).
#
# Environment:
#   NYTO_CUDA_VENV       venv path   (default ~/.cache/nytorch/cuda-venv)
#   NYTO_CUDA_BUILD_DIR  build tree  (default /tmp/nytorch-cuda-build-<uid>-<repo hash>)
#   NYTO_CUDA_ARCHS      CMAKE_CUDA_ARCHITECTURES (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if ! command -v nvcc >/dev/null 2>&1; then
  echo "cuda-compile: SKIPPED (nvcc not on PATH)"
  exit 0
fi

compgen -G "csrc/cuda/*.cu" >/dev/null || { echo "cuda-compile: FAIL (no csrc/cuda/*.cu)"; exit 1; }

TORCH_SPEC="torch==2.14.1"
TOOLS=("cmake>=3.26" "ninja" "scikit-build-core")
venv=${NYTO_CUDA_VENV:-$HOME/.cache/nytorch/cuda-venv}
hash=$(printf '%s' "$repo" | cksum | cut -d' ' -f1)
build=${NYTO_CUDA_BUILD_DIR:-${TMPDIR:-/tmp}/nytorch-cuda-build-$(id -u)-$hash}
archs=${NYTO_CUDA_ARCHS:-90}
stamp="$venv/.nytorch-complete"
want="$TORCH_SPEC ${TOOLS[*]}"
t0=$SECONDS
export PYTHONWARNINGS=ignore   # the CUDA torch warns that numpy is absent: noise here

fail() { echo "cuda-compile: FAIL ($1, $((SECONDS - t0)) s)"; exit 1; }

# --- the venv (serialized: several checkouts may share it) -------------------
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "cuda-compile: reusing venv $venv"
else
  echo "cuda-compile: creating venv $venv ($TORCH_SPEC, CUDA wheel, ~5 GB, a few minutes)"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "venv creation"
  "$venv/bin/python" -m pip install -q "$TORCH_SPEC" "${TOOLS[@]}" || fail "pip install"
  "$venv/bin/python" -c "import torch; assert torch.version.cuda, 'torch wheel has no CUDA'" \
    || fail "the installed torch is not a CUDA build"
  printf '%s' "$want" > "$stamp"
fi
flock -u 9
py="$venv/bin/python"
cmake="$venv/bin/cmake"
echo "cuda-compile: torch $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)'),"\
     "$("$cmake" --version | head -1), $(nvcc --version | tail -1)"

# --- configure + build (no install; one run per build tree at a time) --------
mkdir -p "$(dirname "$build")"
exec 8>"$build.lock"
flock 8
t1=$SECONDS
"$cmake" -S "$repo" -B "$build" -G Ninja \
  -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" \
  -DPython_EXECUTABLE="$py" \
  -DNYTO_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$archs" \
  || fail "cmake configure"
# The CUDA kernels only: the CPU sources are built and tested by the main job.
"$cmake" --build "$build" -j "$(nproc)" --target nyto_cuda || fail "compile"
echo "cuda-compile: PASS (CUDA sources built for sm_$archs in $((SECONDS - t1)) s, total $((SECONDS - t0)) s; build tree $build)"
