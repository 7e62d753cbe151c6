"""Golden outputs: every format of a finding-rich fixture, byte for byte after normalising
what torch decides, not arfuse: shape-symbol names (`s77` is a hash) and line numbers inside
torch's own files, and the run's duration.

After an intended change, `UPDATE_GOLDEN=1 pytest tests/audit/test_golden.py` writes
`golden/NAME.EXT.new` next to each golden that differs (and still fails): review the diff, then
move the `.new` file over the golden.
"""

import json
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = [
    ("branch", "text"),
    ("branch", "json"),
    ("branch", "md"),
    ("branch", "sarif"),
    ("fake_kernel", "text"),
    ("tp_unfused", "text"),
]


_SYMBOL = re.compile(r"\b([su])\d+\b")
_TORCH_LINE = re.compile(r"(torch/[\w/]+\.py)(\"?[:,]\s*(?:\"line\":\s*|\"startLine\":\s*)?)\d+")
_SECONDS = re.compile(r"(\"seconds\": )[\d.]+|\b[\d.]+( s, backend)")


def normalise(text: str) -> str:
    text = _SYMBOL.sub(r"\1N", text)
    text = _TORCH_LINE.sub(r"\1\2N", text)
    return _SECONDS.sub(lambda m: (m.group(1) or "") + "T" + (m.group(2) or ""), text)


def test_normalise_hides_torch_internals_only():
    assert (
        normalise("s77 <= 2048 at torch/_inductor/ir.py:1879 and model.py:16")
        == "sN <= 2048 at torch/_inductor/ir.py:N and model.py:16"
    )


def check_golden(got: str, path: Path) -> None:
    """`got` (normalised) must equal the golden at `path`; with UPDATE_GOLDEN set, a differing
    one is written to `path.new` for review, never over the golden, and still fails."""
    want = normalise(path.read_text()) if path.exists() else ""
    if got != want and os.environ.get("UPDATE_GOLDEN"):
        path.with_name(path.name + ".new").write_text(got)
    assert got == want, (
        f"{path} differs; UPDATE_GOLDEN=1 writes {path.name}.new for review "
        f"(then move it over the golden)"
    )


@pytest.mark.parametrize("name,ext", CASES)
def test_golden(fixture_reports, name, ext):
    check_golden(
        normalise((fixture_reports[name] / f"{name}.{ext}").read_text()), GOLDEN / f"{name}.{ext}"
    )


@pytest.mark.parametrize("update", ["", "1"])
def test_a_changed_output_fails_and_update_writes_new_beside_the_golden(
    tmp_path, monkeypatch, update
):
    golden = tmp_path / "case.text"
    golden.write_text("ARF102 at model.py:16\n")
    monkeypatch.setenv("UPDATE_GOLDEN", update)
    with pytest.raises(AssertionError, match="case.text differs"):
        check_golden("ARF102 at model.py:17\n", golden)
    assert golden.read_text() == "ARF102 at model.py:16\n"
    new = tmp_path / "case.text.new"
    assert (new.read_text() if new.exists() else None) == (
        "ARF102 at model.py:17\n" if update else None
    )
    check_golden("ARF102 at model.py:16\n", golden)  # equal: passes, writes nothing more


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
        assert {
            "code",
            "name",
            "message",
            "path",
            "line",
            "expr",
            "symbol",
            "compile_id",
            "frames",
        } <= set(f)
        assert all(set(fr) == {"path", "line"} for fr in f["frames"])
