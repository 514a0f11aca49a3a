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
# A CUDA wheel compiles everything (the CPU sources too, against torch 2.14's
# headers) for three targets: minutes on 2 cores. Like a CI compiler cache, the
# build is incremental across runs: the checkout's files (tracked and untracked,
# not ignored) are synced by content into a cached source copy, so unchanged
# files keep their timestamps, and the cached build tree beside it recompiles
# only what changed. NYTO_CUDA_FRESH=1 starts both afresh.
#
# Environment:
#   NYTO_CUDA_VENV       venv path   (default ~/.cache/nytorch/cuda-venv)
#   NYTO_CUDA_CACHE      cached source copy and build tree (default ~/.cache/nytorch/cuda-wheel)
#   NYTO_CUDA_FRESH=1    empty that cache first (a from-scratch build)
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

cache=${NYTO_CUDA_CACHE:-$HOME/.cache/nytorch/cuda-wheel}
out=$(realpath -m "${NYTO_CUDA_WHEEL_DIR:-$repo/dist}")
t0=$SECONDS
export PYTHONWARNINGS=ignore   # the CUDA torch warns that numpy is absent: noise here

fail() { echo "cuda-compile: FAIL ($1, $((SECONDS - t0)) s)"; exit 1; }

# --- the venv (serialized: several checkouts may share it) -------------------
py=$(tools/torch-venv.sh cuda) || fail "venv creation"
echo "cuda-compile: torch $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)'),"\
     "$("$(dirname "$py")/cmake" --version | head -1), $(nvcc --version | tail -1)"

# --- the wheel (one run per cache at a time) ---------------------------------
mkdir -p "$cache"
exec 8>"$cache.lock"
flock 8
t1=$SECONDS
if [[ ${NYTO_CUDA_FRESH:-0} == 1 ]]; then
  rm -rf "$cache/src" "$cache/build"
fi
# Sync by content: copy what differs (new timestamp), delete what is gone.
git ls-files -z -co --exclude-standard | "$py" -c '
import filecmp, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
files = [f for f in sys.stdin.read().split("\0") if f and os.path.isfile(os.path.join(src, f))]
changed = 0
for f in files:
    a, b = os.path.join(src, f), os.path.join(dst, f)
    if not (os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)):
        os.makedirs(os.path.dirname(b), exist_ok=True)
        shutil.copyfile(a, b)
        changed += 1
    shutil.copymode(a, b)
keep = set(files)
gone = 0
for root, _, names in os.walk(dst):
    for n in names:
        rel = os.path.relpath(os.path.join(root, n), dst)
        if rel not in keep:
            os.remove(os.path.join(root, n))
            gone += 1
print(f"cuda-compile: source copy {dst}: {changed} of {len(files)} files changed, {gone} removed")
' "$repo" "$cache/src" || fail "source sync"
bash "$cache/src/tools/build-wheel.sh" cuda --python "$py" --build-dir "$cache/build" --out "$out" || fail "wheel build"
# --- fuse code generation: the generated kernels compile with NVRTC (tests/test_codegen.py), with
# the libnvrtc of the CUDA venv (no GPU needed), run by the calling venv's python (the CPU nytorch of
# .ci/run's README install). Skipped when either is missing.
nvrtc=$(compgen -G "$(dirname "$(dirname "$py")")/lib/python3*/site-packages/nvidia/cu1[0-9]/lib/libnvrtc.so.1[0-9]" | head -1 || true)
if [[ -n $nvrtc ]] && python -c "import nytorch" >/dev/null 2>&1; then
  codegen_cache=$(mktemp -d)
  NYTO_NVRTC=$nvrtc NYTO_FUSE_CACHE_DIR=$codegen_cache python -m pytest -q -p no:cacheprovider tests/test_codegen.py \
    || fail "tests/test_codegen.py with NYTO_NVRTC=$nvrtc"
  rm -rf "$codegen_cache"
else
  echo "cuda-compile: tests/test_codegen.py SKIPPED (no libnvrtc in the CUDA venv, or no nytorch for 'python')"
fi
# --- end fuse code generation
echo "cuda-compile: PASS (CUDA wheel built, repaired and its kernels listed in $((SECONDS - t1)) s," \
     "total $((SECONDS - t0)) s; build tree $cache/build)"
