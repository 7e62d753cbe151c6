"""docs/audit.md documents every rule exactly as `arfuse rules` prints it; docs/architecture.md
lists every module of the auditor."""

from pathlib import Path

from arfuse.audit.rules import all_rules
from tools.audit_docs import (
    AUDIT,
    MARKER,
    MODULES_BEGIN,
    MODULES_END,
    modules_section,
    rules_section,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
ARCHITECTURE = DOC.with_name("architecture.md")


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


def test_architecture_lists_every_module_of_the_auditor():
    text = ARCHITECTURE.read_text()
    generated = (
        MODULES_BEGIN + text.split(MODULES_BEGIN, 1)[1].split(MODULES_END, 1)[0] + MODULES_END
    )
    assert generated == modules_section(), (
        "regenerate: python -m tools.audit_docs docs/architecture.md"
    )
    # a module the table lacks is a failure, not just a stale sentence
    listed = {line.split("`")[1] for line in generated.splitlines() if line.startswith("| `")}
    on_disk = {p.relative_to(AUDIT.parents[1]).as_posix() for p in AUDIT.rglob("*.py")}
    assert on_disk - listed == set()
