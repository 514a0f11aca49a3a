#!/usr/bin/env bash
# Formatters and linters (pinned in requirements-lint.txt), as CI runs them:
#   bash tools/lint.sh          check: ruff, ruff format --check, clang-format, mypy
#   bash tools/lint.sh --fix    apply ruff's fixes and both formatters, then check
#   bash tools/lint.sh --no-mypy   skip mypy (it needs torch installed; .ci/run runs it after the install)
#   bash tools/lint.sh --only-mypy
set -euo pipefail
cd "$(dirname "$0")/.."
fix=0 mypy=1 others=1
for a in "$@"; do
  case $a in
    --fix) fix=1 ;;
    --no-mypy) mypy=0 ;;
    --only-mypy) others=0 ;;
    *) echo "lint: unknown argument $a" >&2; exit 2 ;;
  esac
done
py_paths=(python tests benchmarks examples tools)
mapfile -t cxx < <(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')  # the .def op tables keep their hand-aligned columns
rc=0
if [[ $others == 1 ]]; then
  if [[ $fix == 1 ]]; then
    ruff check --fix -q "${py_paths[@]}" || true
    ruff format -q "${py_paths[@]}"
    clang-format -i "${cxx[@]}"
  fi
  echo "lint: ruff check"; ruff check -q "${py_paths[@]}" || rc=1
  echo "lint: ruff format --check"; ruff format --check -q "${py_paths[@]}" || rc=1
  echo "lint: clang-format (${#cxx[@]} files)"; clang-format --dry-run -Werror "${cxx[@]}" || rc=1
fi
if [[ $mypy == 1 ]]; then
  echo "lint: mypy python/nytorch"; (cd python && mypy -p nytorch) || rc=1
fi
[[ $rc == 0 ]] && echo "lint: clean"
exit $rc
