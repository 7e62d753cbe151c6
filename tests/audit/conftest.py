"""Shared fixtures for the audit tests: every fixture model is audited once, in two fresh
processes (cheap aot_eager fixtures, then the Inductor ones), and the tests read the reports."""

from pathlib import Path

import pytest

from tests.audit.helpers import ALL, CHEAP, INDUCTOR, run_batch


@pytest.fixture(scope="session")
def fixture_reports(tmp_path_factory) -> dict[str, Path]:
    """name -> directory holding name.json/.text/.md/.sarif for every fixture model."""
    out = tmp_path_factory.mktemp("audit-reports")
    run_batch(out, CHEAP)
    run_batch(out, INDUCTOR)
    return {name: out for name in ALL}
