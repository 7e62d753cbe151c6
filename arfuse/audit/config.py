"""`[tool.arfuse]`: a repository's audit settings, found like ruff finds `[tool.ruff]`.

    [tool.arfuse]
    targets = ["audit/targets.py:build", "audit/targets.py:build_tp"]
    select = ["ARF1", "ARF2"]
    ignore = ["ARF107"]
    baseline = "audit/baseline.json"
    min-tokens = 1
    max-tokens = 16384
    sizes = [1, 16, 2047, 2048, 2049]
    timeout = 900

    [tool.arfuse.per-file-ignores]
    "models/legacy/*.py" = ["ARF102"]

`find(start)` walks from `start` (the working directory) upward and returns the first
`pyproject.toml` that has a `[tool.arfuse]` table; `load(path)` reads one (`--config PATH`: a
`pyproject.toml`, or any other TOML file whose top level is the table). Paths in it (`baseline`,
`per-file-ignores` patterns, file targets) are relative to the file's directory. An unknown key
or a value of the wrong type is a ValueError naming the file and the key. Command-line flags
override every key (the CLI passes the file to click as its `default_map`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arfuse.audit.options import AuditOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the tomli backport (a dependency on 3.10 only)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

SECTION = "tool.arfuse"


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _positive_ints(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    )


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _per_file(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _str_list(c) for k, c in v.items())


# key -> (check, what a valid value is)
KEYS: dict[str, tuple[Any, str]] = {
    "targets": (_str_list, 'a list of targets, e.g. ["audit/targets.py:build"]'),
    "select": (_str_list, 'a list of rule codes or prefixes, e.g. ["ARF1"]'),
    "ignore": (_str_list, 'a list of rule codes or prefixes, e.g. ["ARF107"]'),
    "per-file-ignores": (_per_file, 'a table of glob = [codes], e.g. "legacy/*.py" = ["ARF102"]'),
    "baseline": (lambda v: isinstance(v, str) and bool(v), "a path (string)"),
    "min-tokens": (_positive_int, "a positive integer"),
    "max-tokens": (_positive_int, "a positive integer"),
    "sizes": (_positive_ints, "a non-empty list of positive token counts, e.g. [16, 2048]"),
    "timeout": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "a positive number of seconds",
    ),
}


@dataclass(frozen=True)
class FileConfig:
    """One `[tool.arfuse]` table, checked, with its paths made absolute."""

    path: Path | None = None  # the file it came from (None: no file, all defaults)
    values: dict[str, Any] = field(default_factory=dict)  # keys as written (kebab-case)

    @property
    def root(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def per_file_ignores(self) -> dict[str, list[str]]:
        """{absolute glob: codes}; patterns are relative to the config file's directory."""
        return {str(self.root / k): list(v) for k, v in self.get("per-file-ignores", {}).items()}

    def default_map(self) -> dict[str, Any]:
        """The values as `arfuse audit`'s click parameters take them (its `default_map`)."""
        out: dict[str, Any] = {}
        for key in ("select", "ignore", "min-tokens", "max-tokens", "timeout"):
            if key in self.values:
                out[key.replace("-", "_")] = self.values[key]
        if "sizes" in self.values:
            out["sizes"] = ",".join(map(str, self.values["sizes"]))
        if "baseline" in self.values:
            out["baseline"] = str(self.root / self.values["baseline"])
        return out

    def options(self, **overrides: Any) -> AuditOptions:
        """The `AuditOptions` of this table (for `arfuse.audit.audit()` and the pytest plugin);
        keyword arguments override its keys."""
        fields: dict[str, Any] = {
            k.replace("-", "_"): v
            for k, v in self.values.items()
            if k not in ("targets", "per-file-ignores", "baseline")
        }
        if "baseline" in self.values:
            fields["baseline"] = self.root / self.values["baseline"]
        fields["per_file_ignores"] = self.per_file_ignores()
        return AuditOptions.of(None, **{**fields, **overrides})

    def targets(self) -> list[str]:
        """The declared targets; `FILE.py:NAME` relative to the working directory (absolute
        when the file is not under it), `pkg.module:NAME` as written."""
        out = []
        for t in self.get("targets", []):
            file, sep, name = t.rpartition(":")
            if sep and file.endswith(".py"):
                where = (self.root / file).resolve()
                here = Path.cwd().resolve()
                shown = where.relative_to(here) if where.is_relative_to(here) else where
                t = f"{shown}:{name}"
            out.append(t)
        return out


def _table(path: Path) -> dict[str, Any] | None:
    """The `[tool.arfuse]` table of `path` (None: a pyproject.toml without one)."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ValueError(f"config {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {path}: not valid TOML ({exc})") from None
    if path.name != "pyproject.toml":
        return data
    table = data.get("tool", {}).get("arfuse")
    if table is not None and not isinstance(table, dict):
        raise ValueError(f"config {path}: [{SECTION}] must be a table")
    return table


def check(table: dict[str, Any], where: str) -> dict[str, Any]:
    """`table` if every key is known and well typed; else a ValueError naming the key."""
    for key, value in table.items():
        if key not in KEYS:
            near = [k for k in KEYS if k.replace("-", "_") == key or k.replace("-", "") == key]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(
                f"{where}: unknown key {key!r}{hint}; [{SECTION}] takes {', '.join(KEYS)}"
            )
        ok, what = KEYS[key]
        if not ok(value):
            raise ValueError(f"{where}: {key} = {value!r} is not valid; it takes {what}")
    lo, hi = table.get("min-tokens", 1), table.get("max-tokens")
    if hi is not None and lo > hi:
        raise ValueError(f"{where}: min-tokens = {lo} is above max-tokens = {hi}")
    return table


def load(path: str | Path) -> FileConfig:
    """`--config PATH`: a pyproject.toml (its `[tool.arfuse]`) or a TOML file of the table."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    table = _table(path)
    if table is None:
        raise ValueError(f"--config {path}: it has no [{SECTION}] table")
    section = f"[{SECTION}]" if path.name == "pyproject.toml" else "the top level"
    return FileConfig(path, check(table, f"config {path}, {section}"))


def find(start: str | Path | None = None) -> FileConfig:
    """The first pyproject.toml with a `[tool.arfuse]` table from `start` upward (like ruff:
    one without the table is skipped); an empty FileConfig when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        candidate = d / "pyproject.toml"
        if candidate.is_file():
            table = _table(candidate)
            if table is not None:
                return FileConfig(candidate, check(table, f"config {candidate}, [{SECTION}]"))
    return FileConfig()
