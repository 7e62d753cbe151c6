"""FusionConfig: what the fusion pass matches and when it applies."""

from __future__ import annotations

from dataclasses import dataclass, field

from arfuse.patterns.spec import AXES, FusionSpec


def _frozen(values, axis: str) -> frozenset[str]:
    values = frozenset([values] if isinstance(values, str) else values)
    unknown = values - set(AXES[axis])
    if unknown:
        raise ValueError(f"FusionConfig: unknown {axis} form(s) {sorted(unknown)}; "
                         f"valid: {list(AXES[axis])}")
    return values


def _qualified(names, what: str) -> tuple[str, ...]:
    names = tuple([names] if isinstance(names, str) else names)
    for name in names:
        if name.count("::") != 1 or not all(name.split("::")):
            raise ValueError(f"FusionConfig.{what}: {name!r} is not a qualified op name; "
                             "write it as 'namespace::op_name' (e.g. 'vllm::all_reduce')")
    return tuple(sorted(set(names)))


@dataclass(frozen=True)
class FusionConfig:
    """Which fusion variants are on, and extra ops to treat as allreduce / norm.

    allreduce/norm/residual/quant: the forms (see `arfuse patterns`) the pass may fuse.
    allreduce_ops: functional sum-allreduce ops, 'ns::name', taking (Tensor, ..., str group_name).
    norm_ops: RMSNorm ops, 'ns::name', taking (Tensor input, Tensor weight, float eps).
    hidden_multiple: the fused kernel needs hidden % hidden_multiple == 0 (FlashInfer: 8).
    """

    allreduce: frozenset[str] = field(default=frozenset(AXES["allreduce"]))
    norm: frozenset[str] = field(default=frozenset(AXES["norm"]))
    residual: frozenset[str] = field(default=frozenset(AXES["residual"]))
    quant: frozenset[str] = field(default=frozenset(AXES["quant"]))
    allreduce_ops: tuple[str, ...] = ()
    norm_ops: tuple[str, ...] = ()
    hidden_multiple: int = 8

    def __post_init__(self) -> None:
        for axis in AXES:
            object.__setattr__(self, axis, _frozen(getattr(self, axis), axis))
        object.__setattr__(self, "allreduce_ops", _qualified(self.allreduce_ops, "allreduce_ops"))
        object.__setattr__(self, "norm_ops", _qualified(self.norm_ops, "norm_ops"))
        if self.hidden_multiple < 1:
            raise ValueError(f"FusionConfig.hidden_multiple must be >= 1, got "
                             f"{self.hidden_multiple}")

    def enables(self, spec: FusionSpec) -> bool:
        return all(getattr(spec, axis) in getattr(self, axis) for axis in AXES)

    def key(self) -> str:
        """A stable text of every field, for the pass's cache key."""
        parts = [f"{axis}={sorted(getattr(self, axis))}" for axis in AXES]
        parts += [f"allreduce_ops={list(self.allreduce_ops)}", f"norm_ops={list(self.norm_ops)}",
                  f"hidden_multiple={self.hidden_multiple}"]
        return ";".join(parts)
