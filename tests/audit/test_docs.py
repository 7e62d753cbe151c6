"""docs/audit.md documents every rule exactly as `arfuse rules` prints it."""

from pathlib import Path

from arfuse.audit.rules import all_rules
from tools.audit_docs import MARKER, rules_section

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_rule_docs_in_sync():
    text = DOC.read_text()
    assert text.split(MARKER, 1)[1] == rules_section().split(MARKER, 1)[1], (
        "regenerate: python -m tools.audit_docs docs/audit.md"
    )


def test_every_rule_is_ruff_style():
    for r in all_rules():
        assert r.code[:4] in ("ARF1", "ARF2", "ARF3", "ARF9") and len(r.code) == 6
        assert r.name == r.name.lower() and " " not in r.name and "_" not in r.name
        for heading in ("## What it does", "## Why is this bad?", "## Example", "## Fix"):
            assert heading in r.docs, (r.code, heading)
