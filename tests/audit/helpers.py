"""Helpers shared by the audit tests."""

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
# cheap fixtures (aot_eager) in one process, the Inductor ones in another
CHEAP = [
    "branch",
    "equality",
    "host_value",
    "divisibility",
    "fake_kernel",
    "opaque_op",
    "llama_block",
    "graph_break",
    "sliding_window",
    "pins",
    "tautologies",
    "not_compiled",
]
INDUCTOR = ["pattern_replacement", "tp_unfused"]
ALL = CHEAP + INDUCTOR
_EXPECT = re.compile(r"#\s*expect:\s*([A-Z0-9, ]+)")


def expected_marks(name: str) -> set[tuple[str, int]]:
    """(code, line) for every `# expect: ARF1xx, ARF104` comment in a fixture file."""
    marks = set()
    for lineno, line in enumerate((FIXTURES / f"{name}.py").read_text().splitlines(), 1):
        m = _EXPECT.search(line)
        if m:
            marks |= {(c.strip(), lineno) for c in m.group(1).split(",") if c.strip()}
    return marks


def run_batch(out: Path, names: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "_batch.py"), str(out), *names],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]


def load_json(reports: dict[str, Path], name: str) -> dict:
    return json.loads((reports[name] / f"{name}.json").read_text())
