"""arfuse's custom ops (namespace `arfuse`), their fake kernels and their dispatch.

    arfuse::all_reduce(Tensor input, str group_name) -> Tensor
        Functional sum-allreduce over the named group: an opaque collective for frameworks
        that hide their communication behind one op (vLLM-style).
    arfuse::rms_norm(Tensor input, Tensor weight, float eps) -> Tensor
        RMSNorm over the last dim with float32 accumulation: a custom-op norm form.
    arfuse::fused_allreduce_rmsnorm(Tensor(a!) input, residual?, weight, eps, weight_offset,
        group_name, policy="") -> (norm_out, residual_out)
    arfuse::fused_allreduce_rmsnorm_fp8(Tensor(a!) input, residual?, weight, scale, eps,
        weight_offset, group_name, policy="") -> (quant_out, norm_out, residual_out)
    arfuse::fused_allreduce_rmsnorm_quant_fp8(... the same inputs ...) -> (quant_out, residual_out)
        all_reduce(input) [+ residual] -> RMSNorm [-> static per-tensor FP8 e4m3]. The outputs
        are new tensors; `residual_out` is the sum fed to the norm (the allreduce result itself
        when `residual` is None); `weight_offset` is 1.0 for the Gemma `(1 + weight)` form,
        else 0.0. `_quant_fp8` is the FP8 op without the bf16 norm output, for the usual graph
        where only the quantized value is read (FlashInfer's `kARResidualRMSNormFP8Quant`
        against `...OutFP8Quant`): it does not spend the stores of a norm nobody reads.
        `input` is the reduction's buffer, as in vLLM's fused op: the op may
        overwrite it (the GPU unfused path sums into it in place, as plain Inductor's
        all_reduce does; the fused kernel and the CPU exact path leave it alone), so its
        contents afterwards are unspecified. Under torch.compile this costs nothing to get
        right: functionalization wraps the call in `auto_functionalized`, and Inductor's
        reinplacing hands the op the input's own buffer when nothing reads it afterwards (the
        usual case: a row-parallel matmul's output) and a copy otherwise. `policy` is the
        `FusionPolicy.digest()` of the pass that emitted the op: the GPU plan decides one-shot,
        two-shot or unfused by that policy's thresholds ("", a direct call: the policy in force).
    arfuse::fused_allreduce_rmsnorm[_fp8].eps_tensor(... Tensor eps ...)
        The same with eps as a 0-d tensor: under `torch.compile(dynamic=True)` Dynamo turns a
        model's float eps into a graph input, so the pass has no number to pass.

Python callers get named results through `fused_allreduce_rmsnorm(...)` and
`fused_allreduce_rmsnorm_fp8(...)` below instead of tuple indices. `rms_norm` and the fused ops
validate their inputs in the fake kernel too, so a bad call fails at compile time with a message
saying what to fix, never with a wrong result (`all_reduce` takes any tensor). The real kernels
call `arfuse.kernels.run_fused`, the single dispatch point where a GPU kernel plugs in;
everything else runs the exact path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from arfuse import kernels, optable
from arfuse.kernels.args import FP8, FusedArgs
from arfuse.kernels.exact import (
    quant_fp8_static,  # noqa: F401 - public here too
    rms_norm_f32,
)

LIB = torch.library.Library("arfuse", "DEF")

LIB.define("all_reduce(Tensor input, str group_name) -> Tensor")
LIB.define("rms_norm(Tensor input, Tensor weight, float eps) -> Tensor")
LIB.define(
    "fused_allreduce_rmsnorm(Tensor(a!) input, Tensor? residual, Tensor weight, float eps, "
    'float weight_offset, str group_name, str policy="") -> (Tensor norm_out, Tensor residual_out)'
)
LIB.define(
    "fused_allreduce_rmsnorm_fp8(Tensor(a!) input, Tensor? residual, Tensor weight, Tensor scale, "
    'float eps, float weight_offset, str group_name, str policy="") '
    "-> (Tensor quant_out, Tensor norm_out, Tensor residual_out)"
)

LIB.define(
    "fused_allreduce_rmsnorm_quant_fp8(Tensor(a!) input, Tensor? residual, Tensor weight, "
    'Tensor scale, float eps, float weight_offset, str group_name, str policy="") '
    "-> (Tensor quant_out, Tensor residual_out)"
)

_FUSED = (
    "Tensor(a!) input, Tensor? residual, Tensor weight, {scale}{eps} eps, float weight_offset, "
    'str group_name, str policy=""'
)
_OUT = "(Tensor norm_out, Tensor residual_out)"
_OUT_FP8 = "(Tensor quant_out, Tensor norm_out, Tensor residual_out)"
_OUT_QUANT = "(Tensor quant_out, Tensor residual_out)"
LIB.define(f"fused_allreduce_rmsnorm.eps_tensor({_FUSED.format(scale='', eps='Tensor')}) -> {_OUT}")
LIB.define(
    f"fused_allreduce_rmsnorm_fp8.eps_tensor("
    f"{_FUSED.format(scale='Tensor scale, ', eps='Tensor')}) -> {_OUT_FP8}"
)
LIB.define(
    f"fused_allreduce_rmsnorm_quant_fp8.eps_tensor("
    f"{_FUSED.format(scale='Tensor scale, ', eps='Tensor')}) -> {_OUT_QUANT}"
)

SUPPORTED_DTYPES = tuple(getattr(torch, name) for name in optable.SUPPORTED_DTYPES)


class FusedOutputs(NamedTuple):
    norm: torch.Tensor
    residual: torch.Tensor


class FusedFP8Outputs(NamedTuple):
    quant: torch.Tensor
    norm: torch.Tensor
    residual: torch.Tensor


class FusedQuantOutputs(NamedTuple):
    quant: torch.Tensor
    residual: torch.Tensor


def _check_activation(
    op: str, input: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> None:
    # a SymFloat eps (no value at compile time) is checked when the real kernel runs
    if isinstance(eps, (int, float)) and not (math.isfinite(eps) and eps >= 0):
        raise ValueError(
            f"arfuse::{op}: eps {eps!r} must be a finite number >= 0 (the "
            "RMSNorm epsilon, e.g. 1e-6)"
        )
    if input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"arfuse::{op}: input dtype {input.dtype} is not supported; "
            "use bfloat16, float16 or float32"
        )
    if input.dim() < 1 or input.shape[-1] == 0:
        raise ValueError(
            f"arfuse::{op}: input must have a non-empty last (hidden) dim, "
            f"got shape {tuple(input.shape)}"
        )
    hidden = input.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != hidden:
        raise ValueError(
            f"arfuse::{op}: weight shape {tuple(weight.shape)} does not match the "
            f"hidden size {hidden} of input {tuple(input.shape)}; pass a 1-D weight "
            f"of {hidden} elements"
        )
    _check_companion(op, "weight", weight, input)
    _check_contiguous(op, "input", input)
    if residual is not None:
        if residual.shape != input.shape:
            raise ValueError(
                f"arfuse::{op}: residual shape {tuple(residual.shape)} differs "
                f"from input shape {tuple(input.shape)}"
            )
        _check_companion(op, "residual", residual, input)


def _check_companion(op: str, name: str, t: torch.Tensor, input: torch.Tensor) -> None:
    """A tensor read alongside `input` (weight, residual): same dtype, contiguous."""
    if t.dtype != input.dtype:
        raise ValueError(
            f"arfuse::{op}: {name} dtype {t.dtype} differs from input dtype "
            f"{input.dtype}; cast the {name} to {input.dtype}"
        )
    _check_contiguous(op, name, t)


def _check_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"arfuse::{op}: {name} (strides {t.stride()}) is not contiguous; "
            "call .contiguous() first"
        )


def _check_scale(scale: torch.Tensor, op: str = "fused_allreduce_rmsnorm_fp8") -> None:
    if scale.numel() != 1:
        raise ValueError(
            f"arfuse::{op}: static per-tensor FP8 needs a "
            f"scale with exactly one element, got shape {tuple(scale.shape)}; "
            "per-token or per-channel scales are not supported"
        )
    if scale.dtype != torch.float32:
        raise ValueError(f"arfuse::{op}: scale dtype {scale.dtype} must be torch.float32")


# ---- fake kernels (shape/dtype propagation and validation at compile time) -------------------


@torch.library.register_fake("arfuse::all_reduce", lib=LIB)
def _all_reduce_fake(input, group_name):
    return torch.empty_like(input)


@torch.library.register_fake("arfuse::rms_norm", lib=LIB)
def _rms_norm_fake(input, weight, eps):
    _check_activation("rms_norm", input, None, weight, eps)
    return torch.empty_like(input)


@torch.library.register_fake("arfuse::fused_allreduce_rmsnorm", lib=LIB)
def _fused_fake(input, residual, weight, eps, weight_offset, group_name, policy=""):
    _check_activation("fused_allreduce_rmsnorm", input, residual, weight, eps)
    return torch.empty_like(input), torch.empty_like(input)


@torch.library.register_fake("arfuse::fused_allreduce_rmsnorm_fp8", lib=LIB)
def _fused_fp8_fake(input, residual, weight, scale, eps, weight_offset, group_name, policy=""):
    _check_activation("fused_allreduce_rmsnorm_fp8", input, residual, weight, eps)
    _check_scale(scale)
    return (
        torch.empty_like(input, dtype=FP8),
        torch.empty_like(input),
        torch.empty_like(input),
    )


@torch.library.register_fake("arfuse::fused_allreduce_rmsnorm_quant_fp8", lib=LIB)
def _fused_quant_fake(input, residual, weight, scale, eps, weight_offset, group_name, policy=""):
    _check_activation("fused_allreduce_rmsnorm_quant_fp8", input, residual, weight, eps)
    _check_scale(scale, "fused_allreduce_rmsnorm_quant_fp8")
    return torch.empty_like(input, dtype=FP8), torch.empty_like(input)


def _check_eps(eps: torch.Tensor) -> None:
    if eps.dim() != 0 or not eps.dtype.is_floating_point:
        raise ValueError(
            f"arfuse: eps must be a float or a 0-d float tensor, got shape "
            f"{tuple(eps.shape)} {eps.dtype}"
        )


@torch.library.register_fake("arfuse::fused_allreduce_rmsnorm.eps_tensor", lib=LIB)
def _fused_eps_tensor_fake(input, residual, weight, eps, weight_offset, group_name, policy=""):
    _check_eps(eps)
    return _fused_fake(input, residual, weight, 0.0, weight_offset, group_name, policy)


@torch.library.register_fake("arfuse::fused_allreduce_rmsnorm_fp8.eps_tensor", lib=LIB)
def _fused_fp8_eps_tensor_fake(
    input, residual, weight, scale, eps, weight_offset, group_name, policy=""
):
    _check_eps(eps)
    return _fused_fp8_fake(input, residual, weight, scale, 0.0, weight_offset, group_name, policy)


@torch.library.register_fake("arfuse::fused_allreduce_rmsnorm_quant_fp8.eps_tensor", lib=LIB)
def _fused_quant_eps_tensor_fake(
    input, residual, weight, scale, eps, weight_offset, group_name, policy=""
):
    _check_eps(eps)
    return _fused_quant_fake(input, residual, weight, scale, 0.0, weight_offset, group_name, policy)


# ---- real kernels -----------------------------------------------------------------------------


@torch.library.impl(LIB, "all_reduce", "CompositeExplicitAutograd")
def _all_reduce_impl(input, group_name):
    return kernels.all_reduce(input, kernels.resolve_group(group_name))


@torch.library.impl(LIB, "rms_norm", "CompositeExplicitAutograd")
def _rms_norm_impl(input, weight, eps):
    _check_activation("rms_norm", input, None, weight, eps)
    return rms_norm_f32(input, weight, eps, 0.0).to(input.dtype)


def _run(op, input, residual, weight, scale, eps, weight_offset, group_name, policy, norm=True):
    """Check one fused call (the FP8 scale too, where the op has one) and dispatch it."""
    _check_activation(op, input, residual, weight, eps)
    if scale is not None:
        _check_scale(scale, op)
    group = kernels.resolve_group(group_name)
    return kernels.run_fused(
        FusedArgs(input, residual, weight, scale, eps, weight_offset, group, policy, norm=norm)
    )


@torch.library.impl(LIB, "fused_allreduce_rmsnorm", "CompositeExplicitAutograd")
def _fused_impl(input, residual, weight, eps, weight_offset, group_name, policy=""):
    args = (input, residual, weight, None, eps, weight_offset, group_name, policy)
    result = _run("fused_allreduce_rmsnorm", *args)
    return result.norm, result.residual


@torch.library.impl(LIB, "fused_allreduce_rmsnorm_fp8", "CompositeExplicitAutograd")
def _fused_fp8_impl(input, residual, weight, scale, eps, weight_offset, group_name, policy=""):
    args = (input, residual, weight, scale, eps, weight_offset, group_name, policy)
    return tuple(_run("fused_allreduce_rmsnorm_fp8", *args))


@torch.library.impl(LIB, "fused_allreduce_rmsnorm_quant_fp8", "CompositeExplicitAutograd")
def _fused_quant_impl(input, residual, weight, scale, eps, weight_offset, group_name, policy=""):
    args = (input, residual, weight, scale, eps, weight_offset, group_name, policy)
    result = _run("fused_allreduce_rmsnorm_quant_fp8", *args, norm=False)
    return result.quant, result.residual


# ---- Python entry points with named results ---------------------------------------------------


def all_reduce(input: torch.Tensor, group_name: str) -> torch.Tensor:
    return torch.ops.arfuse.all_reduce(input, group_name)


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.ops.arfuse.rms_norm(input, weight, eps)


def fused_allreduce_rmsnorm(
    input: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    group_name: str,
    *,
    weight_offset: float = 0.0,
) -> FusedOutputs:
    return FusedOutputs(
        *torch.ops.arfuse.fused_allreduce_rmsnorm(
            input, residual, weight, eps, weight_offset, group_name
        )
    )


def fused_allreduce_rmsnorm_fp8(
    input: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    group_name: str,
    *,
    weight_offset: float = 0.0,
) -> FusedFP8Outputs:
    return FusedFP8Outputs(
        *torch.ops.arfuse.fused_allreduce_rmsnorm_fp8(
            input, residual, weight, scale, eps, weight_offset, group_name
        )
    )


def fused_allreduce_rmsnorm_quant_fp8(
    input: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    group_name: str,
    *,
    weight_offset: float = 0.0,
) -> FusedQuantOutputs:
    return FusedQuantOutputs(
        *torch.ops.arfuse.fused_allreduce_rmsnorm_quant_fp8(
            input, residual, weight, scale, eps, weight_offset, group_name
        )
    )


# eps as a 0-d tensor (a CPU scalar when Dynamo lifted a float: reading it does not sync)
@torch.library.impl(LIB, "fused_allreduce_rmsnorm.eps_tensor", "CompositeExplicitAutograd")
def _fused_eps_tensor_impl(input, residual, weight, eps, weight_offset, group_name, policy=""):
    _check_eps(eps)
    return _fused_impl(input, residual, weight, float(eps), weight_offset, group_name, policy)


@torch.library.impl(LIB, "fused_allreduce_rmsnorm_fp8.eps_tensor", "CompositeExplicitAutograd")
def _fused_fp8_eps_tensor_impl(
    input, residual, weight, scale, eps, weight_offset, group_name, policy=""
):
    _check_eps(eps)
    return _fused_fp8_impl(
        input, residual, weight, scale, float(eps), weight_offset, group_name, policy
    )


@torch.library.impl(
    LIB, "fused_allreduce_rmsnorm_quant_fp8.eps_tensor", "CompositeExplicitAutograd"
)
def _fused_quant_eps_tensor_impl(
    input, residual, weight, scale, eps, weight_offset, group_name, policy=""
):
    _check_eps(eps)
    return _fused_quant_impl(
        input, residual, weight, scale, float(eps), weight_offset, group_name, policy
    )
