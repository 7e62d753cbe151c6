"""The unit of output: one `Finding` per (rule, source line), with everything a report needs."""

from __future__ import annotations

import linecache
import os
from dataclasses import dataclass, field
from typing import Any

from arfuse.audit.trace.records import Frame


@dataclass(frozen=True)
class Location:
    path: str
    line: int
    name: str = ""
    code: str = ""  # the source line, stripped ("" when unknown)

    @classmethod
    def of(cls, frame: Frame) -> Location:
        code = (frame.loc or "").strip()
        if not code and frame.line > 0 and os.path.isfile(frame.filename):
            code = linecache.getline(frame.filename, frame.line).strip()
        return cls(frame.filename, frame.line, frame.name, code)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line}


@dataclass
class Finding:
    """One problem at one source line. `details` lists the evidence (guards, recompiles)."""

    code: str
    name: str
    message: str
    location: Location
    expr: str = ""
    symbol: str = ""
    compile_id: str = ""
    frames: list[Location] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # call sizes that hit it
    ranks: list[int] = field(default_factory=list)
    fix: str = ""

    @property
    def path(self) -> str:
        return self.location.path

    @property
    def line(self) -> int:
        return self.location.line

    def sort_key(self) -> tuple:
        return (self.path, self.line, self.code)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "expr": self.expr,
            "symbol": self.symbol,
            "compile_id": self.compile_id,
            "frames": [f.to_json() for f in self.frames],
            "source": self.location.code,
            "details": list(self.details),
            "num_tokens": list(self.num_tokens),
            "ranks": list(self.ranks),
            "fix": self.fix,
        }
