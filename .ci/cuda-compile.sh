#!/usr/bin/env bash
# CI step: build the CUDA wheel (csrc/cuda/*.cu and the rest, against the CUDA
# build of torch 2.14.1), repair it with auditwheel and list its kernels.
# Nothing is run (no GPU needed); this proves the CUDA wheel builds.
#
# Skips (exit 0) when nvcc is not on PATH. Otherwise tools/torch-venv.sh cuda
# creates, or reuses if already complete, a venv outside the repository holding
# the CUDA torch wheel plus the build tools (cmake >= 3.26, needed to pass C++20
# to nvcc); then tools/build-wheel.sh cuda builds the wheel with that venv's
# python for TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX": sm_80, sm_90, PTX).
#
# Environment:
#   NYTO_CUDA_VENV       venv path   (default ~/.cache/nytorch/cuda-venv)
#   NYTO_CUDA_BUILD_DIR  build tree  (default /tmp/nytorch-cuda-build-<uid>-<repo hash>)
#   NYTO_CUDA_WHEEL_DIR  where the wheel goes (default dist/)
#   TORCH_CUDA_ARCH_LIST CUDA targets (default "8.0;9.0+PTX")
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if ! command -v nvcc >/dev/null 2>&1; then
  echo "cuda-compile: SKIPPED (nvcc not on PATH)"
  exit 0
fi

compgen -G "csrc/cuda/*.cu" >/dev/null || { echo "cuda-compile: FAIL (no csrc/cuda/*.cu)"; exit 1; }

hash=$(printf '%s' "$repo" | cksum | cut -d' ' -f1)
build=${NYTO_CUDA_BUILD_DIR:-${TMPDIR:-/tmp}/nytorch-cuda-build-$(id -u)-$hash}
out=${NYTO_CUDA_WHEEL_DIR:-$repo/dist}
t0=$SECONDS
export PYTHONWARNINGS=ignore   # the CUDA torch warns that numpy is absent: noise here

fail() { echo "cuda-compile: FAIL ($1, $((SECONDS - t0)) s)"; exit 1; }

# --- the venv (serialized: several checkouts may share it) -------------------
py=$(tools/torch-venv.sh cuda) || fail "venv creation"
echo "cuda-compile: torch $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)'),"\
     "$("$(dirname "$py")/cmake" --version | head -1), $(nvcc --version | tail -1)"

# --- the wheel (one run per build tree at a time) ----------------------------
mkdir -p "$(dirname "$build")"
exec 8>"$build.lock"
flock 8
t1=$SECONDS
bash tools/build-wheel.sh cuda --python "$py" --build-dir "$build" --out "$out" || fail "wheel build"
echo "cuda-compile: PASS (CUDA wheel built, repaired and its kernels listed in $((SECONDS - t1)) s," \
     "total $((SECONDS - t0)) s; build tree $build)"
