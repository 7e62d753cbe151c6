"""The auditor on real Hugging Face models on the CPU (torch 2.13): Dynamo's guards through HF's
masking and cache code (aot_eager keeps it fast; the Inductor/Triton side is covered by the GPU
traces in test_gpu_traces.py)."""

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(600)

from arfuse.audit import audit  # noqa: E402
from tests.audit import hf_targets  # noqa: E402


def _audit(build):
    target = build()
    target.compile_kwargs = {"backend": "aot_eager"}
    return audit(target)


def test_tiny_hf_llama_is_clean():
    report = _audit(hf_targets.hf_llama)
    assert report.findings == [] and report.exit_code == 0
    assert report.summary["compiles"] == 1 and report.summary["recompiles"] == 0


def test_tiny_gemma3_sliding_window_found_in_masking_utils():
    report = _audit(hf_targets.hf_gemma3)
    assert report.exit_code == 1
    lines = {(f.code, Path(f.path).name) for f in report.findings}
    assert ("ARF102", "masking_utils.py") in lines, report.render("text")
    (mask,) = [
        f for f in report.findings if f.code == "ARF102" and f.path.endswith("masking_utils.py")
    ]
    window = hf_targets.SLIDING_WINDOW
    assert f"recompiles at {window - 1:,} -> {window:,}" in mask.message, mask.message
    assert not [f for f in report.findings if f.code == "ARF106" or "torch/" in f.path]
