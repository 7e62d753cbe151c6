"""Compile ranges: one capture, one Inductor compile per num_tokens range, fusion per range."""

import re

import pytest

from arfuse.ranges import TokenRange, ranges_from_splits
from tests import dist_checks as dc

pytestmark = pytest.mark.timeout(400)


def test_ranges_from_splits():
    assert ranges_from_splits([2048, 128, 128]) == [
        TokenRange(1, 128),
        TokenRange(129, 2048),
        TokenRange(2049, None),
    ]
    assert ranges_from_splits([]) == [TokenRange(1, None)]
    assert str(TokenRange(2049, None)) == "[2049, inf]"
    with pytest.raises(ValueError, match="split points must be >= 1"):
        ranges_from_splits([0, 5])


def test_every_boundary_dispatches_to_its_range_and_fuses_only_below_the_threshold(group2):
    tokens = (7, 8, 9, 63, 64, 65, 2)
    r = group2.run(dc.check_compile_ranges, [8, 64], 8, tokens)[0]
    assert "error" not in r, r.get("error")
    assert r["captures"] == 1
    assert r["ranges"] == ["[1, 8]", "[9, 64]", "[65, inf]"]
    by_range = {c["range"]: c for c in r["compiles"]}
    assert len(r["compiles"]) == 3  # at capture (lazy=False), each range exactly once
    assert by_range["[1, 8]"]["fused"] == 2 and by_range["[1, 8]"]["skipped"] == []
    # every range compiles with its bounds, and for an example size inside them: the
    # capture's (7) where the range holds it, else the nearest size the range holds
    assert all(c["bounds_applied"] for c in r["compiles"])
    assert {c["range"]: c["hint"] for c in r["compiles"]} == {
        "[1, 8]": 7,
        "[9, 64]": 9,
        "[65, inf]": 65,
    }
    # Inductor's view lowering asks `num_tokens > 1` where the range holds 1 (a guard that 1
    # token fails: its call is captured again, see the next test); elsewhere the bounds decide
    added = {c["range"]: c["guards_added"] for c in r["compiles"]}
    assert added["[9, 64]"] == added["[65, inf]"] == []
    assert all(re.fullmatch(r"s\d+ (>= 2|> 1)", g) for g in added["[1, 8]"]), added
    for above in ("[9, 64]", "[65, inf]"):
        assert by_range[above]["fused"] == 0 and by_range[above]["skipped"] == []
        assert len(by_range[above]["left_to_inductor"]) == 2
        assert all(
            "lies above the fusion threshold (8 tokens)" in s
            for s in by_range[above]["left_to_inductor"]
        )
    assert set(r["errors"]) == set(tokens)
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]


def test_one_token_after_a_larger_capture_gets_its_own_static_capture(group2):
    """The example's attention (and Inductor's view lowering) guard `num_tokens != 1`: a
    1-token call after a capture at 7 makes Dynamo capture again, specialised to 1 token; that
    capture is compiled as the single range [1, 1] (with a warning), not rejected."""
    r = group2.run(dc.check_compile_ranges, [8, 64], 8, (7, 1, 2, 1, 9))[0]
    assert "error" not in r, r.get("error")
    assert r["captures"] == 2
    assert [c["range"] for c in r["compiles"]] == ["[1, 8]", "[9, 64]", "[65, inf]", "[1, 1]"]
    assert r["compiles"][-1]["fused"] == 2  # 1 token is below the threshold: fused
    assert all(e <= 1e-5 for e in r["errors"].values()), r["errors"]


def test_a_range_straddling_the_threshold_is_a_build_error(group2):
    r = group2.run(dc.check_compile_ranges, [16], 8, (4,))[0]
    assert "straddles the fusion threshold at 8 tokens" in r["error"]
    assert "add 8 to the split points" in r["error"]


def test_bad_arguments():
    import torch

    import arfuse

    with pytest.raises(ValueError, match="give 'auto' or a list of split points"):
        arfuse.compile(torch.nn.Linear(2, 2), ranges="some")
    with pytest.raises(ValueError, match="sets the backend itself"):
        arfuse.compile(torch.nn.Linear(2, 2), ranges=[4], backend="eager")
    with pytest.raises(ValueError, match="installs the fusion pass itself"):
        arfuse.compile(torch.nn.Linear(2, 2), options={"post_grad_custom_post_pass": None})


def test_audit_of_compile_ranges_sees_one_capture_no_guard_and_fusion_per_range():
    """audit/targets.py:tp_decoder_ranges: splits 64 and 1024, fusion threshold 64, swept
    across every split point +-1, audited by the real auditor in a fresh process."""
    from pathlib import Path

    from arfuse.audit import audit

    target = Path(__file__).parents[1] / "audit" / "targets.py"
    report = audit(f"{target}:tp_decoder_ranges", timeout=300)
    s = report.summary
    assert (s["compiles"], s["recompiles"], s["failed_calls"]) == (1, 0, 0)
    assert {63, 64, 65, 1023, 1024, 1025} <= set(s["sizes"])
    assert [f.code for f in report.findings] == []
    assert s["fusion"]["ranges"] == [
        {"range": [1, 64], "fused": 4, "left_to_inductor": 0},
        {"range": [65, 1024], "fused": 0, "left_to_inductor": 4},
        {"range": [1025, None], "fused": 0, "left_to_inductor": 4},
    ]


