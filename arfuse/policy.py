"""FusionPolicy: the measured facts that decide, at compile time, which token ranges fuse.

The pass and `arfuse.compile` read the thresholds table and the two-shot switch from a policy
object handed to them, not from module state, and the policy's `key()` joins the pass's
`uuid()`: a graph compiled under one table is never served from the FX graph cache under
another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
        from arfuse.kernels.flashinfer.settings import settings

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
