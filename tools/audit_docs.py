"""Regenerate docs/audit.md's rule section from the registry (the docs test checks it):

python -m tools.audit_docs docs/audit.md
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "## Rules\n"


def rules_section() -> str:
    from arfuse.audit.cli import rules_markdown
    from arfuse.audit.rules import all_rules

    return MARKER + "\n" + rules_markdown(all_rules())


def update(path: Path) -> None:
    text = path.read_text()
    head = text.split(MARKER, 1)[0]
    path.write_text(head + rules_section())


if __name__ == "__main__":
    update(Path(sys.argv[1]))
