"""The pass on whole models, its refusals, its cache key, and the fused ops' own checks."""

import warnings
from pathlib import Path

import pytest
import torch

import arfuse
from arfuse.config import FusionConfig
from tests import dist_checks as dc

pytestmark = pytest.mark.timeout(300)
FUSED = "arfuse.fused_allreduce_rmsnorm.default"


@pytest.mark.parametrize(
    "num_layers,dtype,norm,allreduce",
    [
        (3, "bf16", "hf", "c10d"),
        (1, "fp16", "gemma", "arfuse"),
        (2, "fp32", "custom_op", "c10d"),
        (2, "bf16", "rms_norm", "arfuse"),
    ],
)
def test_example_decoder_fuses_exactly_two_per_layer(group2, num_layers, dtype, norm, allreduce):
    r = group2.run(dc.check_decoder, num_layers, dtype, norm, allreduce)[0]
    assert len(r["after"]) >= 1
    for before, after in zip(r["before"], r["after"], strict=False):
        assert dc.count_allreduces(before) == 2 * num_layers
        assert after.get(FUSED) == 2 * num_layers
        assert dc.count_allreduces(after) == 0
        # only the first layer's input norm (no allreduce before it) stays unfused
        assert after.get("aten.rsqrt.default", 0) + after.get("arfuse.rms_norm.default", 0) == 1
    assert r["skipped"] == []
    tol = dc.TOL[dc.DTYPES[dtype]]
    assert all(e <= tol for e in r["errors"].values()), r["errors"]
    assert 1 in r["errors"]


def test_fused_ops_declare_input_as_their_only_mutable_argument():
    """Issue 24: `input` is `Tensor(a!)` in every fused overload (so functionalization and
    reinplacing apply); nothing else is written, and no output aliases an input."""
    for packet in (
        torch.ops.arfuse.fused_allreduce_rmsnorm,
        torch.ops.arfuse.fused_allreduce_rmsnorm_fp8,
        torch.ops.arfuse.fused_allreduce_rmsnorm_quant_fp8,
    ):
        for name in ("default", "eps_tensor"):
            schema = getattr(packet, name)._schema
            written = [a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write]
            assert written == ["input"], (packet, name, written)
            assert all(r.alias_info is None for r in schema.returns)


@pytest.mark.parametrize(
    "case,op_input,copies",
    [("dead", "aten.mm.default", 0), ("live", "aten.as_strided.default", 1)]
    + [("graph_input", "aten.as_strided.default", 1)],
)
def test_fused_op_sums_into_a_dead_input_and_copies_a_live_one(group2, case, op_input, copies):
    """Issue 24: the op's `input` is mutable, so Inductor's reinplacing (after the pass) gives
    it the matmul's own buffer when nothing reads it later - no copy, as for a plain
    all_reduce - and a copy when something does or when it is the caller's tensor."""
    r = group2.run(dc.check_input_buffer, case)[0]
    assert r["num_matches"] == 1
    assert (r["op_input"], r["copies"]) == (op_input, copies)
    assert r["caller_input_unchanged"]
    assert r["errors"] == [0.0] * len(r["errors"])


def test_graph_without_pattern_is_unchanged(group2):
    r = group2.run(dc.check_no_pattern)[0]
    assert r["before"] == r["after"]
    assert r["num_matches"] == 0 and r["skipped"] == []
    assert r["error"] == 0.0


@pytest.mark.parametrize(
    "which,node,why",
    [
        ("rsqrt", "rsqrt", "an intermediate value of the norm"),
        ("upcast", "convert_element_type", "an intermediate value of the norm"),
        # with a residual added, the fused op returns the sum, not the reduced value
        ("allreduce", "wait_tensor", "besides the residual add"),
    ],
)
def test_chain_with_extra_consumer_is_not_fused(group2, which, node, why):
    r = group2.run(dc.check_extra_consumer, which)[0]
    assert r["num_matches"] == 0
    assert dc.count_fused(r["after"]) == 0
    assert dc.count_allreduces(r["after"]) == 1
    # one reason text for every such chain (warned once), the escaping node recorded with it
    [(reason, escaping)] = r["skipped"]
    assert escaping == node and "used outside" in reason and why in reason
    assert r["errors"] == [0.0, 0.0]


