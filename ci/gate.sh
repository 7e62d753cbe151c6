#!/usr/bin/env bash
# The audit gate: arfuse's own targets must stay dynamic in num_tokens and fully fused.
# Fails (exit 1) on any finding not in audit/baseline.json, exit 2 on a broken target.
# .ci/run calls this after the test suite; run it locally the same way: ci/gate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# the active venv's python (.ci/run activates one), else the checkout's .venv
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then PY=python
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python; fi
BASELINE=audit/baseline.json
OUT="${ARFUSE_GATE_OUT:-out/audit}"
mkdir -p "$OUT"

status=0
run() {  # run NAME [TARGET]: text report to the log; markdown + sarif + trace next to it
  local name=$1; shift
  echo "== arfuse audit $* (baseline $BASELINE)"
  local rc=0
  "$PY" -m arfuse audit "$@" --baseline "$BASELINE" --no-progress --keep "$OUT/$name" \
      --also "markdown=$OUT/$name.md" --also "sarif=$OUT/$name.sarif" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "!! $name: arfuse audit exited $rc (1: new findings, 2: target error)" >&2
    # (an `if`, not `[ ] && status=...`: under `set -e` a false test there ended the gate early)
    if [ "$rc" -gt "$status" ]; then status=$rc; fi
  fi
}

# 1. the built-in tensor-parallel example (what `arfuse audit` with no target audits)
run tp_decoder
# 2. the same decoder written with arfuse's custom ops
run tp_decoder_custom_ops audit/targets.py:tp_decoder_custom_ops
# 3. HF-style Llama layers sharded by DTensor ([batch, seq, hidden]; seq is the token dim)
run hf_llama_dtensor audit/targets.py:hf_llama_dtensor
# 4. the decoder under arfuse.compile ranges: one capture, fused only below the threshold
run tp_decoder_ranges audit/targets.py:tp_decoder_ranges

exit "$status"
