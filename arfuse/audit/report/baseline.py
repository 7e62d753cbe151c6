"""Accepted findings: a JSON file the CI gate compares against (ruff's `--add-noqa` idea,
kept out of the source).

    {"version": 1, "findings": [{"code": "ARF102", "path": "audit/targets.py",
                                 "source": "if n <= 2048:", "line": 12,
                                 "reason": "why this is accepted (optional, kept)"}]}

A finding is baselined when code, path and the stripped source line match an entry (the line
number may move); entries without a source line match on the line number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import rel
from arfuse.jsonfile import read_json

VERSION = 1


def _key(f: Finding, root: Path) -> dict[str, Any]:
    return {"code": f.code, "path": rel(f.path, root), "source": f.location.code, "line": f.line}


def fingerprint(f: Finding, root: Path) -> str:
    k = _key(f, root)
    text = f"{k['code']}|{k['path']}|{k['source'] or k['line']}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"baseline {path} does not exist; create it with "
            f"`arfuse audit TARGET --write-baseline {path}`"
        )
    data = read_json(path, f"baseline {path}", "regenerate it with --write-baseline")
    if (
        not isinstance(data, dict)
        or data.get("version") != VERSION
        or not isinstance(data.get("findings"), list)
    ):
        raise ValueError(
            f"baseline {path} is not an arfuse baseline (version {VERSION}); "
            f"regenerate it with --write-baseline"
        )
    for i, e in enumerate(data["findings"]):
        bad = (
            "not an object"
            if not isinstance(e, dict)
            else 'no string "code"'
            if not isinstance(e.get("code"), str)
            else 'no string "path"'
            if not isinstance(e.get("path"), str)
            else '"line" is not a number'
            if not isinstance(e.get("line", 0), (int, type(None)))
            else '"source" is not a string'
            if not isinstance(e.get("source", ""), (str, type(None)))
            else ""
        )
        if bad:
            raise ValueError(
                f"baseline {path}: findings[{i}] ({json.dumps(e)[:80]}) is not a "
                f"baseline entry: {bad}; fix it or regenerate the file with "
                f"--write-baseline"
            )
    return data["findings"]


def _matches(entry: dict[str, Any], key: dict[str, Any]) -> bool:
    if entry.get("code") != key["code"]:
        return False
    ep, kp = str(entry.get("path", "")), key["path"]
    if not (ep == kp or kp.endswith("/" + ep) or ep.endswith("/" + kp)):
        return False
    if entry.get("source") and key["source"]:
        return entry["source"] == key["source"]
    return entry.get("line") == key["line"]


def match(findings: Iterable[Finding], entries: list[dict[str, Any]], root: Path) -> set[int]:
    """Indexes of findings covered by the baseline."""
    return {i for i, f in enumerate(findings) if any(_matches(e, _key(f, root)) for e in entries)}


def dump(findings: Iterable[Finding], root: Path, target: str = "") -> str:
    entries = sorted(
        (_key(f, root) for f in findings), key=lambda k: (k["path"], k["line"], k["code"])
    )
    unique = [dict(t) for t in dict.fromkeys(tuple(e.items()) for e in entries)]
    return json.dumps({"version": VERSION, "target": target, "findings": unique}, indent=2) + "\n"


def merge_dump(path: Path, findings: Iterable[Finding], root: Path, target: str) -> str:
    """Baseline text with this target's findings added to what the file already holds."""
    existing = load(path) if path.exists() else []
    fresh = json.loads(dump(findings, root, target))["findings"]
    keyed = {
        (e["code"], e["path"], e.get("source", ""), e.get("line")): e for e in [*fresh, *existing]
    }  # existing entries keep their "reason"
    entries = sorted(keyed.values(), key=lambda e: (e["path"], e.get("line") or 0, e["code"]))
    return json.dumps({"version": VERSION, "findings": entries}, indent=2) + "\n"
