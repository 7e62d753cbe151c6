"""The exact unfused path: allreduce, then add + RMSNorm (+ FP8 quant) with float32 accumulation.

Runs anywhere torch.distributed runs (gloo on CPU, NCCL on GPU). It is the reference the GPU
kernels are held to and the fallback whenever a fused kernel does not apply.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from arfuse.kernels.args import FP8, FusedArgs, FusedResult
from arfuse.optable import FP8_MAX


def rms_norm_f32(
    x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float
) -> torch.Tensor:
    xf = x.to(torch.float32)
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed * (weight.to(torch.float32) + weight_offset)


def all_reduce(input: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    out = input.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, group=group)
    return out


def quant_fp8_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static per-tensor FP8 e4m3 quantization, written in the form the pass matches."""
    return (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def epilogue(
    reduced: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    eps: float,
    weight_offset: float,
) -> FusedResult:
    """What follows the allreduce: the reference of the GPU unfused path's Triton kernel
    (`triton_epilogue`)."""
    if residual is None:
        residual_out = reduced
    else:
        residual_out = (reduced.to(torch.float32) + residual.to(torch.float32)).to(reduced.dtype)
    norm_out = rms_norm_f32(residual_out, weight, eps, weight_offset).to(reduced.dtype)
    quant = None if scale is None else quant_fp8_static(norm_out, scale)
    return FusedResult(quant, norm_out, residual_out)


def epilogue_inputs(args: FusedArgs, reduced: torch.Tensor) -> tuple:
    """`epilogue`'s arguments for this call, given the allreduce result."""
    return (reduced, args.residual, args.weight, args.scale, args.eps, args.weight_offset)


def unfused(args: FusedArgs) -> FusedResult:
    """What a fused op computes, unfused: allreduce, then the epilogue."""
    return epilogue(*epilogue_inputs(args, all_reduce(args.input, args.group)))
