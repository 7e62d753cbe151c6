"""The rules on real trace logs captured from torch 2.11 (GPU machine) and 2.13 (here): the
same model must give the same findings on both versions (lines of capture_trace_fixtures.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arfuse.audit import analyze_trace
from arfuse.audit.trace.run_info import RunInfo

DATA = Path(__file__).resolve().parent / "data"
TOOL = (Path(__file__).resolve().parent / "tools" / "capture_trace_fixtures.py").read_text()


def _line(text: str) -> int:
    return next(i for i, line in enumerate(TOOL.splitlines(), 1) if text in line)


def _codes(report):
    return sorted((f.code, f.line) for f in report.findings)


@pytest.mark.parametrize("version", ["2.11.0", "2.13.0"])
def test_branch_log(version):
    report = analyze_trace(DATA / f"torch-{version}-branch.log.gz")
    thr, div = _line("y = x * 2 if n <= 2048"), _line("return y.view(-1, 2")
    assert _codes(report) == sorted(
        [("ARF102", thr), ("ARF104", thr), ("ARF103", div), ("ARF104", div)]
    )
    # sizes come from Dynamo's describe_tensor events (no arfuse markers in these logs); the
    # num_tokens=1 recompile is torch's 0/1 specialization, not a finding
    (recompile,) = [f for f in report.findings if f.code == "ARF104" and f.line == thr]
    assert recompile.num_tokens == [2049]


@pytest.mark.parametrize("version", ["2.11.0", "2.13.0"])
def test_fake_kernel_log(version):
    report = analyze_trace(DATA / f"torch-{version}-fake.log.gz")
    line = _line("if x.shape[0] > 1024:")
    assert _codes(report) == [("ARF102", line), ("ARF104", line)]


@pytest.mark.parametrize("version", ["2.11.0", "2.13.0"])
def test_constraint_violation_log(version):
    report = analyze_trace(DATA / f"torch-{version}-eq_strict.log.gz")
    line = _line("return x * 2 if x.shape[0] == 16")
    assert ("ARF105", line) in _codes(report)
    (cve,) = [f for f in report.findings if f.code == "ARF105"]
    assert "specialized it to be a constant (16)" in cve.message


@pytest.mark.parametrize("version", ["2.11.0", "2.13.0"])
def test_unfused_log(version):
    report = analyze_trace(DATA / f"torch-{version}-funcol_inductor.log.gz")
    assert _codes(report) == [("ARF201", _line("h = y + res"))]


def test_token_sources_restrict_what_counts():
    # with a run that declares another input as the token dim, x's guards are not findings;
    # that input never became a symbol: ARF109 says so
    run = RunInfo(token_sources=["L['other'].size()[0]"])
    findings = analyze_trace(DATA / "torch-2.13.0-branch.log.gz", run).findings
    assert [f.code for f in findings] == ["ARF109"]


def test_select_and_ignore():
    path = DATA / "torch-2.13.0-branch.log.gz"
    assert {f.code for f in analyze_trace(path, select=["ARF103"]).findings} == {"ARF103"}
    assert "ARF104" not in {f.code for f in analyze_trace(path, ignore=["ARF104"]).findings}
    with pytest.raises(ValueError, match="matches no rule"):
        analyze_trace(path, select=["ARF8"])


def test_recompile_limit_is_called_out(tmp_path):
    """Pin num_tokens and sweep 12 sizes: Dynamo gives up after 8 recompiles (the default
    recompile_limit) and runs the frame eagerly - the ARF104 finding must say so."""
    fixture = Path(__file__).resolve().parent / "fixtures" / "host_value.py"
    sizes = ",".join(str(16 * i) for i in range(1, 13))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "arfuse",
            "audit",
            f"{fixture}:build",
            "--sizes",
            sizes,
            "--select",
            "ARF104",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    (f,) = json.loads(res.stdout)["findings"]
    assert "recompile limit was hit at num_tokens=144" in f["message"]
    assert f["num_tokens"] == [16 * i for i in range(2, 10)]  # 8 recompiles, then eager
