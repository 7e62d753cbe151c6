"""Triton-codegen guards on every CPU run: traces the GPU test (`pytest -m gpu
tests/gpu/test_audit_gpu.py`, ARFUSE_GPU_AUDIT_KEEP) recorded on an H200 with torch 2.11, audited
offline. Each tarball is a --keep run: trace.log + run.json (bf16, tests/audit/hf_targets.py)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from arfuse.audit.cli import audit as audit_cmd

DATA = Path(__file__).resolve().parent / "data" / "gpu-torch-2.11.0"


def _audit(name, *args):
    res = CliRunner().invoke(
        audit_cmd,
        ["--trace", str(DATA / f"{name}.tar.gz"), "--format", "json", "--no-progress", *args],
    )
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.stdout)


def _key(report):
    return sorted((f["code"], f["path"], f["line"]) for f in report["findings"])


@pytest.mark.parametrize("name", ["llama_block", "hf_llama"])
def test_clean_models_pass_although_triton_codegen_guards_num_tokens(name):
    code, report = _audit(name)
    assert (code, report["findings"]) == (0, [])
    dismissed = report["summary"]["dismissed"]
    assert any(
        d["path"].endswith("_inductor/codegen/simd.py") and "2147483647" in d["expr"]
        for d in dismissed
    ), dismissed  # can_use_32bit_indexing: far outside the domain
    assert all("always holds" in d["reason"] or "folded" in d["reason"] for d in dismissed)


def test_64_bit_indexing_switch_inside_the_domain_has_its_own_code():
    # the same block with 3-D SDPA inputs: Inductor materialises [4, n, n] scores
    code, report = _audit("llama_block_3d_sdpa")
    (f,) = report["findings"]
    # shown at the model's compiled frame (the block's forward), Inductor's line related
    assert (code, f["code"], Path(f["path"]).name) == (1, "ARF106", "llama_block.py")
    assert f["frames"][1]["path"] == "torch/_inductor/codegen/simd.py"
    assert f["message"] == (
        "[compiler] Inductor switches to 64-bit indexing above 23,170 tokens: one recompile there"
    )
    assert _audit("llama_block_3d_sdpa", "--max-tokens", "16384")[0] == 0  # outside: silent


def test_hf_causal_mask_switches_to_64_bit_indexing_past_46340_tokens():
    code, report = _audit("hf_llama", "--max-tokens", "65536")
    assert code == 1
    assert {f["code"] for f in report["findings"]} == {"ARF106"}
    assert any("above 46,340 tokens" in f["message"] for f in report["findings"])


def test_gemma3_sliding_window_found_at_the_cache_slice_and_nothing_from_the_compiler():
    code, report = _audit("hf_gemma3")
    assert code == 1
    assert _key(report) == [
        ("ARF102", "transformers/cache_utils.py", 255),
        ("ARF104", "transformers/cache_utils.py", 255),
    ]
    (window,) = [f for f in report["findings"] if f["code"] == "ARF102"]
    assert "[2, 510] and [512, 32,768]: recompiles at 510 -> 511, 511 -> 512" in window["message"]


def test_verbose_text_lists_each_harmless_guard_with_its_reason():
    res = CliRunner().invoke(
        audit_cmd, ["--trace", str(DATA / "hf_llama.tar.gz"), "-v", "--no-progress"]
    )
    assert res.exit_code == 0
    listed = [x for x in res.output.splitlines() if "always holds for num_tokens" in x]
    assert len(listed) == 6 and any("codegen/simd.py" in x for x in listed), res.output
    assert "PASS: num_tokens stays dynamic over num_tokens in [1, 32,768]" in res.output
