"""Guard expression classes and frame attribution, unit level."""

import pytest

from arfuse.audit.judge.attribution import attribute, is_framework
from arfuse.audit.judge.guards import GuardClass, classify
from arfuse.audit.trace.records import Frame

T = {"s77", "s80"}


@pytest.mark.parametrize(
    "expr,cls",
    [
        ("s77 <= 2048", GuardClass.RANGE),
        ("2048 < s77", GuardClass.RANGE),
        ("(s77 >= 0) & (s77 <= 100)", GuardClass.RANGE),
        ("Eq(Mod(s77, 4), 0)", GuardClass.DIVISIBILITY),
        ("Ne(Mod(64*s77, 256), 0)", GuardClass.DIVISIBILITY),
        ("Eq(s77, 16)", GuardClass.PIN),
        ("Ne(s77, 16)", GuardClass.PIN),
        ("Eq(IntTrueDiv(s77, 64), 0.25)", GuardClass.PIN),
        ("s77 >= 2", GuardClass.FRAMEWORK),
        ("2 <= s77", GuardClass.FRAMEWORK),
        ("Ne(s77, 1)", GuardClass.FRAMEWORK),
        ("Ne((s77//4), 0)", GuardClass.FRAMEWORK),
        ("8*((s77//4)) >= 2", GuardClass.FRAMEWORK),
        ("Eq(s77, s80)", GuardClass.RELATION),
        ("s27 <= 64", None),
        ("Eq(s27, 64)", None),
    ],
)
def test_classify(expr, cls):
    assert classify(expr, T) is cls


def test_framework_paths():
    assert is_framework("/x/site-packages/torch/_dynamo/convert_frame.py")
    assert is_framework("<eval_with_key>.3")
    assert is_framework("/usr/lib/python3.11/contextlib.py")
    assert not is_framework("/home/me/model.py")
    assert not is_framework("/x/site-packages/vllm/model.py")


def _f(path, line):
    return Frame(path, line, "fn")


TORCH = "/v/site-packages/torch/_dynamo/eval_frame.py"
IND = "/v/site-packages/torch/_inductor/codegen/cpp.py"
SIZEVARS = "/v/site-packages/torch/_inductor/sizevars.py"


def test_attribute_prefers_code_that_ran_inside_the_compiler():
    stack = (_f("/m/run.py", 5), _f(TORCH, 1), _f("/m/ops.py", 9), _f(TORCH, 2))
    a = attribute((_f("/m/model.py", 3),), stack)
    assert (a.decision.filename, a.decision.line, a.by) == ("/m/ops.py", 9, "user")
    assert [f.line for f in a.frames] == [9, 3]  # then the model call site


def test_attribute_dynamo_traced_line_from_user_stack():
    a = attribute((_f("/m/model.py", 3),), (_f("/m/run.py", 5), _f(TORCH, 1)))
    assert (a.decision.filename, a.decision.line) == ("/m/model.py", 3)


def test_attribute_compiler_added_guard_points_into_inductor():
    a = attribute(None, (_f("/m/run.py", 5), _f(TORCH, 1), _f(IND, 2273), _f(SIZEVARS, 7)))
    assert (a.decision.filename, a.decision.line, a.by) == (IND, 2273, "compiler")


def test_sweep_order_thresholds_and_table_hook():
    import torch

    from arfuse import thresholds
    from arfuse.audit import AuditTarget
    from arfuse.audit.live.sizes import sweep, table_provider

    t = AuditTarget(
        model=torch.nn.Identity(),
        make_inputs=lambda n: torch.randn(n, 8),
        sizes=[1, 16, 2048],
        thresholds=[100],
    )
    assert sweep(t) == [16, 99, 100, 101, 2048, 1]  # first call >= 2, ascending, 0/1 last
    assert table_provider(t) == ()  # no hidden: the table is not consulted
    t.hidden, t.world_size, t.dtype = 4096, 4, torch.bfloat16
    limits = thresholds.lookup("sm90", 4, torch.bfloat16, 4096)
    got = set(table_provider(t))
    assert {limits.oneshot_max_tokens, limits.fused_max_tokens} <= got
    assert {limits.fused_max_tokens - 1, limits.fused_max_tokens + 1} <= set(sweep(t))


def test_attribute_ignores_callers_under_a_test_runner():
    # pytest frames are library frames before the caller: the test function that called the
    # audit is still the caller, not a decision inside the compiler
    stack = (
        _f("/v/site-packages/_pytest/python.py", 1),
        _f("/m/test_x.py", 33),
        _f("/v/site-packages/arfuse/audit/live/worker.py", 5),
        _f(TORCH, 1),
        _f(TORCH, 2),
    )
    a = attribute((_f("/m/model.py", 20),), stack)
    assert (a.decision.filename, a.decision.line) == ("/m/model.py", 20)
