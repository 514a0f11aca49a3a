#!/usr/bin/env bash
# Install a nytorch wheel into a fresh venv and run the test suite against it,
# from a directory outside the source tree (so `import nytorch` can only find
# the installed wheel).
#
#   tools/test-wheel.sh dist/nytorch-*+torch2.13cpu-*.whl [pytest args...]
#
# The venv gets the wheel (pip resolves the torch its metadata pins) and the
# test requirements of requirements.txt (without torch and the build tools).
# The run directory holds copies of tests/, docs/, examples/, .ci/, README.md
# and requirements.txt, which the tests read; never python/ or pyproject.toml.
# Environment: NYTO_WHEEL_VENV (default: a fresh temp dir, removed afterwards),
# PYTHON (default python3) to create it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
[[ $# -ge 1 && -f $1 ]] || { echo "usage: tools/test-wheel.sh WHEEL [pytest args...]" >&2; exit 2; }
wheel=$(realpath "$1"); shift
t0=$SECONDS

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
venv=${NYTO_WHEEL_VENV:-$tmp/venv}
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
grep -vE '^(torch|scikit-build-core|cmake|ninja)([^a-zA-Z0-9_-]|$)' requirements.txt > "$tmp/test-requirements.txt"
"$venv/bin/python" -m pip install -q --no-compile "$wheel" -r "$tmp/test-requirements.txt"
t_install=$((SECONDS - t0))

run=$tmp/run
mkdir -p "$run"
cp -r tests docs examples .ci README.md requirements.txt "$run/"
find "$run" -name __pycache__ -prune -exec rm -rf {} +
cd "$run"
where=$("$venv/bin/python" -c "import nytorch; print(nytorch.__file__)")
case $where in
  "$venv"/*) echo "test-wheel: nytorch imports from $where" ;;
  *) echo "test-wheel: FAIL: nytorch imports from $where, not from the wheel's venv" >&2; exit 1 ;;
esac
"$venv/bin/python" -m nytorch.info
echo "test-wheel: $(basename "$wheel") installed in $t_install s; running the tests in $run"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider -ra tests "$@" || rc=$?
[[ $rc -ne 5 ]] || echo "test-wheel: FAIL: pytest collected no tests (exit 5)" >&2
echo "test-wheel: exit $rc (install $t_install s, total $((SECONDS - t0)) s)"
exit "$rc"