@pytest.mark.parametrize(
    "case,reason",
    [
        ("world1", "world size 1"),
        ("hidden", "hidden size 12 is not a multiple of 8"),
        ("float64", "activation dtype torch.float64 is not supported"),
    ],
)
def test_unsupported_chains_are_skipped_with_one_warning(group2, case, reason):
    r = group2.run(dc.check_unsupported, case)[0]
    assert r["num_matches"] == 0
    assert [reason in s for s, _ in r["skipped"]] == [True]
    assert len(r["warnings"]) == 1 and reason in r["warnings"][0]
    assert r["errors"] == [0.0, 0.0]


def test_dtensor_tensor_parallel_hf_decoder(group2):
    results = group2.run(dc.check_dtensor)
    r = results[0]
    assert r["graphs"] == 1
    assert r["matched"] == {"c10d/hf/res+ar/none": 4}
    assert dc.count_allreduces(r["before"][0]) == 4
    assert r["after"][0].get(FUSED) == 4 and dc.count_allreduces(r["after"][0]) == 0
    assert all(e <= 2e-2 for e in r["errors"].values()), r["errors"]
    assert results[1]["errors"] == r["errors"]


def test_bad_op_inputs_raise_clear_errors(group2):
    r = group2.run(dc.check_bad_op_inputs)[0]
    expected = {
        "hidden": "weight shape (32,) does not match the hidden size 64",
        "residual_shape": "residual shape (2, 64) differs from input shape (4, 64)",
        "noncontiguous": "is not contiguous; call .contiguous() first",
        "group": "unknown process group name 'no-such-group'",
        "scale_shape": "needs a scale with exactly one element, got shape (64,)",
        "weight_dtype": "cast the weight to torch.bfloat16",
        "compiled_hidden": "weight shape (32,) does not match the hidden size 64",
    }
    for case, text in expected.items():
        assert r[case] is not None, f"{case}: no error raised"
        kind, message = r[case]
        assert text in message, (case, message)
        assert kind == "ValueError" or case == "compiled_hidden"


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-6), ("bf16", 8e-3), ("fp16", 1e-3)])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("residual,fp8", [(True, False), (False, False), (True, True)])
def test_fused_op_matches_float64_reference(group2, dtype, tol, tokens, residual, fp8):
    r0, r1 = group2.run(dc.check_fused_op_exact, dtype, tokens, residual, fp8)
    assert r0 == r1  # both ranks see the same reduced values
    assert r0["norm"] <= tol and r0["residual"] <= tol
    if fp8:
        assert r0["quant"] <= 5e-2  # e4m3 has 3 mantissa bits
        assert r0["dtypes"][2] == "torch.float8_e4m3fn"


