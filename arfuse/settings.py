"""What the operator chose for the fused ops' GPU backend, read from the environment at import.

    ARFUSE_FLASHINFER_STRATEGY=oneshot|twoshot|unfused   force a strategy (tests, benchmarks)
    ARFUSE_TWOSHOT=0      the thresholds' two-shot window runs unfused (and `arfuse.compile`
                          leaves it to Inductor); `FusionPolicy.current()` reads it from here
    ARFUSE_FLASHINFER_PDL=0   launch without programmatic dependent launch

`settings` is the one live copy; `force_strategy()` / `forced_strategy()` change it in-process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

STRATEGY_ENV = "ARFUSE_FLASHINFER_STRATEGY"
TWOSHOT_ENV = "ARFUSE_TWOSHOT"
PDL_ENV = "ARFUSE_FLASHINFER_PDL"
STRATEGIES = ("auto", "oneshot", "twoshot", "unfused")


def check_strategy(name: str | None) -> str:
    name = (name or "auto").strip().lower()
    if name not in STRATEGIES:
        raise ValueError(
            f"{STRATEGY_ENV}/force_strategy: unknown strategy {name!r}; choose one of {STRATEGIES}"
        )
    return name


@dataclass
class Settings:
    strategy: str = "auto"  # 'auto': the thresholds decide
    twoshot: bool = True  # the two-shot window runs the two-shot kernel
    pdl: bool = True  # the kernel may start while the previous one finishes (it waits to read)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            strategy=check_strategy(environ.get(STRATEGY_ENV)),
            twoshot=environ.get(TWOSHOT_ENV, "1") != "0",
            pdl=environ.get(PDL_ENV, "1") != "0",
        )


settings = Settings.from_env()


def force_strategy(name: str | None) -> None:
    """Force 'oneshot', 'twoshot' or 'unfused' (None/'auto': the thresholds decide).

    For tests and benchmarks. A forced kernel strategy still needs the input to fit the
    workspace (sized from the thresholds) and two-shot still needs tokens > world size; the
    one-shot kernel runs where two-shot cannot."""
    settings.strategy = check_strategy(name)


@contextlib.contextmanager
def forced_strategy(name: str | None) -> Iterator[None]:
    saved = settings.strategy
    force_strategy(name)
    try:
        yield
    finally:
        settings.strategy = saved
