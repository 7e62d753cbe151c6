"""`arfuse audit` / `arfuse rules` as a user runs them: exit codes 0/1/2, formats, baseline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from arfuse.cli import main

pytestmark = pytest.mark.timeout(600)
HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures"
DATA = HERE / "data"


def arfuse(*args: str):
    """Run the CLI in this process (the audit itself still runs in a fresh worker process);
    fixture specs are made absolute."""
    args = [str(FIX / a) if a.endswith(":build") or a.startswith("broken.py:") else a for a in args]
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    res.returncode = res.exit_code
    return res


def test_rules_lists_every_rule_with_docs():
    result = CliRunner().invoke(main, ["rules"])
    assert result.exit_code == 0
    codes = [
        "ARF101",
        "ARF102",
        "ARF103",
        "ARF104",
        "ARF105",
        "ARF106",
        "ARF107",
        "ARF108",
        "ARF109",
        "ARF201",
        "ARF202",
        "ARF203",
        "ARF301",
        "ARF302",
        "ARF303",
        "ARF304",
        "ARF305",
        "ARF306",
        "ARF307",
        "ARF308",
        "ARF901",
        "ARF902",
    ]
    for code in codes:
        assert code in result.output
    assert result.output.count("## What it does") == len(codes)
    assert result.output.count("## Why is this bad?") == len(codes)
    assert result.output.count("## Fix") == len(codes)


def test_rules_one_code_and_json():
    one = CliRunner().invoke(main, ["rules", "arf103"])
    assert one.exit_code == 0 and one.output.startswith("ARF103 (num-tokens-divisibility-guard)")
    data = json.loads(CliRunner().invoke(main, ["rules", "--format", "json"]).output)
    names = [r["name"] for r in data]
    assert all(n == n.lower() and " " not in n for n in names) and len(set(names)) == 22
    bad = CliRunner().invoke(main, ["rules", "ARF999"])
    assert bad.exit_code == 2 and "unknown rule" in bad.output


def test_audit_existing_trace_exit_1_and_json_contract():
    result = CliRunner().invoke(
        main, ["audit", "--trace", str(DATA / "torch-2.13.0-branch.log.gz"), "--format", "json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.output)  # ONE json object on stdout
    assert {f["code"] for f in report["findings"]} == {"ARF102", "ARF103", "ARF104"}
    assert report["summary"]["findings"] == 4  # ARF104 at both the threshold and the view


def test_usage_errors_exit_2_with_a_fix():
    r = CliRunner()
    cases = [
        (["audit", "no_colon_here"], "has no ':NAME'"),
        (["audit", "missing.py:build"], "does not exist"),
        (["audit", "--sizes", "1,x", "a.py:b"], "comma-separated"),
        (["audit", "--select", "FOO", "a.py:b"], "matches no rule"),
        (["audit", "--baseline", "nope.json", "a.py:b"], "--write-baseline"),
        (["audit", "--format", "xml"], "Invalid value"),
    ]
    for args, needle in cases:
        res = r.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)


def test_target_errors_exit_2(tmp_path):
    for name, needle in [
        ("not_a_target", "returned int"),
        ("make_inputs_fails", "make_inputs(2) raised RuntimeError: no tokenizer"),
        ("no_such_fn", "has no attribute 'no_such_fn'"),
        ("hard_crash", "exited with code 7"),
    ]:
        res = arfuse("audit", f"broken.py:{name}", "--sizes", "2,16")
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr, res.stderr


def test_crash_at_one_size_is_a_target_error_but_findings_still_print():
    res = arfuse("audit", "broken.py:crashes_at_a_size", "--sizes", "16,200")
    assert res.returncode == 2
    assert "num_tokens=200" in res.stdout and "kv cache too small" in res.stdout


def test_clean_target_exits_0_and_findings_exit_1_then_baseline_accepts_them(tmp_path):
    clean = arfuse("audit", "opaque_op.py:build", "--format", "markdown")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("### ✅ arfuse audit")

    bad = arfuse("audit", "equality.py:build", "--format", "sarif")
    assert bad.returncode == 1, bad.stderr
    sarif = json.loads(bad.stdout)
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"ARF101", "ARF104"}

    baseline = tmp_path / "baseline.json"
    wrote = arfuse("audit", "equality.py:build", "--write-baseline", str(baseline))
    assert wrote.returncode == 0 and "wrote 2 finding(s)" in wrote.stderr
    entries = json.loads(baseline.read_text())["findings"]
    rel = Path(os.path.relpath(FIX / "equality.py")).as_posix()
    assert {(e["code"], e["path"]) for e in entries} == {("ARF101", rel), ("ARF104", rel)}
    gated = arfuse("audit", "equality.py:build", "--baseline", str(baseline))
    assert gated.returncode == 0, gated.stdout
    assert "(baselined)" in gated.stdout


def test_the_bare_pass_branch_on_the_token_count_audits_clean():
    """Issue 24: the pass's run-time branch (the op up to 32 tokens, plain Inductor's chain
    above) compiles once for 16-64 tokens, adds no finding - no guard, pin or recompile on
    num_tokens, and its unfused branch is not ARF201 - on both ranks, cross-rank checks on."""
    res = subprocess.run(
        [sys.executable, "-m", "arfuse", "audit", "tp_branch.py:build", "--format", "json"],
        cwd=FIX,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["findings"] == [] and report["errors"] == []
    summary = report["summary"]
    assert summary["ranks"] == [0, 1] and summary["sizes"] == [16, 31, 32, 33, 64]
    assert (summary["compiles"], summary["recompiles"]) == (1, 0)
    assert summary["fusion"] == {"graphs": 2, "matches": 2, "post_grad_graphs": 2}
    assert summary["checks"][0].startswith("cross-rank checks ran over 2 ranks")


def test_multi_rank_target_audits_every_rank(tmp_path):
    # the real entry point, as CI runs it
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "arfuse",
            "audit",
            "tp_threshold.py:build",
            "--format",
            "json",
            "--keep",
            str(tmp_path / "keep"),
        ],
        cwd=FIX,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["summary"]["world_size"] == 2 and report["summary"]["ranks"] == [0, 1]
    by_code = {f["code"]: f for f in report["findings"]}
    lines = (FIX / "tp_threshold.py").read_text().splitlines()
    assert lines[by_code["ARF102"]["line"] - 1].strip().startswith("if x.shape[0] <= MAX_TOKEN_NUM")
    assert by_code["ARF102"]["ranks"] == [0, 1]
    assert by_code["ARF104"]["num_tokens"] == [513]
    assert sorted(
        p.name.split("_rank_")[1][0] for p in (tmp_path / "keep" / "trace").glob("*.log")
    ) == ["0", "1"]

    # the kept directory re-audits without running anything, with the run's token sources
    again = CliRunner().invoke(
        main, ["audit", "--trace", str(tmp_path / "keep"), "--format", "json"]
    )
    assert again.exit_code == 1
    assert [(f["code"], f["line"]) for f in json.loads(again.stdout)["findings"]] == [
        (f["code"], f["line"]) for f in report["findings"]
    ]

    # the bare TORCH_TRACE directory (what another engine leaves: no run.json) gives the live
    # audit's findings too, ranks included - num_tokens found from the recorded create_symbol
    bare = CliRunner().invoke(
        main,
        ["audit", "--trace", str(tmp_path / "keep" / "trace"), "--format", "json", "--no-progress"],
    )
    assert bare.exit_code == 1, bare.output
    assert [(f["code"], f["line"], f["ranks"]) for f in json.loads(bare.stdout)["findings"]] == [
        (f["code"], f["line"], f["ranks"]) for f in report["findings"]
    ]


def test_max_tokens_narrows_the_verdicts_to_the_domain_served():
    """The recorded sweep crossed 2048; a model that serves at most 2000 tokens never meets that
    threshold, nor the graphs compiled past it: only the residue-class guard stays."""
    log = Path(__file__).parent / "data" / "torch-2.13.0-branch.log.gz"
    wide = CliRunner().invoke(main, ["audit", "--trace", str(log), "--format", "json"])
    narrow = CliRunner().invoke(
        main, ["audit", "--trace", str(log), "--format", "json", "--max-tokens", "2000"]
    )
    codes = lambda res: sorted(f["code"] for f in json.loads(res.stdout)["findings"])  # noqa: E731
    assert codes(wide) == ["ARF102", "ARF103", "ARF104", "ARF104"]
    assert codes(narrow) == ["ARF103"] and narrow.exit_code == 1
    summary = json.loads(narrow.stdout)["summary"]
    assert summary["domain"] == [1, 2000]
    assert any("outside the token domain [1, 2,000]" in d["reason"] for d in summary["dismissed"])
    bad = CliRunner().invoke(main, ["audit", "--trace", str(log), "--max-tokens", "0"])
    assert bad.exit_code == 2 and "max_tokens must be a positive whole number" in bad.output
