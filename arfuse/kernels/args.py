"""FusedArgs and FusedResult: one fused call's inputs and outputs, as every kernel path reads them.

The op implementations (`arfuse.ops`) build one `FusedArgs` per call; dispatch
(`kernels.run_fused`), the exact path, FlashInfer's plan and launch and the GPU unfused path all
take it whole, so adding an input changes this type, not every signature on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from arfuse.optable import FP8_DTYPE

FP8 = getattr(torch, FP8_DTYPE)  # the quant output's dtype


class FusedResult(NamedTuple):
    """(quant, norm, residual): quant is None without an FP8 scale, norm is None when the call
    does not want it (`FusedArgs.norm`); `residual` is the sum fed to the norm (the allreduce
    result itself when the call has no residual)."""

    quant: torch.Tensor | None
    norm: torch.Tensor | None
    residual: torch.Tensor


@dataclass(frozen=True)
class FusedArgs:
    """all_reduce(input) over `group` [+ residual] -> RMSNorm(eps, weight + weight_offset)
    [-> static per-tensor FP8 with `scale`]."""

    input: torch.Tensor
    residual: torch.Tensor | None
    weight: torch.Tensor
    scale: torch.Tensor | None  # float32, one element; None: no FP8 output
    eps: float
    weight_offset: float  # added to the norm weight: 1.0 for Gemma's (1 + weight), else 0.0
    group: dist.ProcessGroup
    policy: str = ""  # FusionPolicy.digest() of the pass that emitted the op; "": in force now
    norm: bool = True  # whether the bf16 norm is an output (False: FP8 only, `_quant_fp8`)

    @property
    def hidden(self) -> int:
        return self.input.shape[-1]

    @property
    def tokens(self) -> int:
        return self.input.numel() // self.hidden

    def new_outputs(self) -> FusedResult:
        """Uninitialised outputs of this call's shapes, for kernels that write in place."""
        x = self.input
        quant = None if self.scale is None else torch.empty_like(x, dtype=FP8)
        norm = torch.empty_like(x) if self.norm else None
        return FusedResult(quant, norm, torch.empty_like(x))
