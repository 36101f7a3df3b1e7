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
# Two workers; tests sharing the robot engine stay on one of them (xdist_group).
step "pytest" .venv/bin/pytest -n 2 --dist loadgroup "$@"

if [[ ${#FAILED[@]} -gt 0 ]]; then
  header "FAILED: ${FAILED[*]}"
  exit 1
fi
header "all steps passed"
