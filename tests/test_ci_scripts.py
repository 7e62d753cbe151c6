"""The CI scripts: the gate runs every target and exits with the worst code; .ci/run runs the
README's test command and stops on any failure."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gate_runs_every_target_and_exits_with_the_worst_code(tmp_path):
    # a stand-in for python: the i-th audit exits codes[i] (no torch, no model: the gate's own
    # bookkeeping is under test)
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {tmp_path}/calls
n=$(wc -l < {tmp_path}/calls)
codes=(x 1 2 1 0)
exit ${{codes[$n]}}
""")
    fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(ROOT / "ci" / "gate.sh")],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": str(fake), "ARFUSE_GATE_OUT": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 4, proc.stderr  # a later, milder failure used to end the gate early
    assert proc.returncode == 2
    assert all("--baseline audit/baseline.json" in c and "--keep" in c for c in calls)


def test_ci_runs_the_readme_test_command_and_stops_on_failure():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"pip install -e '\.\[test\]' && python -m pytest -q", readme)
    assert command, "README lost its test command"
    assert "(python -m pip install -q -e '.[test]' && python -m pytest -q)" in ci
    assert "set -euo pipefail" in ci
    assert ci.index("pip install -q torch==2.13.0") < ci.index("'.[test]'") < ci.index("ci/gate.sh")
    # pytest's exit 5 ("no tests ran") inside the subshell ends the script with 5
    script = "set -euo pipefail\n(true && exit 5)\necho not reached\n"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 5 and "not reached" not in proc.stdout


def test_ci_runs_the_lint_and_type_gate_after_installing_the_tools():
    ci = (ROOT / ".ci" / "run").read_text()
    lint = (ROOT / "ci" / "lint.sh").read_text()
    assert ci.index("'.[test]'") < ci.index("\nci/lint.sh") < ci.index("\nci/gate.sh")
    # then the pass's tests on the torch floor, in a venv of its own
    floor = (ROOT / "ci" / "torch_floor.sh").read_text()
    assert ci.index("\nci/gate.sh") < ci.index("\nci/torch_floor.sh")
    assert "set -euo pipefail" in floor and "python3 -m venv .venv-torch-floor" in floor
    assert re.search(r"ARFUSE_TORCH_FLOOR:-([\d.]+)", floor).group(1) == "2.11.0"
    assert '"torch>=2.11"' in (ROOT / "pyproject.toml").read_text()  # the floor it tests
    for step in ("step ruff check .", "step ruff format --check .", "step mypy"):
        assert step in lint
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"ruff==[\d.]+"', pyproject) and re.search(r'"mypy==[\d.]+"', pyproject)


def test_lint_gate_runs_every_step_and_fails_if_any_did(tmp_path):
    # stand-ins for ruff and mypy: `ruff check` fails, the other two steps must still run
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, code in (("ruff", '[ "$1" = check ] && exit 1; exit 0'), ("mypy", "exit 0")):
        fake = bin_dir / tool
        fake.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> {tmp_path}/calls\n{code}\n')
        fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(ROOT / "ci" / "lint.sh")],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VIRTUAL_ENV": "ci"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [c.strip() for c in (tmp_path / "calls").read_text().splitlines()]
    assert calls == ["ruff check .", "ruff format --check .", "mypy"], proc.stdout
    assert proc.returncode == 1
