#!/usr/bin/env bash
# One prepared GPU check (device machine), in one call of under 8 minutes on
# an H200: build with CUDA kernels, run the CUDA tests (ops, fuse, codegen,
# random state, graphed swarm steps), then the CUDA benchmarks in order of
# importance (bench_swarm: eager vs graphed PSO step; bench_fuse: copy
# bandwidth, generated, interpreter, foreach, inductor), then, with the time
# left, bench_ops and the particle timing. Each step's timeout is cut to what
# is left of the budget (BUDGET_S, default 450 s); a step that no longer fits
# is skipped and says so. Logs go to $OUT (or /tmp/gpu-out).
# Usage: bash tools/gpu-check.sh [pytest -k expression]
# Environment: FUSE_ARGS (default "--only tiny,resnet18"; empty: every
# workload), SWARM_ARGS (default "--no-110 --no-tensordict": no downloads on
# the GPU machine), SKIP_OPS=1 (no bench_ops / particle timing), GPU_EXTRA
# (more scripts to run), BUDGET_S.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 CMAKE_BUILD_PARALLEL_LEVEL=16
FUSE_ARGS=${FUSE_ARGS-"--only tiny,resnet18"}
SWARM_ARGS=${SWARM_ARGS-"--no-110 --no-tensordict"}
BUDGET_S=${BUDGET_S:-450}
t0=$SECONDS
step() { echo "=== $1 ($((SECONDS - t0)) s)"; }
# limit WANTED: prints min(WANTED, seconds left); fails when under 20 s are left
limit() {
  local left=$((BUDGET_S - (SECONDS - t0)))
  ((left >= 20)) || return 1
  echo $(($1 < left ? $1 : left))
}
# run NAME WANTED_S LOG CMD...: the command under the budget's timeout, its tail on stdout
run() {
  local name=$1 want=$2 log=$3 lim
  shift 3
  if ! lim=$(limit "$want"); then
    echo "=== $name: SKIPPED (budget of $BUDGET_S s spent)"
    return 0
  fi
  step "$name (timeout $lim s)"
  timeout "$lim" "$@" >"$OUT/$log" 2>&1
  local rc=$?
  tail -50 "$OUT/$log"
  ((rc == 124)) && echo "=== $name: TIMED OUT after $lim s"
  return 0
}

step info
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
step build
NYTO_CUDA=ON timeout 240 python3 -m pip install --no-build-isolation --no-deps -q . \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C build-dir=/tmp/nyto-build >"$OUT/build.log" 2>&1 \
  || { tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
(cd /tmp && python3 -c "import nytorch; print('nytorch', nytorch.__file__, 'cuda kernels', nytorch._C.has_cuda())")
# --- fuse code generation (python/nytorch/_fuse/codegen.py): one kernel cache for tests and benches
export NYTO_FUSE_CACHE_DIR=${NYTO_FUSE_CACHE_DIR:-/tmp/nyto-fuse-cache}
python3 -c "from nytorch._fuse import codegen as c, nvrtc as n; print('fuse codegen:', c.available() or 'ok', n.find_nvrtc())"
# --- end fuse code generation
run tests 200 tests.log python3 -m pytest -q -p no:cacheprovider --maxfail=20 --tb=short tests \
  -k "${1:-cuda or codegen}" --deselect tests/test_ci_commands.py
# bench_swarm once per fuse engine: the graphed step replays whichever engine it captured
for e in interp codegen; do
  # shellcheck disable=SC2086  # SWARM_ARGS holds several arguments
  run "bench_swarm ($e)" 75 "bench_swarm.$e.log" \
    env NYTO_FUSE_ENGINE="$e" python3 benchmarks/bench_swarm.py --device cuda --quick $SWARM_ARGS
done
# ours (generated) vs ours (interpreter) in one compare, + foreach, inductor, copy
# shellcheck disable=SC2086
run "bench_fuse (--engine both)" 150 bench_fuse.log \
  python3 benchmarks/bench_fuse.py --device cuda --quick --engine both $FUSE_ARGS
if [ -z "${SKIP_OPS:-}" ]; then
  run bench_ops 60 bench_ops.log python3 benchmarks/bench_ops.py --device cuda --quick
  run particles 60 particles.log python3 tools/gpu_particle_timing.py
fi
for f in ${GPU_EXTRA:-}; do run "$f" 120 "$(basename "$f").log" python3 "$f"; done
step "done"
