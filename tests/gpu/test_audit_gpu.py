"""The auditor on the production target: models on `cuda`, compiled by Inductor's Triton
codegen (which adds guards the CPU never shows: 32-bit indexing bounds, size-oblivious
tautologies). With default settings a clean model exits 0; Gemma 3's sliding window is found.

    pytest -m gpu tests/gpu/test_audit_gpu.py
    ARFUSE_GPU_AUDIT_KEEP=DIR ...   also keeps each run's trace (fixtures for the CPU suite)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from arfuse.audit import audit  # noqa: E402

TARGETS = Path(__file__).resolve().parents[1] / "audit" / "hf_targets.py"
SLIDING = 512  # hf_targets.SLIDING_WINDOW
HAS_HF = importlib.util.find_spec("transformers") is not None


def _audit(name: str, tmp_path: Path):
    keep = os.environ.get("ARFUSE_GPU_AUDIT_KEEP")
    out = tmp_path / name
    report = audit(f"{TARGETS}:{name}", keep=out, timeout=800)
    if keep:
        dest = Path(keep) / name
        dest.mkdir(parents=True, exist_ok=True)
        for log in (out / "trace").glob("*.log"):
            shutil.copy(log, dest / log.name)
        shutil.copy(out / "run.json", dest / "run.json")
        (dest / "report.txt").write_text(report.render("text"))
    return report


@pytest.mark.parametrize(
    "name",
    [
        "llama_block",
        pytest.param("hf_llama", marks=pytest.mark.skipif(not HAS_HF, reason="needs transformers")),
    ],
)
def test_clean_models_pass_on_gpu(name, tmp_path):
    report = _audit(name, tmp_path)
    assert report.errors == []
    assert report.findings == [], report.render("text")
    assert report.exit_code == 0
    assert report.summary["compiles"] >= 1
    # Triton codegen added guards on num_tokens, and every one was judged harmless
    assert report.summary["dismissed_guards"] >= 1


@pytest.mark.skipif(not HAS_HF, reason="needs transformers")
def test_gemma3_sliding_window_is_found_at_the_mask_line(tmp_path):
    report = _audit("hf_gemma3", tmp_path)
    assert report.exit_code == 1
    # the deepest line torch records for the window: the cache's slice on torch 2.11 (CPU 2.13:
    # masking_utils.py), with the exact flip at the window
    (window,) = [f for f in report.findings if f.code == "ARF102"]
    assert Path(window.path).name in ("cache_utils.py", "masking_utils.py"), report.render("text")
    assert (
        f"{SLIDING - 1} -> {SLIDING}" in window.message
        or f"{SLIDING - 2} -> {SLIDING - 1}" in window.message
    ), window.message
    # nothing from the compiler itself: its guards are judged harmless or folded
    assert not [f for f in report.findings if f.code == "ARF106" or "_inductor" in f.path]
