"""Every pattern variant, at graph level on a real 2-rank gloo group.

For each variant: the post-grad graph before the pass has exactly one allreduce and one norm,
after it exactly one fused op and no allreduce or rsqrt; the compiled chain matches the eager
chain at 1, 5 and 33 tokens (fp32 1e-5, bf16/fp16 2e-2 relative L2, FP8 dequantized 4e-2),
and both ranks produce identical outputs.
"""

import itertools

import pytest
import torch

from arfuse.patterns.spec import NORM_FORMS, QUANT_FORMS, all_specs
from tests import dist_checks as dc

SPECS = [s.name for s in all_specs()]
DTYPE_CYCLE = ("bf16", "fp16", "fp32")
pytestmark = pytest.mark.timeout(300)


def _assert_fused(result, spec_name, norm_live=False):
    spec_fp8 = spec_name.endswith("/fp8")
    assert result["graphs"] >= 1
    assert result["matched"] == {spec_name: result["graphs"]}, result["skipped"]
    for before, after in zip(result["before"], result["after"], strict=False):
        assert dc.count_allreduces(before) == 1
        assert dc.count_fused(before) == 0
        assert dc.count_allreduces(after) == 0, after
        assert after.get("_c10d_functional.wait_tensor.default", 0) == 0
        assert dc.count_fused(after) == 1
        # FP8: the op that also writes the bf16 norm only where the graph reads that norm
        suffix = ("_fp8" if norm_live else "_quant_fp8") if spec_fp8 else ""
        assert after.get(f"arfuse.fused_allreduce_rmsnorm{suffix}.default") == 1, after
        assert after.get("aten.rsqrt.default", 0) == 0
        assert after.get("arfuse.rms_norm.default", 0) == 0
        assert after.get("aten.clamp_max.default", 0) == 0
    for tokens, errors in result["errors"].items():
        assert all(e <= result["tol"] for e in errors), (tokens, errors, result["tol"])
    assert set(result["errors"]) == {1, 5, 33}


def _assert_ranks_agree(results):
    for a, b in zip(results[0]["outputs"], results[1]["outputs"], strict=False):
        for x, y in zip(a, b, strict=False):
            assert torch.equal(x, y)


@pytest.mark.parametrize("index,spec_name", list(enumerate(SPECS)), ids=SPECS)
def test_every_variant_fuses_and_matches_eager(group2, index, spec_name):
    # dtype, 2-D/3-D and residual-output liveness rotate so all appear across the variants
    dtype = DTYPE_CYCLE[index % 3]
    three_d = (index // 3) % 2 == 1
    residual_live = (index // 2) % 2 == 0
    results = group2.run(dc.check_variant, spec_name, dtype, three_d, residual_live)
    _assert_fused(results[0], spec_name)
    _assert_ranks_agree(results)


@pytest.mark.parametrize(
    "spec_name,dtype,three_d,residual_live",
    [
        (s, d, t, r)
        for s, d, t, r in itertools.product(
            ["c10d/hf/ar+res/none", "c10d/rms_norm/res+ar/fp8"],
            DTYPE_CYCLE,
            [False, True],
            [False, True],
        )
    ],
)
def test_dtype_shape_liveness_matrix(group2, spec_name, dtype, three_d, residual_live):
    results = group2.run(dc.check_variant, spec_name, dtype, three_d, residual_live)
    _assert_fused(results[0], spec_name)
    _assert_ranks_agree(results)


@pytest.mark.parametrize(
    "spec_name,dtype,residual_live",
    [
        ("c10d/rms_norm/res+ar/fp8", "bf16", True),
        ("c10d/hf/none/fp8", "fp32", False),
        ("arfuse/custom_op/ar+res/fp8", "fp16", True),
    ],
)
def test_fp8_chain_whose_norm_is_read_keeps_the_norm_output(
    group2, spec_name, dtype, residual_live
):
    """A graph that reads the bf16 norm as well as its FP8 quant gets
    `fused_allreduce_rmsnorm_fp8` (which writes both); the usual graph, reading only the
    quant, gets `_quant_fp8` (above: every variant). Outputs match eager either way."""
    results = group2.run(dc.check_variant, spec_name, dtype, False, residual_live, norm_live=True)
    _assert_fused(results[0], spec_name, norm_live=True)
    assert len(results[0]["outputs"][0]) == 2 + residual_live
    _assert_ranks_agree(results)


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 3e-3])
def test_any_eps_is_carried_into_the_fused_op(group2, eps):
    results = group2.run(
        dc.check_variant, "c10d/rms_norm/ar+res/none", "fp32", False, True, eps=eps
    )
    _assert_fused(results[0], "c10d/rms_norm/ar+res/none")


