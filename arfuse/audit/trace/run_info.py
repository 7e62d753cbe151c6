"""What the driver knows about a run (`run.json`): the sizes it fed, which sources are token
dims, and how each call ended. A bare trace (an offline audit without run.json) gets the
defaults: any `.size()[0]` is a token dim."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arfuse.audit.options import DEFAULT_MAX_TOKENS, DEFAULT_MIN_TOKENS


@dataclass
class CallResult:
    index: int
    num_tokens: int
    ok: bool = True
    error_type: str = ""
    error: str = ""
    rank: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CallResult:
        return cls(
            **{
                k: d[k]
                for k in ("index", "num_tokens", "ok", "error_type", "error", "rank")
                if k in d
            }
        )


@dataclass
class RunInfo:
    """What the driver did. Defaults describe a bare trace: any `.size()[0]` is a token dim."""

    target: str = "<trace>"
    sizes: list[int] = field(default_factory=list)
    token_sources: list[str] = field(default_factory=list)
    token_dims: dict[str, list[int]] = field(default_factory=dict)  # arg name -> dims
    calls: list[CallResult] = field(default_factory=list)
    world_size: int = 1
    ranks: list[int] = field(default_factory=lambda: [0])
    backend: str = ""
    strict: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    min_tokens: int = DEFAULT_MIN_TOKENS  # the token domain the model must serve
    max_tokens: int = DEFAULT_MAX_TOKENS

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["calls"] = [c.__dict__ for c in self.calls]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunInfo:
        d = dict(d)
        d["calls"] = [CallResult.from_json(c) for c in d.get("calls", [])]
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def load(cls, path: str | Path) -> RunInfo:
        return cls.from_json(json.loads(Path(path).read_text()))
