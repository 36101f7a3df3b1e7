#!/usr/bin/env bash
# Set up the machine, then lint, type-check and test corral; extra arguments go to pytest.
# Runs every step and exits non-zero if any of them failed.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

header() { printf '\n==== %s ====\n' "$*"; }

header "setup"
./scripts/setup.sh

DIRS=()
for dir in src tests bench; do
  [[ -d $dir ]] && DIRS+=("$dir")
done

FAILED=()
step() { # step NAME COMMAND...
  local name=$1
  shift
  header "$name"
  if "$@"; then
    echo "---- $name: ok"
  else
    echo "---- $name: FAILED (exit $?)"
    FAILED+=("$name")
  fi
}

step "ruff check" .venv/bin/ruff check "${DIRS[@]}"
step "ruff format --check" .venv/bin/ruff format --check "${DIRS[@]}"
step "mypy" .venv/bin/mypy
step "import contracts" env PYTHONPATH=src .venv/bin/lint-imports --no-cache
# Tests that need only the local engine run on two workers; those that use (and stop)
# the shared robot engine and swarm, or restart the brokers, run after them, one at a time.
selected() { # pytest, where "no test selected" (exit 5) is fine: a narrower run's other half
  local rc=0
  .venv/bin/pytest "$@" || rc=$?
  [[ $rc -eq 5 ]] && { echo "(no test selected here)"; return 0; }
  return $rc
}
step "pytest (parallel)" selected -n 2 -m "not robot and not serial" "$@"
step "pytest (robot engine and broker restarts, serial)" selected -m "robot or serial" "$@"

if [[ ${#FAILED[@]} -gt 0 ]]; then
  header "FAILED: ${FAILED[*]}"
  exit 1
fi
header "all steps passed"
