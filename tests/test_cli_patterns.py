import json
import subprocess
import sys

from click.testing import CliRunner

from arfuse.cli import main


def test_patterns_lists_every_variant_as_json():
    result = CliRunner().invoke(main, ["patterns", "--format", "json"])
    assert result.exit_code == 0, result.output
    patterns = json.loads(result.output)["patterns"]
    assert len(patterns) == 72
    names = {p["name"] for p in patterns}
    assert "c10d/hf/ar+res/fp8" in names and "custom/custom_op/res+ar/none" in names
    fp8 = [p for p in patterns if p["quant"] == "fp8"]
    assert {p["fused_op"] for p in fp8} == {"arfuse::fused_allreduce_rmsnorm_quant_fp8"}
    assert all(p["enabled"] for p in patterns)


def test_patterns_disable_preview_and_bad_value():
    runner = CliRunner()
    result = runner.invoke(main, ["patterns", "--format", "json", "--disable", "norm=gemma"])
    patterns = json.loads(result.output)["patterns"]
    assert sum(not p["enabled"] for p in patterns) == 18
    assert all(p["norm"] == "gemma" for p in patterns if not p["enabled"])
    bad = runner.invoke(main, ["patterns", "--disable", "norm=layernorm"])
    assert bad.exit_code == 2
    assert "write AXIS=FORM" in bad.output


def test_text_table_and_python_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "arfuse", "patterns"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "72 fusion patterns (72 enabled)" in out.stdout
    assert "gemma/res+ar/fp8" in out.stdout
