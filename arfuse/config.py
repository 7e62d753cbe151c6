"""FusionConfig: what the fusion pass matches and when it applies."""

from __future__ import annotations

from dataclasses import dataclass, field

from arfuse import optable
from arfuse.patterns.spec import AXES, FusionSpec


def _frozen(values, axis: str) -> frozenset[str]:
    values = frozenset([values] if isinstance(values, str) else values)
    unknown = values - set(AXES[axis])
    if unknown:
        raise ValueError(
            f"FusionConfig: unknown {axis} form(s) {sorted(unknown)}; valid: {list(AXES[axis])}"
        )
    return values


def _qualified(names, what: str) -> tuple[str, ...]:
    names = tuple([names] if isinstance(names, str) else names)
    for name in names:
        if name.count("::") != 1 or not all(name.split("::")):
            raise ValueError(
                f"FusionConfig.{what}: {name!r} is not a qualified op name; "
                "write it as 'namespace::op_name' (e.g. 'vllm::all_reduce')"
            )
    return tuple(sorted(set(names)))


@dataclass(frozen=True)
class FusionConfig:
    """Which fusion variants are on, and extra ops to treat as allreduce / norm.

    allreduce/norm/residual/quant: the forms (see `arfuse patterns`) the pass may fuse.
    allreduce_ops: functional sum-allreduce ops, 'ns::name', taking (Tensor, ..., str group_name).
    norm_ops: RMSNorm ops, 'ns::name', taking (Tensor input, Tensor weight, float eps).
    hidden_multiple: the fused kernel needs hidden % hidden_multiple == 0 (FlashInfer: 8).
    token_range: (lo, hi) inclusive, hi None = unbounded: the graph is compiled only for
        num_tokens in this range (set by `arfuse.compile` per compile range); the pass fuses a
        chain only if the whole range lies at or below its fusion threshold.
    fused_max_tokens: override the thresholds table's fusion limit (in tokens), for
        `token_range` decisions and, without a token range, for the run-time branch between
        the fused op and plain Inductor's chain (`arfuse.token_branch`); None = the table for
        the chain's GPU, world size, dtype and hidden (no table, e.g. on CPU: fuse at every
        size, no branch).
    token_branch: where the token count is dynamic and a fusion limit applies, emit each chain
        as a run-time branch (the op up to the limit, plain Inductor's kernels above it;
        `arfuse.token_branch`). It costs a few microseconds of host time per chain and call, so
        an eager model that never runs past the limit may prefer False: the op alone, which
        runs its own unfused path above the limit.
    """

    allreduce: frozenset[str] = field(default=frozenset(AXES["allreduce"]))
    norm: frozenset[str] = field(default=frozenset(AXES["norm"]))
    residual: frozenset[str] = field(default=frozenset(AXES["residual"]))
    quant: frozenset[str] = field(default=frozenset(AXES["quant"]))
    allreduce_ops: tuple[str, ...] = ()
    norm_ops: tuple[str, ...] = ()
    hidden_multiple: int = optable.HIDDEN_MULTIPLE
    token_range: tuple[int, int | None] | None = None
    fused_max_tokens: int | None = None
    token_branch: bool = True

    def __post_init__(self) -> None:
        for axis in AXES:
            object.__setattr__(self, axis, _frozen(getattr(self, axis), axis))
        object.__setattr__(self, "allreduce_ops", _qualified(self.allreduce_ops, "allreduce_ops"))
        object.__setattr__(self, "norm_ops", _qualified(self.norm_ops, "norm_ops"))
        if self.token_range is not None:
            lo, hi = self.token_range
            if lo < 1 or (hi is not None and hi < lo):
                raise ValueError(
                    f"FusionConfig.token_range {self.token_range} must be (lo, hi) "
                    "with 1 <= lo <= hi, or (lo, None) for no upper bound"
                )
            object.__setattr__(self, "token_range", (int(lo), None if hi is None else int(hi)))
        if self.fused_max_tokens is not None and self.fused_max_tokens < 0:
            raise ValueError(
                f"FusionConfig.fused_max_tokens must be >= 0, got {self.fused_max_tokens}"
            )
        if self.hidden_multiple < 1:
            raise ValueError(
                f"FusionConfig.hidden_multiple must be >= 1, got {self.hidden_multiple}"
            )

    def enables(self, spec: FusionSpec) -> bool:
        return all(getattr(spec, axis) in getattr(self, axis) for axis in AXES)

    def key(self) -> str:
        """A stable text of every field, for the pass's cache key."""
        parts = [f"{axis}={sorted(getattr(self, axis))}" for axis in AXES]
        parts += [
            f"allreduce_ops={list(self.allreduce_ops)}",
            f"norm_ops={list(self.norm_ops)}",
            f"hidden_multiple={self.hidden_multiple}",
            f"token_range={self.token_range}",
            f"fused_max_tokens={self.fused_max_tokens}",
            f"token_branch={self.token_branch}",
        ]
        return ";".join(parts)
