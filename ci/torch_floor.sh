#!/usr/bin/env bash
# The pass's tests on the lowest torch arfuse supports (pyproject: torch>=2.11), the torch the
# GPU machine runs. Inductor's post-grad graphs differ between versions: torch 2.11 drops the
# f32 -> bf16 -> f32 casts 2.13 keeps, which once left every FP8 chain of the `rms_norm` and
# `gemma` forms unfused on the GPU while the 2.13 suite passed. In its own venv
# (.venv-torch-floor, ~5 GB: torch 2.11 from PyPI is the CUDA build; it runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR="${ARFUSE_TORCH_FLOOR:-2.11.0}"
python3 -m venv .venv-torch-floor
. .venv-torch-floor/bin/activate
python -m pip install -q "torch==$FLOOR"
python -m pip install -q -e '.[test]'
python -c "import torch; print('torch floor', torch.__version__)"
python -m pytest -q -p no:cacheprovider tests/test_fusion_pass.py tests/test_fusion_patterns.py
