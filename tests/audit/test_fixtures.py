"""Each fixture model gets exactly the findings its `# expect:` comments name, at those lines."""

import re

import pytest

from tests.audit.helpers import ALL, FIXTURES, expected_marks, load_json

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("name", ALL)
def test_findings_match_expect_marks(fixture_reports, name):
    report = load_json(fixture_reports, name)
    got = {(f["code"], f["line"]) for f in report["findings"]}
    assert got == expected_marks(name), report["findings"]
    for f in report["findings"]:
        assert f["path"] == f"{name}.py", f  # relative to the fixtures dir, never torch's
    assert report["errors"] == []


@pytest.mark.parametrize("name", ["opaque_op", "llama_block"])
def test_clean_models_are_clean(fixture_reports, name):
    report = load_json(fixture_reports, name)
    assert report["findings"] == []
    assert report["summary"]["recompiles"] == 0  # sizes >= 2 share one graph


def test_fake_kernel_guard_points_into_the_fake_kernel_and_lists_the_call_site(fixture_reports):
    (guard,) = [
        f for f in load_json(fixture_reports, "fake_kernel")["findings"] if f["code"] == "ARF102"
    ]
    lines = (FIXTURES / "fake_kernel.py").read_text().splitlines()
    assert lines[guard["line"] - 1].strip().startswith("if x.shape[0] > 1024:")
    call_site = [fr["line"] for fr in guard["frames"][1:]]
    assert call_site and lines[call_site[0] - 1].strip() == "return scale(x) + 1"
    assert re.fullmatch(r"s\d+ <= 1024; s\d+ > 1024", guard["expr"])
    assert "recompiles at 1,024 -> 1,025" in guard["message"]
    assert guard["num_tokens"] == [16, 1025]  # compiled at 16, recompiled past the threshold


def test_threshold_branch_recompiles_exactly_when_crossing(fixture_reports):
    report = load_json(fixture_reports, "branch")
    (recompile,) = [f for f in report["findings"] if f["code"] == "ARF104"]
    assert recompile["num_tokens"] == [2049]
    assert report["summary"]["sizes"] == [16, 64, 2047, 2048, 2049]
    (guard,) = [f for f in report["findings"] if f["code"] == "ARF102"]
    assert "<= 2048" in guard["expr"] and "> 2048" in guard["expr"]
    assert guard["symbol"].startswith("s")


def test_equality_branch_is_pinned_to_the_constant(fixture_reports):
    (pin,) = [
        f for f in load_json(fixture_reports, "equality")["findings"] if f["code"] == "ARF101"
    ]
    # compiled at 16: every count but 64; recompiled at 64: that count only
    assert "valid for num_tokens=64 only" in pin["message"]
    assert "valid for every num_tokens except 64" in pin["message"]
    assert pin["num_tokens"] == [16, 64]  # 2047 reuses the graph compiled at 16


def test_divisibility_line_gets_one_finding_with_every_consequence(fixture_reports):
    (div,) = load_json(fixture_reports, "divisibility")["findings"]
    assert div["code"] == "ARF103"
    assert "Mod(" in div["expr"]
    assert "valid only for num_tokens % 4 in {0}" in div["message"]


def test_pattern_replacement_guard_is_attributed_to_the_replacement(fixture_reports):
    (f,) = load_json(fixture_reports, "pattern_replacement")["findings"]
    lines = (FIXTURES / "pattern_replacement.py").read_text().splitlines()
    assert lines[f["line"] - 1].strip().startswith("if x.shape[0] > 1024:")
    assert f["compile_id"] == "0/0"


def test_unfused_allreduce_chain_and_disabled_pass(fixture_reports):
    report = load_json(fixture_reports, "tp_unfused")
    by_code = {f["code"]: f for f in report["findings"]}
    assert "add -> RMSNorm" in by_code["ARF201"]["message"]
    assert "all_reduce" in by_code["ARF201"]["expr"]
    assert "world size 1" in by_code["ARF202"]["message"]
    assert report["summary"]["fusion"]["graphs"] >= 1
    assert report["summary"]["fusion"]["matches"] == 0


def test_negated_sliding_window_slice_is_a_threshold_at_the_exact_count(fixture_reports):
    (f,) = load_json(fixture_reports, "sliding_window")["findings"]
    assert f["code"] == "ARF102"
    assert "valid for num_tokens in [2, 4,094]: recompiles at 4,094 -> 4,095" in f["message"]


def test_codes_follow_the_truth_not_the_syntax(fixture_reports):
    by_code = {f["code"]: f for f in load_json(fixture_reports, "pins")["findings"]}
    assert by_code["ARF101"]["message"].endswith("valid for every num_tokens except 8")
    assert "Ne(" in by_code["ARF101"]["expr"]
    assert "recompiles at 64 -> 65" in by_code["ARF102"]["message"]  # Eq(ceil(n/64), 1)
    assert "CeilToInt" in by_code["ARF102"]["expr"]


def test_guards_that_always_hold_are_counted_and_listed_not_reported(fixture_reports):
    report = load_json(fixture_reports, "tautologies")
    assert report["findings"] == []
    summary = report["summary"]
    assert summary["domain"] == [1, 32768]
    dismissed = {
        (d["line"], d["expr"]) for d in summary["dismissed"] if d["path"].endswith("tautologies.py")
    }
    assert summary["dismissed_guards"] == len(summary["dismissed"]) >= 2
    assert any(
        line == 14 and re.fullmatch(r"s(\d+) <= 8\*\(\(\(s\1 \+ 7\)//8\)\)", e)
        for line, e in dismissed
    ), dismissed  # pad to a multiple of 8, slice back
    assert any(line == 15 and re.search(r"s\d+ <= s\d+", e) for line, e in dismissed)
    assert all("always holds" in d["reason"] for d in summary["dismissed"])
    text = (fixture_reports["tautologies"] / "tautologies.text").read_text()
    assert "PASS: num_tokens stays dynamic over num_tokens in [1, 32,768]" in text


def test_a_frame_that_never_compiled_is_never_a_pass(fixture_reports):
    report = load_json(fixture_reports, "not_compiled")
    (f,) = report["findings"]
    assert (f["code"], f["line"]) == ("ARF108", 20)
    assert "nothing compiled" in f["message"] and "Unsupported" in f["message"]
    text = (fixture_reports["not_compiled"] / "not_compiled.text").read_text()
    assert "PASS" not in text


def test_graph_break_on_the_token_path_names_the_break_and_the_reason(fixture_reports):
    (brk,) = [
        f for f in load_json(fixture_reports, "graph_break")["findings"] if f["code"] == "ARF107"
    ]
    assert brk["line"] == 18 and "graph break" in brk["message"]
    assert "User-inserted graph break" in brk["message"]
