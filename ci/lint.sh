#!/usr/bin/env bash
# The lint and type gate: ruff (lint + format, config in pyproject.toml) on the whole checkout,
# mypy on arfuse/ (tests/ are not type-checked). .ci/run calls this after installing the test
# extra, which pins both tools; run it locally the same way: ci/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# the active venv's tools (.ci/run activates one), else the checkout's .venv
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PATH="$PWD/.venv/bin:$PATH"; fi

status=0
step() {  # every step runs; the gate fails if any did
  echo "== $*"
  "$@" || status=1
}
step ruff check .
step ruff format --check .
step mypy  # files = ["arfuse"] in pyproject.toml
exit $status
