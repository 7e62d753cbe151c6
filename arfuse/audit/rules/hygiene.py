"""ARF901-902: the audit's own exceptions must stay true. An inline suppression that suppresses
nothing, or a baseline entry that matches no finding, would silently hide the next finding at
that place; both are reported, like ruff's RUF100 (unused `noqa`).

Scope "report": these rules read no trace. The report step runs them after every other rule,
on what the suppressions and the baseline did (`arfuse.audit.report.accept`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.rules import rule

UNUSED_SUPPRESSION = "ARF901"
STALE_BASELINE = "ARF902"


def _no_trace_check(ctx: Any) -> Iterable[Finding]:
    return ()  # findings come from the report step, which knows what was suppressed


rule(
    UNUSED_SUPPRESSION,
    "unused-suppression",
    "an inline `# arfuse: ignore[...]` (or `# noqa: ARF...`) suppresses no finding",
    """
      ## What it does
      Reports each inline suppression at which no finding of the codes it names was reported,
      for codes whose rule ran (a bare `# arfuse: ignore` when every rule ran): the line was
      fixed, or the suppression names the wrong code or sits on the wrong line.

      ## Why is this bad?
      A suppression outlives its reason: the next real finding at that line - a new threshold
      written where the old one was - would be hidden without anyone looking at it.

      ## Example
      ```python
      def forward(self, x):
          return self.proj(x)  # arfuse: ignore[ARF102]   ARF901: ARF102 reported nothing here
      ```

      ## Fix
      Remove the suppression (or the codes of it that suppress nothing).
      """,
    fix="remove the suppression, or the codes in it that suppress nothing",
    scope="report",
    needs=(),
)(_no_trace_check)

rule(
    STALE_BASELINE,
    "stale-baseline-entry",
    "a baseline entry of this target matches no finding of a rule that ran",
    """
      ## What it does
      Reports each entry of the `--baseline` file, recorded for the audited target, that
      matched no finding although its rule ran: the finding it accepted was fixed (or its
      line changed beyond comments and whitespace).

      ## Why is this bad?
      A baseline only grows otherwise: a stale entry accepts in advance the same finding
      coming back, and the file stops saying what is accepted today.

      ## Example
      ```json
      {"code": "ARF103", "path": "models/layer.py", "source": "x = x.view(-1, 4)"}
      ```
      (no finding at `x = x.view(-1, 4)` any more: ARF902 at this entry's line)

      ## Fix
      Regenerate the file: `arfuse audit --write-baseline FILE` replaces the target's entries
      with today's findings (entries that still match keep their "reason"), or delete the
      entry by hand.
      """,
    fix="regenerate the baseline with --write-baseline (it replaces this target's entries)",
    scope="report",
    needs=(),
)(_no_trace_check)
