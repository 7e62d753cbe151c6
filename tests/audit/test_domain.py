"""Guards judged exactly over the token domain (no torch, no eval)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arfuse.audit.judge.domain import TokenDomain
from arfuse.audit.judge.truth import judge, truth
from arfuse.audit.options import DEFAULT_MAX_TOKENS

D = TokenDomain()
T = {"s0", "s77"}


@pytest.mark.parametrize(
    "expr,shape,text",
    [
        (
            "-s0 > -4095",
            "interval",
            "valid for num_tokens in [2, 4,094]; recompiles at 4,094 -> 4,095",
        ),
        ("Ne(s0, 8)", "except", "valid for every num_tokens except 8"),
        (
            "Eq(CeilToInt(IntTrueDiv(s0, 64)), 1)",
            "interval",
            "valid for num_tokens in [2, 64]; recompiles at 64 -> 65",
        ),
        ("Eq(s77, 16)", "point", "valid for num_tokens=16 only"),
        (
            "Eq(Mod(s77, 4), 0)",
            "periodic",
            "valid only for num_tokens % 4 in {0}: every other remainder recompiles",
        ),
        (
            "Ne(Mod(64*s77, 256), 0)",
            "periodic",
            "valid only for num_tokens % 4 in {1, 2, 3}: every other remainder recompiles",
        ),
    ],
)
def test_verdicts(expr, shape, text):
    v = judge(expr, T | {"s1"}, D)
    assert (v.shape, v.describe()) == (shape, text)


@pytest.mark.parametrize(
    "expr",
    [
        "s0 <= 8*(((s0 + 7)//8))",
        "64*s77 <= 2147483647",
        "s77*(s77 - (Mod(s77, 8)) + 8) >= 2",
        "s77*Max(1, s77 - (Mod(s77, 8)) + 8) > 1",
        "(s1 >= 0) & (s1 <= s0)",
        "s77 >= 2",
        "Ne(s77, 1)",
        "s77 < int_oo",
    ],
)
def test_guards_that_hold_over_the_whole_domain(expr):
    v = judge(expr, T | {"s1"}, D)
    assert (v.shape, v.describe()) == ("always", "always holds for num_tokens in [1, 32,768]")


def test_int32_indexing_bound_flips_inside_a_large_domain_only():
    assert judge("128256*s0 <= 2147483647", T, D).flips == (16743,)
    big = TokenDomain(1, 1 << 26)
    assert judge("64*s0 <= 2147483647", T, big).flips == (33554431,)
    assert judge("64*s0 <= 2147483647", T, TokenDomain(1, 33554431)).shape == "always"


def test_products_past_int64_are_exact():
    v = judge("s0*s0*s0*s0*s0 <= 9223372036854775807", T, TokenDomain(1, 10000))
    assert v.flips == (6208,)  # 6208**5 < 2**63 <= 6209**5


def test_other_symbols_take_their_compile_values_and_unknown_ones_are_unjudgeable():
    assert judge("s0 <= s2", T, D, {"s2": 300}).flips == (300,)
    v = judge("s0 <= s2", T, D)
    assert v.shape == "unknown" and "s2" in v.reason


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "s0.__class__",
        "lambda: 1",
        "[s0 for s0 in ()]",
        "s0 <= ",
        "open('x')",
    ],
)
def test_hostile_or_broken_expressions_are_never_evaluated(expr):
    assert judge(expr, T, D).shape == "unknown"


def test_domain_limits_and_errors():
    assert TokenDomain().hi == DEFAULT_MAX_TOKENS == 32768
    assert judge("s0 <= 4096", T, TokenDomain(1, 4096)).shape == "always"
    assert judge("s0 >= 256", T, TokenDomain(256, 8192)).shape == "always"
    with pytest.raises(ValueError, match="max_tokens .* is below min_tokens"):
        TokenDomain(100, 10)
    with pytest.raises(ValueError, match="positive whole number"):
        TokenDomain(0, 10)
    with pytest.raises(ValueError, match="largest domain"):
        TokenDomain(1, 1 << 30)


@settings(max_examples=60, deadline=None)
@given(
    a=st.integers(1, 64),
    b=st.integers(-5000, 70000),
    op=st.sampled_from(["<=", "<", ">=", ">", "==", "!="]),
    shape=st.sampled_from(["{a}*s0", "(s0 + {a})//{a}", "Mod(s0, {a})", "Max({a}, s0)"]),
)
def test_vectorised_truth_equals_pointwise_python(a, b, op, shape):
    """Against a plain Python evaluation at every count of a small domain."""
    lhs = shape.format(a=a)
    expr = f"{lhs} {op} {b}"
    dom = TokenDomain(1, 3000)
    holds, first = truth(expr, {"s0"}, dom)
    py_lhs = lhs.replace(f"Mod(s0, {a})", f"(s0 % {a})").replace(f"Max({a}, s0)", f"max({a}, s0)")
    want = [eval(f"{py_lhs} {op} {b}", {}, {"s0": n}) for n in range(first, 3001)]  # noqa: S307
    assert list(holds) == want
