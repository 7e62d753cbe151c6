"""Developer tools around the auditor, not part of the installed package:
`python -m tools.audit_bench LOG`, `python -m tools.audit_docs docs/audit.md`."""
