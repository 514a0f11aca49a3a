#!/usr/bin/env bash
# Incremental developer build: an editable install whose CMake build tree
# persists in build/dev, so a rebuild recompiles only what changed. Python
# files under python/nytorch are used in place; rerun after C++ changes.
# Concurrent calls are serialized (several people or agents share one tree).
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/nytorch-dev-build.lock \
  python -m pip install --no-build-isolation --no-deps -q -e . \
    -Cbuild-dir=build/dev -Ceditable.rebuild=false "$@"
