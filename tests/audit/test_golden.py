"""Golden outputs: every format of a finding-rich fixture, byte for byte.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/audit/test_golden.py`
and review the diff.
"""

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = [("branch", "text"), ("branch", "json"), ("branch", "md"), ("branch", "sarif"),
         ("fake_kernel", "text"), ("tp_unfused", "text")]


@pytest.mark.parametrize("name,ext", CASES)
def test_golden(fixture_reports, name, ext):
    got = (fixture_reports[name] / f"{name}.{ext}").read_text()
    path = GOLDEN / f"{name}.{ext}"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text(), f"{path} differs; UPDATE_GOLDEN=1 to regenerate"


def test_sarif_is_valid_2_1_0_shape(fixture_reports):
    sarif = json.loads((fixture_reports["branch"] / "branch.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    for result in run["results"]:
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "branch.py"


def test_json_schema_matches_the_contract(fixture_reports):
    report = json.loads((fixture_reports["branch"] / "branch.json").read_text())
    assert set(report) >= {"findings", "summary"}
    for f in report["findings"]:
        assert {"code", "name", "message", "path", "line", "expr", "symbol", "compile_id",
                "frames"} <= set(f)
        assert all(set(fr) == {"path", "line"} for fr in f["frames"])