def test_no_process_group_disables_the_pass():
    """In this (pytest) process torch.distributed is not initialised."""
    assert not torch.distributed.is_initialized()

    def fn(x, weight):
        return arfuse.ops.rms_norm(arfuse.ops.all_reduce(x, "0"), weight, 1e-6)

    fusion = arfuse.AllReduceFusionPass()
    from arfuse.testing.graphs import op_counts

    x, w = torch.randn(4, 64), torch.randn(64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _apply_on_traced(fn, x, w, fusion)
    assert fusion.num_matches == 0
    assert report["disabled"].startswith("torch.distributed is not initialized")
    assert op_counts(report["graph"])["arfuse.all_reduce.default"] == 1
    assert any("torch.distributed is not initialized" in str(w.message) for w in caught)


def _apply_on_traced(fn, x, w, fusion):
    """Trace to aten with make_fx (no Dynamo, so no real collective runs) and apply the pass."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, tracing_mode="fake")(x, w)
    report = fusion.apply(gm.graph)
    report["graph"] = gm
    return report


class TestCacheKey:
    def test_uuid_changes_with_config_and_is_stable(self):
        a, b = arfuse.AllReduceFusionPass(), arfuse.AllReduceFusionPass()
        assert a.uuid() == b.uuid()
        variants = [
            FusionConfig(norm=("hf",)),
            FusionConfig(quant=("none",)),
            FusionConfig(allreduce_ops=("vllm::all_reduce",)),
            FusionConfig(hidden_multiple=16),
            FusionConfig(norm_ops=("x::norm",)),
        ]
        keys = {arfuse.AllReduceFusionPass(c).uuid() for c in variants}
        assert len(keys) == len(variants) and a.uuid() not in keys

    def test_uuid_changes_with_code(self, tmp_path, monkeypatch):
        import arfuse.fusion as fusion_mod

        copies = []
        for src in fusion_mod._SOURCES:
            dst = tmp_path / src.replace("/", "_")
            dst.write_text(Path(src).read_text())
            copies.append(str(dst))
        monkeypatch.setattr(fusion_mod, "_SOURCES", tuple(copies))
        from torch._inductor.custom_graph_pass import get_hash_for_files

        get_hash_for_files.cache_clear()
        before = arfuse.AllReduceFusionPass().uuid()
        with open(copies[-1], "a") as f:
            f.write("\n# a change to the matcher\n")
        # the sources are hashed once per process (torch's lru_cache), not on every call ...
        assert arfuse.AllReduceFusionPass().uuid() == before
        get_hash_for_files.cache_clear()  # ... so a new process sees the change
        assert arfuse.AllReduceFusionPass().uuid() != before
        get_hash_for_files.cache_clear()  # the next test hashes the real sources again


class TestConfig:
    def test_defaults_enable_every_pattern(self):
        config = FusionConfig()
        assert all(config.enables(s) for s in arfuse.all_specs())

    @pytest.mark.parametrize(
        "kwargs,message",
        [
            ({"norm": ("layernorm",)}, "unknown norm form(s) ['layernorm']"),
            ({"allreduce_ops": ("all_reduce",)}, "write it as 'namespace::op_name'"),
            ({"hidden_multiple": 0}, "hidden_multiple must be >= 1"),
        ],
    )
    def test_bad_values_say_what_to_fix(self, kwargs, message):
        with pytest.raises(
            ValueError,
            match=r".*"
            + message.replace("(", r"\(")
            .replace(")", r"\)")
            .replace("[", r"\[")
            .replace("]", r"\]"),
        ):
            FusionConfig(**kwargs)


@pytest.mark.slow
def test_inductor_compile_and_fx_graph_cache_never_serves_another_config(group2, tmp_path):
    r = group2.run(dc.check_inductor_and_cache, str(tmp_path), timeout=420)[0]
    a, b, again = r["A"], r["B"], r["A again"]
    assert a["num_matches"] == 4 and a["misses"] >= 1 and a["hits"] == 0
    assert all(e <= 2e-2 for e in a["errors"].values()), a["errors"]
    # another config must compile afresh (a served graph would skip the pass entirely)
    assert b["hits"] == 0 and b["misses"] >= 1 and b["num_matches"] == 0
    assert b["uuid"] != a["uuid"]
    # the same config again is served from the cache, with the fused graph's exact outputs
    assert again["hits"] >= 1 and again["misses"] == 0 and again["uuid"] == a["uuid"]
    for t in (7, 64):
        assert torch.equal(again["outputs"][t], a["outputs"][t])


@pytest.mark.parametrize("limit,calls", [(None, {5: 4, 9: 4, 33: 4}), (8, {5: 4, 9: 0, 33: 0})])
def test_dynamic_true_fuses_every_chain(group2, limit, calls):
    """Issue 12: torch.compile(dynamic=True) makes the model's float eps a graph input; the
    pass fuses it with the eps_tensor overload instead of silently matching nothing. With a
    fusion limit (issue 24) each of the 4 chains is a branch Inductor compiles: the op runs up
    to 8 tokens, Inductor's own kernels above, in one graph."""
    r = group2.run(dc.check_dynamic_true, fused_max_tokens=limit, timeout=420)[0]
    assert r["num_matches"] == 4 and r["matched"] == {"c10d/hf/ar+res/none": 4}
    assert r["skipped"] == [] and r["warnings"] == []
    assert r["frames"] == 1  # one capture for 5, 9 and 33 tokens
    assert r["calls"] == calls
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]