def _symbolic_tokens():
    """A fake [num_tokens, 8] input whose num_tokens is a fresh symbol (hint 2)."""
    import torch
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    env = ShapeEnv()
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    x = FakeTensorMode(shape_env=env).from_tensor(
        torch.empty(2, 8), symbolic_context=context, source=ConstantSource("x")
    )
    return env, x, x.shape[0].node.expr


def test_narrowed_bounds_neither_leak_into_the_next_range_nor_hide_behind_cached_answers():
    """The ShapeEnv caches static evaluations; a range's bounds must reach its compile and
    must not outlive it (a stale `s0 <= 256` made Inductor emit wrong code for [257, 1025]
    on 4x H200)."""
    import sympy

    from arfuse.ranges import _narrowed

    env, x, s0 = _symbolic_tokens()
    at_most_256 = sympy.Le(s0, 256)
    assert env._maybe_evaluate_static(at_most_256) is None  # cached: unknown
    with _narrowed([x], s0, TokenRange(1, 256)) as n:
        assert n.applied
        assert env._maybe_evaluate_static(at_most_256) == sympy.true
    assert env._maybe_evaluate_static(at_most_256) is None  # no leak into [257, ...]
    assert str(env.var_to_range[s0]) == "VR[2, int_oo]"


def test_a_range_without_the_capture_size_compiles_for_its_nearest_size():
    import sympy

    from arfuse.ranges import _narrowed

    env, x, s0 = _symbolic_tokens()  # hint 2
    hints = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
    with _narrowed([x], s0, TokenRange(257, 1025)) as n:
        assert n.applied and n.moved_hint == 257 and hints[s0] == 257
        assert str(env.var_to_range[s0]) == "VR[257, 1025]"
        assert env._maybe_evaluate_static(sympy.Gt(s0, 256)) == sympy.true
        assert x.shape[0] > 256  # no guard needed
    assert hints[s0] == 2 and str(env.var_to_range[s0]) == "VR[2, int_oo]"
    assert env._maybe_evaluate_static(sympy.Gt(s0, 256)) is None
    with _narrowed([x], s0, TokenRange(1, 1)) as n:  # below what env knows
        assert not n.applied and hints[s0] == 2
    assert env.guards == []


class _KeywordModel:
    """Stands in for an HF model's call signature (no compile happens: marking fails first)."""

    def __call__(self, input_ids=None, attention_mask=None, foo=None):
        raise AssertionError("not reached")


def test_token_arg_errors_name_the_argument():
    import torch

    import arfuse

    ids = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"token dim 2 of input_ids is out of range for its "
        r"shape \(1, 5\)",
    ):
        arfuse.compile(_KeywordModel(), token_dims={"input_ids": 2})(input_ids=ids)
    with pytest.raises(
        ValueError,
        match=r"token_dims names \['ids'\], which this call does not "
        r"pass",
    ):
        arfuse.compile(_KeywordModel(), token_dims={"ids": 1})(input_ids=ids)
    with pytest.raises(
        ValueError,
        match=r"cannot tell which argument carries num_tokens; "
        r"tensor arguments of this call: \{'foo': \(1, 5\)\}",
    ):
        arfuse.compile(_KeywordModel())(foo=ids)
    with pytest.raises(ValueError, match="drop dynamic=False"):
        arfuse.compile(_KeywordModel(), dynamic=False)


def test_token_dims_of_a_call():
    """Which dims get marked and which argument is the range key, by name and position."""
    import torch

    from arfuse.tokens import TokenArg, mark_token_dims

    def hf(
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache_position=None,
        inputs_embeds=None,
    ):
        pass

    def marks(t):
        return sorted(getattr(t, "_dynamo_weak_dynamic_indices", set()))

    ids, mask, pos = (torch.zeros(2, 5, dtype=torch.long) for _ in range(3))
    cache, mask4 = torch.arange(5), torch.zeros(2, 1, 5, 5)
    key = mark_token_dims(
        hf, (ids,), {"attention_mask": mask, "position_ids": pos, "cache_position": cache}, None
    )
    assert key == TokenArg("input_ids", 0, 1)
    assert [marks(t) for t in (ids, mask, pos, cache)] == [[1], [1], [1], [0]]
    assert mark_token_dims(
        hf, (), {"attention_mask": mask4, "inputs_embeds": torch.zeros(2, 5, 8)}, None
    ) == TokenArg("inputs_embeds", 4, 1)
    assert marks(mask4) == [2, 3]
    # a plain [num_tokens, hidden] model: positional dim 0, as before
    x = torch.zeros(5, 8)
    assert mark_token_dims(lambda x, w: None, (x, torch.zeros(8)), {}, None) == TokenArg("x", 0, 0)
    # a positional index names the parameter however it is passed (issue 12's token_dims={0: 1})
    ids2 = torch.zeros(1, 5, dtype=torch.long)
    assert mark_token_dims(hf, (), {"input_ids": ids2}, {0: 1}) == TokenArg("input_ids", 0, 1)
    assert marks(ids2) == [1]
    # named by the caller wins over the HF default
    e = torch.zeros(1, 5, 8)
    assert mark_token_dims(hf, (), {"inputs_embeds": e}, {"inputs_embeds": 1}).dim == 1
