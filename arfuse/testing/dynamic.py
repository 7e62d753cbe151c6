"""`assert_dynamic`: a pytest-friendly check that a compiled model stays dynamic in num_tokens.

    from arfuse.testing import assert_dynamic

    def test_my_layer_stays_dynamic():
        assert_dynamic(MyLayer(), lambda n: (torch.randn(n, 4096),), sizes=[16, 2047, 2048, 2049],
                       backend="aot_eager")

Runs the audit in this process (the trace is captured with a temporary handler; Dynamo's
caches are reset before and after), and raises `AssertionError` listing every finding with its
source line. Use `arfuse audit` for multi-rank targets and for isolation in a fresh process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from arfuse.audit.api import audit
from arfuse.audit.live.target import AuditTarget
from arfuse.audit.report.model import Report


def assert_dynamic(
    model: Callable,
    make_inputs: Callable[[int], Any],
    sizes: Sequence[int] | None = None,
    *,
    thresholds: Sequence[int] = (),
    token_dims: dict | None = None,
    select: Iterable[str] = ("ARF1",),
    ignore: Iterable[str] = (),
    strict: bool = False,
    **compile_kwargs: Any,
) -> Report:
    """Fail (AssertionError) if compiling `model` guards, pins or recompiles on num_tokens.

    `sizes` default to the audit's sweep; every threshold t adds t-1, t, t+1. Remaining keyword
    arguments go to `torch.compile` (e.g. `backend="aot_eager"` for speed, `options={...}`).
    Only ARF1xx rules run by default; pass `select=("ARF",)` to include fusion coverage.
    Returns the report when the model is clean.
    """
    target = AuditTarget(
        model=model,
        make_inputs=make_inputs,
        compile_kwargs=compile_kwargs,
        token_dims=token_dims,
        thresholds=tuple(thresholds),
        name=type(model).__name__,
    )
    report = audit(target, sizes, strict=strict, select=select, ignore=ignore)
    if report.errors:
        raise AssertionError("the model failed while auditing:\n" + "\n".join(report.errors))
    if report.findings:
        raise AssertionError(
            f"{type(model).__name__} is not dynamic in num_tokens:\n" + report.render("text")
        )
    return report