def test_custom_norm_op_with_default_eps(group2):
    """Issue 14: a FusionConfig.norm_ops op called without eps crashed the matcher."""
    r = group2.run(dc.check_custom_norm_default_eps)[0]
    assert r["matched"] == {"c10d/custom_op/ar+res/none": 1} and r["skipped"] == []
    assert r["eps"] == [1e-6]
    assert all(e <= 1e-5 for e in r["errors"]), r["errors"]


def test_unrecognised_norm_is_skipped_with_a_reason(group2):
    r = group2.run(dc.check_unrecognised_norm)[0]
    assert r["num_matches"] == 0
    [(reason, node)] = r["skipped"]
    assert "RMSNorm-like computation in a form the pass does not match" in reason
    assert node == "wait_tensor"
    assert len(r["warnings"]) == 1 and reason in r["warnings"][0]
    assert all(e <= 1e-6 for e in r["errors"]), r["errors"]


def test_release_workspaces_only_touches_its_group(group2):
    r = group2.run(dc.check_release_workspaces_per_group)[0]
    # group 0's (already destroyed) workspace is forgotten; group 1's stays registered and live;
    # both planning sites stay cached with the workspace they hold
    assert r == {
        "released": 0,
        "remaining": [True],
        "other_live": True,
        "sites_kept": [True, True],
    }


def test_dynamic_true_graph_uses_the_eps_tensor_overload(group2):
    r = group2.run(dc.check_dynamic_true_graph)[0]
    assert [a.get("arfuse.fused_allreduce_rmsnorm.eps_tensor") for a in r["after"]] == [4]
    assert r["skipped"] == []
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]


def test_the_fused_op_runs_under_the_policy_of_the_pass_that_emitted_it(group2):
    """Issue 21: the pass writes its own FusionPolicy's digest into the op; the op's kernel
    dispatch receives exactly that digest and resolves it to the pass's policy object; a
    direct call of the op carries "" (the policy in force)."""
    r = group2.run(dc.check_policy_reaches_the_op)[0]
    first, second = r["passes"]
    assert first["digest"] != second["digest"]
    for row in (first, second):
        assert row["emitted"] == [row["digest"]]
        assert row["seen"] == [row["digest"]]
        assert row["resolves_to_pass_policy"] == [True]
    assert r["direct"] == [""] and r["direct_resolves_to_current"]


AR_INPLACE = "_c10d_functional.all_reduce_.default"
AR_FUNCTIONAL = "_c10d_functional.all_reduce.default"
QUANT = "arfuse.fused_allreduce_rmsnorm_quant_fp8.default"


