#!/usr/bin/env bash
# One prepared GPU check (device machine): build with CUDA kernels, run the
# CUDA tests, the CUDA benchmarks. Writes logs to $OUT (or /tmp/gpu-out).
# Usage: bash tools/gpu-check.sh [pytest -k expression]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 CMAKE_BUILD_PARALLEL_LEVEL=16
t0=$SECONDS
step() { echo "=== $1 ($((SECONDS - t0)) s)"; }
step info
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
step build
NYTO_CUDA=ON timeout 300 python3 -m pip install --no-build-isolation --no-deps -q . \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C build-dir=/tmp/nyto-build >"$OUT/build.log" 2>&1 \
  || { tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
cd /tmp && python3 -c "import nytorch; print('nytorch', nytorch.__file__, 'cuda kernels', nytorch._C.has_cuda())"; cd - >/dev/null
# --- fuse code generation (python/nytorch/_fuse/codegen.py): one kernel cache for tests and benches
export NYTO_FUSE_CACHE_DIR=${NYTO_FUSE_CACHE_DIR:-/tmp/nyto-fuse-cache}
python3 -c "from nytorch._fuse import codegen as c, nvrtc as n; print('fuse codegen:', c.available() or 'ok', n.find_nvrtc())"
# --- end fuse code generation
step tests
timeout 300 python3 -m pytest -q -p no:cacheprovider --maxfail=20 --tb=short tests -k "${1:-cuda or codegen}" \
  --deselect tests/test_ci_commands.py 2>&1 | tee "$OUT/tests.log" | tail -40
step bench_ops
[ -n "${SKIP_OPS:-}" ] || timeout 60 python3 benchmarks/bench_ops.py --device cuda --quick 2>&1 | tee "$OUT/bench_ops.log" | tail -60
step particles
timeout 60 python3 tools/gpu_particle_timing.py 2>&1 | tee "$OUT/particles.log"
# FUSE_ARGS (e.g. --no-compile), SWARM_ARGS (e.g. --no-tensordict): no downloads on the GPU machine
for b in bench_fuse bench_swarm; do
  [ -f benchmarks/$b.py ] || continue
  args=FUSE_ARGS; [ $b = bench_swarm ] && args=SWARM_ARGS
  if [ $b = bench_fuse ]; then  # ours (generated) vs ours (interpreter) in one compare, + foreach, copy
    step "$b (--engine both)"; timeout 150 python3 benchmarks/$b.py --device cuda --quick --engine both ${!args:-} 2>&1 | tee "$OUT/$b.log" | tail -50
  else  # once per engine
    for e in interp codegen; do
      step "$b ($e)"; NYTO_FUSE_ENGINE=$e timeout 90 python3 benchmarks/$b.py --device cuda --quick ${!args:-} 2>&1 | tee "$OUT/$b.$e.log" | tail -45
    done
  fi
done
for f in ${GPU_EXTRA:-}; do step "$f"; timeout 120 python3 $f 2>&1 | tee "$OUT/$(basename $f).log"; done
step done
