"""What one audit is asked to do: `AuditOptions`, built once (by `arfuse audit` or by
`arfuse.audit.audit()`) and passed down whole - to the runner, the worker's config and the
judge. It owns every default; the CLI help reads them from here.

    opts = AuditOptions(sizes=(16, 2048, 2049), select=("ARF1",), max_tokens=65536)
    report = audit("model.py:build", options=opts)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The sweep when neither the caller nor the target names sizes: both sides of the powers of
#: two that kernels and attention backends switch at, plus a decode and a prefill size.
DEFAULT_SIZES = (1, 2, 16, 255, 256, 2047, 2048, 2049, 8192)
DEFAULT_MIN_TOKENS = 1
DEFAULT_MAX_TOKENS = 32768  # 2-4x the prefill chunks vLLM and SGLang schedule by default (8k-16k)
DEFAULT_TIMEOUT = 600.0  # seconds before a live target's process is killed


def _tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class AuditOptions:
    """Every knob of one audit. `None` for sizes / min_tokens / max_tokens: the target's own
    (for an offline audit: the recorded run's)."""

    sizes: tuple[int, ...] | None = None  # num_tokens to sweep; None: the target's or the default
    strict: bool = False  # mark_dynamic instead of maybe_mark_dynamic
    dtrace: bool = False  # TORCH_DTRACE instead of TORCH_TRACE
    backend: str | None = None  # overrides the target's torch.compile backend
    timeout: float = DEFAULT_TIMEOUT
    select: tuple[str, ...] = ()  # rule codes or prefixes, ruff-style
    ignore: tuple[str, ...] = ()
    baseline: Path | None = None  # accepted findings
    keep: Path | None = None  # the run's directory (trace, run.json, worker log); None: a temp dir
    progress: bool = False
    token_sources: tuple[str, ...] = ()  # offline: which sizes are num_tokens (torch's names)
    min_tokens: int | None = None  # the token domain guards are judged over
    max_tokens: int | None = None
    # [tool.arfuse] per-file-ignores: (glob, codes or prefixes); a dict is accepted too
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        for name in ("sizes", "select", "ignore", "token_sources"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        pfi = self.per_file_ignores
        items = pfi.items() if isinstance(pfi, dict) else pfi
        object.__setattr__(self, "per_file_ignores", tuple((g, tuple(c)) for g, c in items))
        for name in ("baseline", "keep"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.select is None or self.ignore is None or self.token_sources is None:
            raise ValueError("select, ignore and token_sources are sequences (may be empty)")

    @classmethod
    def of(cls, options: AuditOptions | None = None, **fields: Any) -> AuditOptions:
        """`options` (default: all defaults) with `fields` replaced; unknown names are a
        TypeError naming the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(
                f"unknown audit option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(options or cls(), **fields)
