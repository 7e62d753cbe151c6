"""The GPU unfused path's add + RMSNorm (+ static FP8) as one Triton kernel, one row per program.

    h    = dtype(f32(reduced) + f32(residual))       (a copy of `reduced` without residual)
    norm = dtype(f32(h) * rsqrt(mean(f32(h)^2) + eps) * (f32(weight) + weight_offset))
    q    = fp8(clamp(f32(norm) / scale, -FP8_MAX, FP8_MAX))

The same arithmetic, in the same order, as `exact.epilogue` (its reference), and the same
traffic as the kernel plain Inductor generates for the chain. It is compiled once per variant
(residual?, FP8?, dtype, hidden block): the token count only sets the grid, so no size
recompiles it and no Dynamo guard runs per call. Triton is imported on the first call only
(CPU installs never touch it).
"""

from __future__ import annotations

from typing import Any

import torch

from arfuse.kernels.args import FusedArgs, FusedResult
from arfuse.optable import FP8_MAX

_kernel: Any = None


def available() -> str | None:
    """None when the kernel can run here, else why not (Triton missing or broken)."""
    global _kernel
    if _kernel is None:
        try:
            from arfuse.kernels._add_rms_norm_triton import add_rms_norm

            _kernel = add_rms_norm
        except Exception as e:  # noqa: BLE001 - ImportError or an incompatible Triton
            return f"Triton add+RMSNorm kernel unavailable ({type(e).__name__}: {str(e)[:200]})"
    return None


def epilogue(args: FusedArgs, reduced: torch.Tensor) -> FusedResult:
    """`exact.epilogue` of this call on `reduced` (the allreduce result, contiguous, on CUDA),
    into fresh outputs. Call `available()` first."""
    out = args.new_outputs()
    hidden, residual, scale = args.hidden, args.residual, args.scale
    rows = reduced.numel() // hidden
    if rows:
        block = 1 << (hidden - 1).bit_length()
        _kernel[(rows,)](
            reduced,
            reduced if residual is None else residual,
            args.weight,
            args.weight if scale is None else scale,
            out.residual,
            out.norm,
            out.norm if out.quant is None else out.quant,
            hidden,
            float(args.eps),
            float(args.weight_offset),
            HAS_RESIDUAL=residual is not None,
            HAS_SCALE=scale is not None,
            FP8_LIMIT=FP8_MAX,
            BLOCK=block,
            num_warps=max(1, min(16, block // 512)),
        )
    return out
