"""The Triton kernel of `triton_epilogue` (imported only where Triton is; see that module)."""

import triton
import triton.language as tl


@triton.jit
def add_rms_norm(
    x_ptr,
    res_ptr,
    w_ptr,
    scale_ptr,
    h_ptr,
    norm_ptr,
    q_ptr,
    hidden,
    eps,
    weight_offset,
    HAS_RESIDUAL: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_NORM: tl.constexpr,
    FP8_LIMIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    offs = row * hidden + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = x.to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + offs, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + weight_offset
    norm = (hf * rstd * w).to(h_ptr.dtype.element_ty)
    if HAS_NORM:
        tl.store(norm_ptr + offs, norm, mask=mask)
    if HAS_SCALE:
        q = norm.to(tl.float32) / tl.load(scale_ptr)
        q = tl.minimum(
            tl.maximum(q, -FP8_LIMIT, tl.PropagateNan.ALL), FP8_LIMIT, tl.PropagateNan.ALL
        )
        tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