@pytest.mark.parametrize(
    "args,op,allreduce,extra",
    [
        # the usual chain: the producer is dead after it, so the unfused branch sums in place
        (("c10d/rms_norm/ar+res/none", "bf16"), FUSED, AR_INPLACE, {}),
        # 3-D: the fused branch replays the view on its input
        (("c10d/hf/ar+res/none", "bf16", True), FUSED, AR_INPLACE, {"aten.view.default": 1}),
        # the producer is read after the chain: no summing into it on either side
        (
            ("c10d/rms_norm/ar+res/fp8", "bf16", True, True),
            QUANT,
            AR_FUNCTIONAL,
            {"aten.view.default": 1, "aten.clone.default": 1},
        ),
        (
            ("c10d/rms_norm/ar+res/fp8", "bf16", False, False, True),
            dc.FUSED_TARGETS[1],
            AR_INPLACE,
            {},
        ),
        (("custom/hf/res+ar/none", "fp32"), FUSED, "arfuse_test.all_reduce.default", {}),
        (("arfuse/gemma/none/none", "fp16"), FUSED, "arfuse.all_reduce.default", {}),
    ],
)
def test_bare_pass_with_a_limit_branches_on_the_token_count(group2, args, op, allreduce, extra):
    """With a fusion limit (16 tokens here) and a dynamic token count, the pass emits
    cond(tokens <= 16, the op, the chain as it was): the op runs at 5 tokens, plain Inductor's
    chain at 33 (the op is not called), and a static size-1 graph gets the op alone."""
    r = group2.run(dc.check_token_branch, *args)[0]
    dynamic, static = r["graphs"][0], r["graphs"][1]
    assert dynamic["main"]["cond"] == 1
    assert dc.count_fused(dynamic["main"]) == dc.count_allreduces(dynamic["main"]) == 0
    fused_branch = {k: v for k, v in dynamic["arfuse_fused"].items() if "getitem" not in k}
    assert fused_branch == {op: 1, **extra}
    unfused = dynamic["arfuse_unfused"]
    assert unfused[allreduce] == 1 and dc.count_allreduces(unfused) == 1
    assert dc.count_fused(unfused) == 0
    assert "cond" not in static["main"] and static["main"][op] == 1
    assert r["calls"] == {5: 1, 33: 0, 1: 1}
    assert r["caller_unchanged"] and r["skipped"] == [] and r["num_matches"] == 2
    assert all(e <= r["tol"] for errs in r["errors"].values() for e in errs), r["errors"]


def test_bare_pass_leaves_static_sizes_above_the_limit_to_inductor(group2):
    """Static shapes: a size above the limit compiles plain Inductor's chain (reported under
    `by_range`), one at or below it the op alone; no branch either way."""
    r = group2.run(dc.check_token_branch, tokens=(5, 33), dynamic=False)[0]
    below, above = r["graphs"][0]["main"], r["graphs"][1]["main"]
    assert below.get(FUSED) == 1 and "cond" not in below
    assert dc.count_fused(above) == 0 and above[AR_INPLACE] == 1 and "cond" not in above
    assert r["calls"] == {5: 1, 33: 0}
    ((reason, _),) = r["by_range"]
    assert reason == (
        "num_tokens 33 lies above the fusion threshold (16 tokens): "
        "the unfused path is faster there"
    )
    assert all(e <= r["tol"] for errs in r["errors"].values() for e in errs), r["errors"]


@pytest.mark.parametrize("why", [{"cudagraphs": True}, {"token_branch": False}])
def test_bare_pass_under_inductor_cuda_graphs_or_asked_not_to_branch_emits_the_op_alone(
    group2, why
):
    """Inductor does not CUDA-graph a compiled cond: under mode="reduce-overhead" the op is
    emitted alone, and decides unfused above the limit inside; so it is with
    FusionConfig(token_branch=False)."""
    r = group2.run(dc.check_token_branch, tokens=(5, 33), **why)[0]
    main = r["graphs"][0]["main"]
    assert "cond" not in main and main[FUSED] == 1 and dc.count_allreduces(main) == 0
    assert r["calls"] == {5: 1, 33: 1}


@pytest.mark.parametrize("form", ["rms_norm", "gemma"])
def test_fp8_of_a_float32_norm_fuses_as_the_quant_only_op(group2, form):
    """torch 2.11's Inductor drops the norm's f32 -> bf16 -> f32 round trip before an FP8
    quant, so `F.rms_norm -> quant` reached the pass as a float32 norm quantized directly, and
    the pass did not fuse it (found by `arfuse bench --local-work` on the H200, 2026-12-04).
    That graph fuses as the quant-only op: the bf16 norm is never produced."""
    r = group2.run(dc.check_fp8_of_float32_norm, form)[0]
    assert r["skipped"] == [] and r["matched"] == {f"c10d/{form}/ar+res/fp8": 1}
    (after,) = r["after"]
    assert after[QUANT] == 1 and dc.count_allreduces(after) == 0
    assert "aten.rsqrt.default" not in after
    assert all(e <= dc.FP8_TOL for errs in r["errors"].values() for e in errs), r["errors"]
