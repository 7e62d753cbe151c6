"""`--format github`: GitHub Actions workflow commands, one annotation per new finding, shown on
the pull request's diff at the flagged line - no code scanning (SARIF upload) needed.

    ::error file=model.py,line=12,title=ARF102 num-tokens-range-guard::recompiles at 2,048 -> 2,049

Baselined and suppressed findings are not annotated; errors (exit 2) are file-less `::error`s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arfuse.audit.paths import rel


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render(report: Any, root: Path, verbose: bool = False) -> str:
    lines = []
    for f in report.new:
        props = [f"file={_property(rel(f.path, root))}", f"line={max(f.line, 1)}"]
        props.append(f"title={_property(f'{f.code} {f.name}')}")
        body = f.message + (f"\nfix: {f.fix}" if f.fix else "")
        lines.append(f"::error {','.join(props)}::{_data(body)}")
    lines += [f"::error title=arfuse audit::{_data(e)}" for e in report.errors]
    return "\n".join([*lines, report.verdict]) + "\n"
