"""arfuse's pytest plugin (the `pytest11` entry point `arfuse`; on as soon as arfuse is installed).

    def test_decoder_stays_dynamic(arfuse_audit):          # the fixture: audit, fail on findings
        arfuse_audit("audit/targets.py:build", sizes=[16, 2047, 2048, 2049])

    @pytest.mark.arfuse_audit("audit/targets.py:build")    # the marker: the same, after the body
    def test_build_imports():
        import audit.targets

The target is a `FILE.py:NAME` / `pkg.module:NAME` spec (audited in a fresh process, as
`arfuse audit` does) or an `AuditTarget` / `(model, make_inputs)` (audited in this process). The
repository's `[tool.arfuse]` (select, ignore, baseline, token domain, sizes, timeout) applies,
found from pytest's rootdir; keyword arguments override it. A run with findings not in the
baseline, or errors, fails the test with the text report (no Python traceback to scroll past);
torch's trace records stay in the audit's own log, out of the test's captured output.
`arfuse.testing.assert_dynamic` is the plain-function form (no config, in this process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

MARKER = "arfuse_audit"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(target, **options): audit TARGET (arfuse audit) after the test body and fail "
        "the test on findings not in the baseline",
    )


def run_audit(target: Any, rootdir: Any = None, **overrides: Any) -> Any:
    """Audit `target` with the `[tool.arfuse]` found from `rootdir` (keyword arguments
    override it); pytest.fail with the text report when it fails, else the report."""
    from arfuse.audit.api import audit
    from arfuse.audit.config import find

    report = audit(target, options=find(rootdir).options(**overrides))
    if report.exit_code != 0:
        pytest.fail(report.render("text"), pytrace=False)
    return report


@pytest.fixture
def arfuse_audit(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`arfuse_audit(target, **options)`: audit a target; fail the test with the report."""

    def audit(target: Any, **options: Any) -> Any:
        return run_audit(target, request.config.rootpath, **options)

    return audit


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield  # the test body; a failure there ends the test before any audit
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        if not marker.args:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.{MARKER} needs a target, e.g. "
                f'@pytest.mark.{MARKER}("audit/targets.py:build")'
            )
        run_audit(marker.args[0], item.config.rootpath, **marker.kwargs)
    return result