@pytest.mark.parametrize(
    "index,norm,quant,use",
    [
        (i, n, q, u)
        for i, (n, q, u) in enumerate(
            itertools.product(NORM_FORMS, QUANT_FORMS, ["residual", "other"])
        )
    ],
)
def test_reduced_value_used_elsewhere_takes_the_residual_output(group2, index, norm, quant, use):
    """allreduce -> RMSNorm (-> FP8) whose reduced value lives on (HF's vocab-parallel
    embedding): fused without a residual, the other uses read the fused op's residual_out;
    as the residual of the next allreduce's add, that chain fuses too."""
    dtype = DTYPE_CYCLE[index % 3]
    r = group2.run(dc.check_reduced_value_kept, norm, quant, dtype, use)[0]
    first = f"c10d/{norm}/none/{quant}"
    expected = {first: 1} if use == "other" else {first: 1, f"c10d/{norm}/res+ar/none": 1}
    assert r["matched"] == {k: r["graphs"] for k in expected} and r["skipped"] == []
    chains = len(expected)
    norm_op = "arfuse.rms_norm.default" if norm == "custom_op" else "aten.rsqrt.default"
    fp8_op = "arfuse.fused_allreduce_rmsnorm_quant_fp8.default"  # the bf16 norm is not read
    for before, after in zip(r["before"], r["after"], strict=True):
        assert dc.count_allreduces(before) == chains and dc.count_fused(before) == 0
        assert before.get(norm_op) == chains
        assert after.get(fp8_op, 0) == (quant == "fp8")
        assert dc.count_fused(after) == chains and dc.count_allreduces(after) == 0
        assert after.get(norm_op, 0) == 0
        assert after.get("_c10d_functional.wait_tensor.default", 0) == 0
    # against the same function in float32: exact in fp32, rounding in bf16/fp16, e4m3 steps
    tol = dc.FP8_TOL if quant == "fp8" else dc.TOL[dc.DTYPES[dtype]]
    assert all(e <= tol for errs in r["errors"].values() for e in errs), r["errors"]
    assert set(r["errors"]) == {1, 5, 33}


@pytest.mark.parametrize("norm,dtype", [("gemma", "fp32"), ("gemma", "bf16"), ("hf", "fp16")])
def test_scaled_reduced_value_fuses_with_the_scale_on_the_partial_sums(group2, norm, dtype):
    """Gemma's embedding: allreduce -> * embed_scale (a 0-d input) -> RMSNorm, the scaled value
    also the next add's residual. The multiply moves onto each rank's input (it commutes with
    the sum up to rounding), so both chains fuse and no multiply is left after the collective."""
    r = group2.run(dc.check_reduced_value_kept, norm, "none", dtype, "residual", 7.9)[0]
    specs = (f"c10d/{norm}/none/none", f"c10d/{norm}/res+ar/none")
    assert r["matched"] == dict.fromkeys(specs, r["graphs"]) and r["skipped"] == []
    for before, after in zip(r["before"], r["after"], strict=True):
        assert before.get("aten.mul.Tensor", 0) - after.get("aten.mul.Tensor", 0) >= 1
        assert dc.count_fused(after) == 2 and dc.count_allreduces(after) == 0
    tol = dc.TOL[dc.DTYPES[dtype]]
    assert all(e <= tol for errs in r["errors"].values() for e in errs), r["errors"]
