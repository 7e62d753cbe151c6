"""FusionPolicy: the measured facts that decide, at compile time, which token ranges fuse.

The pass and `arfuse.compile` read the thresholds table and the two-shot switch from a policy
object handed to them, not from module state, and the policy's `key()` joins the pass's
`uuid()`: a graph compiled under one table is never served from the FX graph cache under
another.

The pass also writes its policy's `digest()` into every fused op it emits (the op's `policy`
argument), and the FlashInfer plan resolves it back with `resolve()`, so a graph fuses and runs
under one table: the one its pass was given, not whatever the process's globals say at run time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from arfuse import thresholds
from arfuse.thresholds import Limits, Thresholds


@dataclass(frozen=True)
class FusionPolicy:
    """table: arch -> world size -> Thresholds (`arfuse thresholds`); twoshot: whether the
    table's two-shot window runs the two-shot kernel (else it is left unfused)."""

    table: Mapping[str, Mapping[int, Thresholds]] = field(default_factory=thresholds.table)
    twoshot: bool = True

    @classmethod
    def current(cls) -> FusionPolicy:
        """The policy in force in this process: the thresholds table (defaults, the
        ARFUSE_THRESHOLDS file, any override) and ARFUSE_TWOSHOT, read now."""
        from arfuse.settings import settings

        return cls(thresholds.table(), settings.twoshot)

    def limits(
        self, capability: Any, world_size: int, dtype: torch.dtype, hidden: int
    ) -> Limits | None:
        return thresholds.lookup(capability, world_size, dtype, hidden, self.table)

    def fused_max_tokens(self, limits: Limits) -> int:
        """Up to how many tokens a chain with these limits fuses."""
        return limits.fused_max_tokens if self.twoshot else limits.oneshot_max_tokens

    def key(self) -> str:
        """A stable text of the policy, for the pass's cache key."""
        return json.dumps(
            {"thresholds": thresholds.to_json(self.table), "twoshot": self.twoshot}, sort_keys=True
        )

    def digest(self) -> str:
        """A short content hash of `key()`, the fused op's `policy` argument; taking it makes
        `resolve(digest)` return this policy in this process."""
        _BY_DIGEST.setdefault(self._digest, self)
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return hashlib.sha256(self.key().encode()).hexdigest()[:16]


# Every policy whose digest was taken in this process. Not run-time state that can drift: a
# digest names the policy's content and a FusionPolicy is frozen, so an entry never changes;
# it is a cache from the name in a compiled graph back to the object. A graph served from the
# FX graph cache finds its entry too: a cache hit needs the pass's uuid(), which takes it.
_BY_DIGEST: dict[str, FusionPolicy] = {}
# FusionPolicy.current() for direct calls ("" digest), rebuilt when the table or switch changes
_current: tuple[tuple[int, bool], FusionPolicy] | None = None


def resolve(digest: str) -> FusionPolicy:
    """The policy a fused op was compiled under, from its `policy` argument; "" (a direct call
    of the op, not emitted by the pass) is `FusionPolicy.current()`."""
    global _current
    if not digest:
        from arfuse.settings import settings

        stamp = (thresholds.generation(), settings.twoshot)
        if _current is None or _current[0] != stamp:
            _current = (stamp, FusionPolicy.current())
        return _current[1]
    try:
        return _BY_DIGEST[digest]
    except KeyError:
        raise ValueError(
            f"arfuse: fused op compiled under policy {digest!r}, which no AllReduceFusionPass "
            "in this process was built with; build the pass with the same FusionPolicy "
            "(thresholds table and two-shot switch) before running the compiled graph"
        ) from None
