#!/usr/bin/env bash
# Make (or reuse) a venv outside the repository holding one torch and the build
# tools, and print its python's path on stdout (progress goes to stderr).
#
#   tools/torch-venv.sh cpu    torch as pinned in requirements.txt (2.13.0, CPU wheel)
#   tools/torch-venv.sh cuda   torch==2.14.1, the CUDA 13.0 wheel (~5 GB, ~2 min the first time)
#
# Environment: NYTO_CPU_VENV, NYTO_CUDA_VENV (default ~/.cache/nytorch/{cpu,cuda}-venv).
# A venv is reused when its stamp file says it is complete and holds the same
# specs; creation is serialized with flock, so several checkouts can share one.
# .ci/cuda-compile.sh and tools/build-wheel.sh use it.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=${1:-}
TOOLS=("cmake>=3.26" "ninja" "scikit-build-core")
case $variant in
  cpu)
    spec=$(grep -E '^torch==' requirements.txt | head -1)
    venv=${NYTO_CPU_VENV:-$HOME/.cache/nytorch/cpu-venv}
    want_cuda=0 ;;
  cuda)
    spec="torch==2.14.1"
    venv=${NYTO_CUDA_VENV:-$HOME/.cache/nytorch/cuda-venv}
    want_cuda=1 ;;
  *) echo "usage: tools/torch-venv.sh cpu|cuda" >&2; exit 2 ;;
esac
stamp="$venv/.nytorch-complete"
want="$spec ${TOOLS[*]}"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "torch-venv: reusing $venv" >&2
else
  echo "torch-venv: creating $venv ($spec)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q "$spec" "${TOOLS[@]}" >&2
  "$venv/bin/python" -c "import sys, torch; sys.exit(0 if bool(torch.version.cuda) == bool($want_cuda) else 1)" || {
    echo "torch-venv: the torch installed in $venv is not the $variant build" >&2; exit 1; }
  printf '%s' "$want" > "$stamp"
fi
echo "$venv/bin/python"
