"""The token domain: the num_tokens a model must serve, and a guard's verdict over it.

A guard matters only if it can fail for a token count the model serves. `arfuse.audit.judge.truth`
evaluates each guard at every count of the domain; a `Verdict` says where it holds:

    holds on [2, 2048]: "valid for num_tokens in [2, 2,048]; recompiles at 2,048 -> 2,049"
    holds everywhere:   "always holds for num_tokens in [1, 32,768]" (not a finding)

Sizes 0 and 1 are left out: torch specializes them on every dynamic dim (a dynamic size's range
starts at 2), so a guard that only fails at 1 is torch's own bound, not a decision. No numpy
here: `import arfuse.audit.judge.domain` stays cheap for the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

from arfuse.audit.options import DEFAULT_MAX_TOKENS, DEFAULT_MIN_TOKENS

MAX_DOMAIN = 1 << 26  # exhaustive evaluation stays a few MB per operand in chunks
_FIRST_DYNAMIC = 2  # torch specializes sizes 0 and 1


@dataclass(frozen=True)
class TokenDomain:
    """The num_tokens a model must serve: every integer in [lo, hi]."""

    lo: int = DEFAULT_MIN_TOKENS
    hi: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        for name, v in (("min_tokens", self.lo), ("max_tokens", self.hi)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive whole number of tokens, got {v!r}")
        if self.hi < self.lo:
            raise ValueError(
                f"max_tokens ({self.hi}) is below min_tokens ({self.lo}); the token "
                f"domain is [min_tokens, max_tokens]"
            )
        if self.hi > MAX_DOMAIN:
            raise ValueError(
                f"max_tokens {self.hi:,} is above {MAX_DOMAIN:,}, the largest domain "
                f"judged exhaustively; no serving engine batches more tokens"
            )

    @property
    def judged(self) -> tuple[int, int]:
        """The part of the domain a dynamic graph serves (sizes 0/1 get their own graph)."""
        return max(self.lo, _FIRST_DYNAMIC), max(self.hi, _FIRST_DYNAMIC)

    def __str__(self) -> str:
        return f"[{self.lo:,}, {self.hi:,}]"


@dataclass(frozen=True)
class Verdict:
    """Where a guard holds inside the domain.

    shape: "always" (not a finding), "never", "point" (one count), "except" (every count but a
    few), "interval" (a few contiguous runs), "periodic" (a residue class), "unknown"."""

    expr: str
    shape: str
    domain: TokenDomain
    runs: tuple[tuple[int, int], ...] = ()  # maximal [a, b] where it holds
    flips: tuple[int, ...] = ()  # n where validity changes between n and n + 1
    period: int = 0
    residues: tuple[int, ...] = ()  # n % period where it holds (periodic)
    excluded: tuple[int, ...] = ()  # counts where it fails (except)
    since: int = 0  # periodic from this count on
    reason: str = ""  # why it could not be judged (unknown)

    def describe(self) -> str:
        """One human line: where the compiled graph stays valid and where it stops."""
        if self.shape == "always":
            return f"always holds for num_tokens in {self.domain}"
        if self.shape == "never":
            return f"fails for every num_tokens in {self.domain}"
        if self.shape == "unknown":
            return f"could not be judged ({self.reason})"
        if self.shape == "point":
            return f"valid for num_tokens={self.runs[0][0]:,} only"
        if self.shape == "except":
            return f"valid for every num_tokens except {_join(self.excluded)}"
        if self.shape == "periodic":
            res = ", ".join(str(r) for r in self.residues[:8])
            more = ", ..." if len(self.residues) > 8 else ""
            lo = self.domain.judged[0]
            since = f" (from {self.since:,} on)" if self.since > lo else ""
            return (
                f"valid only for num_tokens % {self.period} in {{{res}{more}}}{since}: every "
                f"other remainder recompiles"
            )
        runs = ", ".join(f"[{a:,}, {b:,}]" for a, b in self.runs[:4])
        more = " ..." if len(self.runs) > 4 else ""
        return f"valid for num_tokens in {runs}{more}; {recompiles_at(self.flips)}"


def recompiles_at(flips: tuple[int, ...] | list[int]) -> str:
    """`recompiles at 2,048 -> 2,049`: the first few flips of one or several verdicts."""
    steps = [f"{f:,} -> {f + 1:,}" for f in flips[:4]]
    more = f" (+{len(flips) - 4} more)" if len(flips) > 4 else ""
    return f"recompiles at {', '.join(steps)}{more}" if steps else "never recompiles"


def _join(values: tuple[int, ...]) -> str:
    return ", ".join(f"{v:,}" for v in values)
