"""The pytest plugin as a user's suite meets it: found through the `pytest11` entry point (no
conftest), a fixture and a marker that audit a target and fail with the report, torch's trace
records kept out of the captured log."""

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(600)

MODEL = """
import torch

from arfuse.audit import AuditTarget


class Threshold(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] <= 256:
            return x * 2
        return x - 1


class Clean(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.silu(x) * x.shape[0]


def threshold():
    return AuditTarget(Threshold(), lambda n: (torch.randn(n, 8),), {"backend": "aot_eager"},
                       sizes=[16, 257])


def clean():
    return AuditTarget(Clean(), lambda n: (torch.randn(n, 8),), {"backend": "aot_eager"},
                       sizes=[16, 257])
"""

TESTS = """
import pytest
import torch

from models import Clean, Threshold


def test_fixture_fails_with_the_report(arfuse_audit):
    arfuse_audit("models.py:threshold")


@pytest.mark.arfuse_audit("models.py:clean")
def test_marker_passes():
    pass


def test_in_process_target_keeps_trace_out_of_the_log(arfuse_audit):
    arfuse_audit((Threshold(), lambda n: (torch.randn(n, 8),), {"backend": "aot_eager"}),
                 sizes=[16, 257])


def test_config_applies(arfuse_audit):
    arfuse_audit("models.py:threshold", ignore=["ARF1"], select=["ARF1", "ARF2"])
"""


def test_plugin_in_a_users_suite(pytester: pytest.Pytester):
    pytester.makepyfile(models=MODEL, test_models=TESTS)
    pytester.makepyprojecttoml("[tool.arfuse]\nmax-tokens = 4096\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=500)
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    # the failure is the report: the line, the code, the verdict - no traceback of the plugin
    line = MODEL.lstrip("\n").splitlines().index("        if x.shape[0] <= 256:") + 1
    assert f"models.py:{line}: ARF102" in out, out
    assert "FAIL: 2 new finding(s)" in out
    assert "pytest_plugin.py" not in out
    assert "torch.__trace" not in out  # captured log: no trace records
    # [tool.arfuse] applied: the domain ends at 4,096
    assert "over num_tokens in [1, 4,096]" in out or "[1, 4,096]" in out
