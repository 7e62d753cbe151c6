"""Each fixture model gets exactly the findings its `# expect:` comments name, at those lines."""

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
    (guard,) = [f for f in load_json(fixture_reports, "fake_kernel")["findings"]
                if f["code"] == "ARF102"]
    lines = (FIXTURES / "fake_kernel.py").read_text().splitlines()
    assert lines[guard["line"] - 1].strip().startswith("if x.shape[0] > 1024:")
    call_site = [fr["line"] for fr in guard["frames"][1:]]
    assert call_site and lines[call_site[0] - 1].strip() == "return scale(x) + 1"
    assert guard["expr"] == "s77 <= 1024; s77 > 1024"
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
    (pin,) = [f for f in load_json(fixture_reports, "equality")["findings"]
              if f["code"] == "ARF101"]
    assert "specialized to 64" in pin["message"]
    assert pin["expr"] == "Ne(s77, 64); Eq(s77, 64); s77 == 64"
    assert pin["num_tokens"] == [16, 64]  # 2047 reuses the graph compiled at 16


def test_divisibility_line_gets_one_finding_with_every_consequence(fixture_reports):
    (div,) = load_json(fixture_reports, "divisibility")["findings"]
    assert div["code"] == "ARF103"
    assert "Mod(" in div["expr"]


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
