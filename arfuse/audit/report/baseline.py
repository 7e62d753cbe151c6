"""Accepted findings: a JSON file the CI gate compares against (ruff's `--add-noqa` idea,
kept out of the source).

    {"version": 1, "findings": [{"code": "ARF102", "path": "audit/targets.py",
                                 "source": "if n <= 2048:", "line": 12,
                                 "target": "audit/targets.py:build", "fingerprint": "3f1c...",
                                 "reason": "why this is accepted (optional, kept)"}]}

A finding is baselined when code, path and source line match an entry, the line compared with
comments and whitespace removed (`source_line.normalise`), so it may move, be re-indented or
get a comment; entries without a source line match on the line number. `fingerprint` hashes
the same three things (SARIF's `partialFingerprints`). Each entry records its target, so one
file serves every target of a repository; an entry of the audited target (or one without a
target) that matched nothing although its rule ran is stale (`stale`, reported as ARF902).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import rel
from arfuse.audit.report.source_line import normalise
from arfuse.jsonfile import read_json

VERSION = 1


def _key(f: Finding, root: Path) -> dict[str, Any]:
    return {"code": f.code, "path": rel(f.path, root), "source": f.location.code, "line": f.line}


def fingerprint(f: Finding, root: Path) -> str:
    k = _key(f, root)
    text = f"{k['code']}|{k['path']}|{normalise(k['source']) or k['line']}"
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
    if not _same_file(str(entry.get("path", "")), key["path"]):
        return False
    if entry.get("source") and key["source"]:
        return normalise(entry["source"]) == normalise(key["source"])
    return entry.get("line") == key["line"]


def target_key(spec: str, root: Path) -> str:
    """How entries name a target: a `FILE.py:NAME` spec with FILE relative to `root`."""
    file, sep, name = spec.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{rel(str(Path(file).resolve()), root)}:{name}"
    return spec


def _same_file(a: str, b: str) -> bool:
    """Paths written relative to different working directories name the same file."""
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def _mine(entry: dict[str, Any], target: str) -> bool:
    return not entry.get("target") or _same_file(str(entry["target"]), target)


def match(
    findings: Iterable[Finding], entries: list[dict[str, Any]], root: Path
) -> tuple[set[int], set[int]]:
    """(indexes of findings covered by the baseline, indexes of the entries that covered one)."""
    covered, used = set(), set()
    for i, f in enumerate(findings):
        key = _key(f, root)
        hits = {j for j, e in enumerate(entries) if _matches(e, key)}
        if hits:
            covered.add(i)
            used |= hits
    return covered, used


def stale(
    entries: list[dict[str, Any]], used: set[int], target: str, ran: Iterable[str], root: Path
) -> list[int]:
    """Indexes of the audited target's entries that matched nothing although their rule ran."""
    ran = set(ran)
    target = target_key(target, root)
    return [
        j
        for j, e in enumerate(entries)
        if j not in used and e.get("code") in ran and _mine(e, target)
    ]


def entry_lines(path: Path) -> list[int]:
    """The line of each entry of a baseline file (where each `{` of the findings list opens),
    for pointing at a stale one; 1 for all when the layout is not ours."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines, depth, in_list, in_str, esc, line = [], 0, False, False, False, 1
    start = text.find('"findings"')
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        if i < start:
            continue
        if in_str:
            esc, in_str = (False, in_str) if esc else (c == "\\", c != '"')
            continue
        if c == '"':
            in_str = True
        elif c == "[" and not in_list:
            in_list, depth = True, 0
        elif in_list and c == "{":
            if depth == 0:
                lines.append(line)
            depth += 1
        elif in_list and c == "}":
            depth -= 1
        elif in_list and c == "]" and depth == 0:
            break
    return lines


def _entry(f: Finding, root: Path, target: str) -> dict[str, Any]:
    return {**_key(f, root), "target": target, "fingerprint": fingerprint(f, root)}


def _same(e: dict[str, Any]) -> tuple[Any, ...]:
    """Entries equal under this key accept the same findings."""
    return (e["code"], e["path"], normalise(e.get("source") or "") or e.get("line"))


def _text(entries: list[dict[str, Any]]) -> str:
    entries = sorted(entries, key=lambda e: (e["path"], e.get("line") or 0, e["code"]))
    return json.dumps({"version": VERSION, "findings": entries}, indent=2) + "\n"


def dump(findings: Iterable[Finding], root: Path, target: str = "") -> str:
    target = target_key(target, root)
    entries = {_same(e): e for e in (_entry(f, root, target) for f in findings)}
    return _text(list(entries.values()))


def write_text(
    path: Path, findings: Iterable[Finding], root: Path, target: str, keep_old: bool
) -> str:
    """The baseline file's new text: this target's findings replace its entries (other
    targets' entries stay; an entry that still matches keeps its "reason"), or, with
    `keep_old` (`--update-baseline`), are added to every entry already there."""
    existing = load(path) if path.exists() else []
    target = target_key(target, root)
    fresh = []
    for f in findings:
        e = _entry(f, root, target)
        reason = next((o["reason"] for o in existing if "reason" in o and _matches(o, e)), None)
        fresh.append(e if reason is None else {**e, "reason": reason})
    old = existing if keep_old else [e for e in existing if not _mine(e, target)]
    return _text(list({_same(e): e for e in [*old, *fresh]}.values()))
