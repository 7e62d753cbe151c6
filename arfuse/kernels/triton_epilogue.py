"""The GPU unfused path's add + RMSNorm (+ static FP8) as one Triton kernel, one row per program.

    h    = dtype(f32(reduced) + f32(residual))       (a copy of `reduced` without residual)
    norm = dtype(f32(h) * rsqrt(mean(f32(h)^2) + eps) * (f32(weight) + weight_offset))
    q    = fp8(clamp(f32(norm) / scale, -FP8_MAX, FP8_MAX))

The same arithmetic, in the same order, as `exact.epilogue` (its reference), and the same
traffic as the kernel plain Inductor generates for the chain (no norm store when the op does
not return the norm). It is compiled once per variant (residual?, FP8?, norm output?, dtype,
hidden block): the token count only sets the grid, so no size recompiles it and no Dynamo guard
runs per call. Triton is imported on the first call only (CPU installs never touch it).

Launch: the first call of a variant goes through Triton's JIT (which compiles it); later calls
launch the compiled kernel it returned directly, as Inductor's generated code does, skipping
the JIT's argument binding and specialisation (10.1 against 27.7 us of host time per launch on
the H200 machine's host, `bench/results/2026-12-04_local_work_h200_v2.md`). The direct launch
is taken only where the JIT would pick the same compiled kernel: same variant, all pointers
16-byte aligned (what the first launch was specialised for), same device; Triton's launch hooks
are passed on as the JIT passes them. Anything else, or a Triton whose launcher takes other
arguments, goes through the JIT.
"""

from __future__ import annotations

from typing import Any

import torch

from arfuse.kernels.args import FusedArgs, FusedResult
from arfuse.optable import FP8_MAX

_kernel: Any = None
# variant key -> the CompiledKernel its first (JIT) launch returned
_compiled: dict[tuple, Any] = {}
_direct = True  # cleared for good if the installed Triton's launcher rejects our arguments
ALIGN = 16


def available() -> str | None:
    """None when the kernel can run here, else why not (Triton missing or broken)."""
    global _kernel
    if _kernel is None:
        try:
            from arfuse.kernels._add_rms_norm_triton import add_rms_norm

            _kernel = add_rms_norm
            _check_direct_launch()
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
        pointers = (
            reduced,
            reduced if residual is None else residual,
            args.weight,
            args.weight if scale is None else scale,
            out.residual,
            out.residual if out.norm is None else out.norm,  # a placeholder when not stored
            out.residual if out.quant is None else out.quant,
        )
        constexprs = (residual is not None, scale is not None, out.norm is not None, FP8_MAX, block)
        num_warps = min(16 if scale is None else 32, max(1, block // 256))
        _launch(
            rows,
            (*pointers, hidden, float(args.eps), float(args.weight_offset)),
            constexprs,
            num_warps,
        )
    return out


def _launch(rows: int, params: tuple, constexprs: tuple, num_warps: int) -> None:
    global _direct
    device = params[0].device.index
    key = (device, *(p.dtype for p in params[:7]), params[7], constexprs, num_warps)
    compiled = _compiled.get(key)
    direct = _direct and _direct_applies(params, device)
    if compiled is not None and direct:
        stream = torch._C._cuda_getCurrentRawStream(device)
        args = (*params, *constexprs)
        try:  # what Triton's JIT does once it has found the compiled kernel, hooks included
            compiled.run(
                rows,
                1,
                1,
                stream,
                compiled.function,
                compiled.packed_metadata,
                compiled.launch_metadata((rows, 1, 1), stream, *args),
                _hooks.launch_enter_hook,
                _hooks.launch_exit_hook,
                *args,
            )
            return
        except TypeError:  # another Triton's launcher signature: the JIT from now on
            _direct = False
    has_residual, has_scale, has_norm, fp8_limit, block = constexprs
    launched = _kernel[(rows,)](
        *params,
        HAS_RESIDUAL=has_residual,
        HAS_SCALE=has_scale,
        HAS_NORM=has_norm,
        FP8_LIMIT=fp8_limit,
        BLOCK=block,
        num_warps=num_warps,
    )
    if direct and _direct:  # specialised for aligned pointers: reusable for them
        _compiled.setdefault(key, launched)


_hooks: Any = None  # triton.knobs.runtime: where Triton keeps its launch hooks


def _check_direct_launch() -> None:
    """Direct launches pass Triton's launch hooks on as its JIT does; they live in
    `triton.knobs` (Triton >= 3.4). Without it, every launch goes through the JIT."""
    global _direct, _hooks
    try:
        from triton import knobs

        _hooks = knobs.runtime
        _hooks.launch_enter_hook  # noqa: B018 - the attribute must exist
    except (ImportError, AttributeError):
        _direct = False


def _direct_applies(params: tuple, device: int) -> bool:
    return (
        all(p.data_ptr() % ALIGN == 0 for p in params[:7]) and device == torch.cuda.current_device()
    )
