"""The one spec every fusion variant comes from.

A variant is a point in the product of four independent axes:

    allreduce  x  norm  x  residual  x  quant
    c10d          hf       none         none
    arfuse        rms_norm ar+res       fp8
    custom        gemma    res+ar
                  custom_op

`all_specs()` enumerates them (72); the matcher (`arfuse.patterns.match`) has one recogniser per
axis (`match_allreduce`, `match_norm`, `match_quant`) and composes their results, so adding a
norm form means a branch in `match_norm` plus its name here, not a class per combination.
dtype (bf16/fp16/fp32), eps and 2-D/3-D shapes are not axes: the matcher
reads them off the graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from arfuse import optable

ALLREDUCE_FORMS = ("c10d", "arfuse", "custom")
NORM_FORMS = ("hf", "rms_norm", "gemma", "custom_op")
RESIDUAL_FORMS = ("none", "ar+res", "res+ar")
QUANT_FORMS = ("none", "fp8")

AXES = {
    "allreduce": ALLREDUCE_FORMS,
    "norm": NORM_FORMS,
    "residual": RESIDUAL_FORMS,
    "quant": QUANT_FORMS,
}

DESCRIPTIONS = {
    "c10d": "torch.distributed functional all_reduce (+ wait_tensor), as DTensor TP emits",
    "arfuse": "arfuse::all_reduce custom op",
    "custom": "a functional allreduce op named in FusionConfig.allreduce_ops",
    "hf": "HF/Llama RMSNorm: float32 upcast, x * rsqrt(mean(x^2) + eps), cast, weight *",
    "rms_norm": "torch.nn.functional.rms_norm (weight applied in float32, then cast)",
    "gemma": "Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight)",
    "custom_op": "arfuse::rms_norm or a norm op named in FusionConfig.norm_ops",
    "none": "no residual add / no quantization",
    "ar+res": "allreduce_out + residual",
    "res+ar": "residual + allreduce_out",
    "fp8": "static per-tensor FP8 e4m3: (x / scale).clamp(-448, 448).to(float8_e4m3fn)",
}


@dataclass(frozen=True, order=True)
class FusionSpec:
    allreduce: str
    norm: str
    residual: str
    quant: str

    def __post_init__(self) -> None:
        for axis, allowed in AXES.items():
            value = getattr(self, axis)
            if value not in allowed:
                raise ValueError(f"unknown {axis} form {value!r}; choose one of {allowed}")

    @property
    def name(self) -> str:
        return f"{self.allreduce}/{self.norm}/{self.residual}/{self.quant}"

    @property
    def fused_op(self) -> str:
        """The op the pass emits (FP8: `FUSED_RMSNORM_FP8` instead where the graph also reads
        the bf16 norm)."""
        return optable.FUSED_RMSNORM_QUANT_FP8 if self.quant == "fp8" else optable.FUSED_RMSNORM

    @classmethod
    def parse(cls, name: str) -> FusionSpec:
        parts = name.split("/")
        if len(parts) != 4:
            raise ValueError(
                f"pattern name {name!r} must look like 'c10d/hf/ar+res/none' "
                "(allreduce/norm/residual/quant)"
            )
        return cls(*parts)


def all_specs() -> Iterator[FusionSpec]:
    for combo in itertools.product(*AXES.values()):
        yield FusionSpec(*combo)
