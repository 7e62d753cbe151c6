"""Hugging Face models as people run them: tiny Llama, Qwen3, Gemma 3 and Mistral configs
under DTensor tensor parallelism on the session's 2-rank gloo group (issue 12)."""

import re

import pytest

from tests import dist_checks as dc

pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(600)

FUSED = "arfuse.fused_allreduce_rmsnorm.default"


@pytest.mark.parametrize(
    "name,dtype,spec",
    [
        ("llama", "fp32", "c10d/hf/res+ar/none"),
        ("qwen3", "fp32", "c10d/hf/res+ar/none"),
        ("mistral", "fp32", "c10d/hf/res+ar/none"),
        # Gemma 3 norms the attention/MLP output before the residual add (post-norms)
        ("gemma3", "fp32", "c10d/gemma/none/none"),
        ("llama", "bf16", "c10d/hf/res+ar/none"),
    ],
)
def test_tp_model_is_fully_fused_and_exact(group2, name, dtype, spec):
    r0, r1 = group2.run(dc.check_hf_fused, name, dtype)
    assert r0["graphs"] == 1 and r0["skipped"] == []
    # two layers, two row-parallel allreduces each: every one fused
    assert r0["matched"] == {spec: 4}
    assert dc.count_allreduces(r0["before"][0]) == 4
    assert r0["after"][0].get(FUSED) == 4 and dc.count_allreduces(r0["after"][0]) == 0
    tol = 1e-5 if dtype == "fp32" else 2e-2
    assert all(e <= tol for e in r0["errors"].values()), r0["errors"]
    assert r1["errors"] == r0["errors"]


def test_arfuse_compile_takes_keyword_calls_with_one_capture_across_ranges(group2):
    """dynamic=None: input_ids/attention_mask [1, seq] marked by name, one capture for every
    size and range; a new batch size captures once more, with num_tokens = batch * seq."""
    calls = ((1, 3), (1, 9), (1, 17), (2, 5))
    r = group2.run(dc.check_hf_compile, "none", calls, timeout=600)[0]
    assert r["token_arg"] == "input_ids"
    assert r["captures"] == [1, 1, 1, 2]
    assert r["warnings"] == []
    first = r["compiles"][:2]
    assert [(c["range"], c["fused"], c["left"]) for c in first] == [
        ("[1, 8]", 2, 0),
        ("[9, inf]", 0, 2),
    ]
    assert all(c["bounds_applied"] and c["guards_added"] == [] for c in first)
    # the batch-2 capture has batch dynamic too: num_tokens = batch * seq, two symbols, so its
    # ranges dispatch and fuse by rows but compile without narrowed bounds
    second = r["compiles"][2:]
    assert [(c["range"], c["fused"]) for c in second] == [("[1, 8]", 2), ("[9, inf]", 0)]
    assert all(
        re.fullmatch(r"s\d+\*s\d+", c["tokens"]) and not c["bounds_applied"] for c in second
    ), second
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]


@pytest.mark.parametrize("mode", ["true", "mark"])
def test_arfuse_compile_with_dynamic_true_or_the_callers_mark_dynamic(group2, mode):
    """dynamic=True and the caller's own mark_dynamic(input_ids, 1): one capture, fused below
    the threshold (lazy=True: only the range used compiles)."""
    r = group2.run(dc.check_hf_compile, mode, ((1, 3), (1, 6)), timeout=600)[0]
    assert r["captures"] == [1, 1]
    assert [(c["range"], c["fused"], c["skipped"]) for c in r["compiles"]] == [("[1, 8]", 2, [])]
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]


def test_ranges_auto_finds_the_dtensor_allreduce(group2):
    """ranges='auto' sizes its split points from the first allreduce in Dynamo's graph; under
    DTensor TP that is RowwiseParallel's Partial -> Replicate redistribute."""
    r = group2.run(dc.check_hf_allreduce_in_dynamo_graph)[0]
    assert r == {"shape": [64], "dtype": "torch.float32", "group": r["group"], "world": 2}


@pytest.mark.parametrize(
    "name,spec",
    [
        ("llama", "c10d/hf/res+ar/none"),
        ("qwen3", "c10d/hf/res+ar/none"),
        ("mistral", "c10d/hf/res+ar/none"),
        ("gemma3", "c10d/gemma/none/none"),
    ],
)
def test_bare_pass_branch_on_a_tp_model_called_as_users_call_it(group2, name, spec):
    """Issue 24: compiled by Inductor with the bare pass and a fusion limit of 8 tokens, each
    of the 4 chains is a run-time branch: the op runs at 3 and 5 tokens, plain Inductor's chain
    at 12 (the op is not called), one graph for all three, outputs as eager (float32)."""
    r = group2.run(dc.check_hf_branch, name, timeout=420)[0]
    assert r["matched"] == {spec: 4} and r["skipped"] == []
    assert r["calls"] == {5: 4, 12: 0, 3: 4}
    assert r["frames"] == 1
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]
